import pytest
from hypothesis import given, strategies as st

from pyvmm.arch.x86_64 import layout
from pyvmm.arch.x86_64.e820 import E820Type, e820_map
from pyvmm.errors import VmmError

MiB, GiB = layout.MiB, layout.GiB


def test_ram_below_hole_is_one_range():
    assert layout.ram_layout(128 * MiB) == [(0, 128 * MiB)]
    assert layout.ram_layout(3 * GiB) == [(0, 3 * GiB)]


def test_ram_above_hole_continues_at_4g():
    assert layout.ram_layout(5 * GiB) == [(0, 3 * GiB), (4 * GiB, 2 * GiB)]


@pytest.mark.parametrize("size", [0, 1 * MiB, 64 * MiB + 1])
def test_bad_memory_sizes(size):
    with pytest.raises(VmmError):
        layout.ram_layout(size)


def test_virtio_slots_avoid_legacy_irqs_and_fit_the_hole():
    irqs = [layout.virtio_mmio_slot(i)[2] for i in range(layout.VIRTIO_MMIO_MAX_DEVICES)]
    assert len(set(irqs)) == len(irqs)
    assert not set(irqs) & set(layout.LEGACY_IRQS.values())
    assert not set(irqs) & {2, 9, 13, 14, 15}
    assert all(0 <= irq < layout.IOAPIC_PINS for irq in irqs)
    last_base, size, _ = layout.virtio_mmio_slot(layout.VIRTIO_MMIO_MAX_DEVICES - 1)
    assert layout.MMIO32_START <= layout.VIRTIO_MMIO_BASE and last_base + size <= layout.IOAPIC_ADDR
    with pytest.raises(VmmError):
        layout.virtio_mmio_slot(layout.VIRTIO_MMIO_MAX_DEVICES)


def test_virtio_cmdline():
    assert layout.virtio_mmio_cmdline(1) == "virtio_mmio.device=4K@0xd0001000:6"


def test_low_memory_structures_do_not_overlap():
    areas = sorted([
        (layout.BOOT_GDT_START, layout.BOOT_GDT_MAX_SIZE),
        (layout.BOOT_IDT_START, 8),
        (layout.PVH_START_INFO, 56),
        (layout.PVH_MODLIST_START, 32),
        (layout.PVH_MEMMAP_START, layout.PVH_MEMMAP_MAX_ENTRIES * 24),
        (layout.ZERO_PAGE_START, 0x1000),
        (layout.BOOT_STACK_POINTER - 0x800, 0x800),
        (layout.PML4_START, 0x1000),
        (layout.PDPT_START, 0x1000),
        (layout.PD_START, layout.PD_COUNT * 0x1000),
        (layout.CMDLINE_START, layout.COMMAND_LINE_SIZE),
    ])
    for (a, alen), (b, _) in zip(areas, areas[1:]):
        assert a + alen <= b, f"{a:#x}+{alen:#x} overlaps {b:#x}"
    assert areas[-1][0] + areas[-1][1] <= layout.EBDA_START


def test_e820_small_guest():
    e820 = e820_map(layout.ram_layout(64 * MiB))
    assert [(e.addr, e.size, e.type) for e in e820] == [
        (0, 0x9FC00, E820Type.RAM),
        (0x9FC00, 0x100000 - 0x9FC00, E820Type.RESERVED),
        (0x100000, 63 * MiB, E820Type.RAM),
    ]


def test_e820_with_hole():
    e820 = e820_map(layout.ram_layout(4 * GiB))
    ram = [(e.addr, e.end) for e in e820 if e.type == E820Type.RAM]
    assert ram == [(0, 0x9FC00), (MiB, 3 * GiB), (4 * GiB, 5 * GiB)]
    assert not any(e.addr < 4 * GiB and e.end > 3 * GiB for e in e820)


def test_e820_rejects_ram_not_at_zero():
    with pytest.raises(VmmError):
        e820_map([(MiB, 64 * MiB)])


@given(st.integers(min_value=layout.MIN_MEM_SIZE // 4096, max_value=(16 * GiB) // 4096))
def test_e820_invariants(pages):
    size = pages * 4096
    ram = layout.ram_layout(size)
    e820 = e820_map(ram)
    assert e820 == sorted(e820, key=lambda e: e.addr)
    for a, b in zip(e820, e820[1:]):
        assert a.end <= b.addr
    assert all(e.size > 0 for e in e820)
    # RAM entries plus the reserved legacy area cover the guest RAM exactly
    covered = sum(e.size for e in e820)
    assert covered == size
    assert sum(e.size for e in e820 if e.type == E820Type.RAM) == size - (layout.HIMEM_START - layout.EBDA_START)
    for e in e820:
        assert e.end <= layout.MMIO32_START or e.addr >= layout.MMIO32_END
