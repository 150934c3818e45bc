"""Page tables, GDT and MP table as the guest CPU and Linux would read them."""

import struct

import pytest
from hypothesis import given, strategies as st

from pyvmm.arch.x86_64 import layout
from pyvmm.arch.x86_64.gdt import (
    BOOT_CS, BOOT_DS, CODE32_SELECTOR, TSS_SELECTOR, boot_gdt, descriptor, segment_from_descriptor, write_boot_gdt,
)
from pyvmm.arch.x86_64.mptable import build_mptable, write_mptable
from pyvmm.arch.x86_64.paging import write_identity_map
from pyvmm.errors import VmmError
from pyvmm.memory import GuestMemory


def walk(memory, cr3, vaddr):
    """Translate like the MMU does for 4-level paging (None if not present)."""
    table = cr3 & ~0xFFF
    for level, shift in enumerate((39, 30, 21, 12)):
        entry = memory.read_u64(table + ((vaddr >> shift) & 0x1FF) * 8)
        if not entry & 1:
            return None
        if level in (1, 2) and entry & 0x80:
            return (entry & 0x000F_FFFF_FFFF_F000 & ~((1 << shift) - 1)) | (vaddr & ((1 << shift) - 1))
        table = entry & 0x000F_FFFF_FFFF_F000
    return table | (vaddr & 0xFFF)


@pytest.fixture
def mapped(memory):
    return memory, write_identity_map(memory)


@pytest.fixture(scope="module")
def mapped_once():
    memory = GuestMemory.create(layout.ram_layout(64 * layout.MiB))
    yield memory, write_identity_map(memory)
    memory.close()


@given(st.integers(min_value=0, max_value=4 * layout.GiB - 1))
def test_identity_map_covers_4g(mapped_once, vaddr):
    memory, cr3 = mapped_once
    assert walk(memory, cr3, vaddr) == vaddr


def test_nothing_mapped_above_4g(mapped):
    memory, cr3 = mapped
    assert walk(memory, cr3, 4 * layout.GiB) is None
    assert walk(memory, cr3, 1 << 39) is None


def test_page_table_entries(mapped):
    memory, cr3 = mapped
    assert memory.read_u64(cr3) == layout.PDPT_START | 0x3
    assert memory.read_u64(layout.PD_START + 8) == 0x200000 | 0x83
    assert memory.read_u64(layout.PDPT_START + 3 * 8) == (layout.PD_START + 0x3000) | 0x3


def test_gdt_descriptors_have_the_classic_encodings():
    gdt = boot_gdt()
    assert gdt[CODE32_SELECTOR >> 3] == 0x00CF9B000000FFFF
    assert gdt[BOOT_CS >> 3] == 0x00AF9B000000FFFF
    assert gdt[BOOT_DS >> 3] == 0x00CF93000000FFFF
    assert gdt[0] == 0


def test_segment_decoding():
    cs = segment_from_descriptor(BOOT_CS, boot_gdt()[BOOT_CS >> 3])
    assert (cs.base, cs.limit, cs.type, cs.s, cs.present, cs.l, cs.db, cs.g, cs.unusable) == \
        (0, 0xFFFF_FFFF, 0xB, 1, 1, 1, 0, 1, 0)
    tr = segment_from_descriptor(TSS_SELECTOR, boot_gdt()[TSS_SELECTOR >> 3])
    assert (tr.limit, tr.type, tr.s, tr.g) == (0x67, 0xB, 0, 0)
    assert segment_from_descriptor(0, 0).unusable == 1


@given(st.integers(0, 0xFFFF_FFFF), st.integers(0, 0xFFFFF), st.sampled_from([0xC09B, 0xA09B, 0x4093, 0x008B]))
def test_descriptor_roundtrip(base, limit, flags):
    seg = segment_from_descriptor(8, descriptor(flags, base, limit))
    assert seg.base == base
    assert seg.limit == ((limit << 12) | 0xFFF if flags & 0x8000 else limit)
    assert seg.type == flags & 0xF and seg.present == 1


def test_gdt_written_to_memory(memory):
    gdt_limit, idt_limit = write_boot_gdt(memory)
    entries = struct.unpack(f"<{(gdt_limit + 1) // 8}Q", memory.read(layout.BOOT_GDT_START, gdt_limit + 1))
    assert list(entries) == boot_gdt()
    assert idt_limit == 7 and memory.read_u64(layout.BOOT_IDT_START) == 0


def parse_mptable(memory):
    """Find and decode the MP table the way Linux's mpparse does."""
    for addr in range(layout.BIOS_AREA_START, 0x100000, 16):
        if memory.read(addr, 4) == b"_MP_":
            break
    else:
        raise AssertionError("no MP floating pointer in the BIOS area")
    pointer = memory.read(addr, 16)
    assert sum(pointer) % 256 == 0 and pointer[8] == 1 and pointer[9] == 4
    config_addr = struct.unpack_from("<I", pointer, 4)[0]
    length, = struct.unpack("<H", memory.read(config_addr + 4, 2))
    config = memory.read(config_addr, length)
    assert config[:4] == b"PCMP" and sum(config) % 256 == 0
    count, lapic = struct.unpack_from("<HI", config, 34)
    assert lapic == layout.LAPIC_ADDR
    entries, pos = [], 44
    for _ in range(count):
        size = 20 if config[pos] == 0 else 8
        entries.append(config[pos:pos + size])
        pos += size
    assert pos == length
    return entries


@pytest.mark.parametrize("ncpus", [1, 2, 7, 64, 254])
def test_mptable(memory, ncpus):
    write_mptable(memory, ncpus)
    entries = parse_mptable(memory)
    cpus = [e for e in entries if e[0] == 0]
    assert [e[1] for e in cpus] == list(range(ncpus))                       # APIC ids
    assert [e[3] for e in cpus] == [3] + [1] * (ncpus - 1)                  # enabled, BSP only on 0
    ioapics = [e for e in entries if e[0] == 2]
    assert len(ioapics) == 1 and ioapics[0][1] == ncpus
    assert struct.unpack_from("<I", ioapics[0], 4)[0] == layout.IOAPIC_ADDR
    buses = [e for e in entries if e[0] == 1]
    assert buses == [b"\x01\x00ISA   "]
    intsrc = [e for e in entries if e[0] == 3]
    assert [(e[5], e[6], e[7]) for e in intsrc] == [(i, ncpus, i) for i in range(24)]
    assert set(layout.VIRTIO_MMIO_IRQS) <= {e[7] for e in intsrc}
    lint = [(e[1], e[6], e[7]) for e in entries if e[0] == 4]
    assert lint == [(3, 0, 0), (1, 0xFF, 1)]     # ExtINT -> BSP LINT0, NMI -> all LINT1


@pytest.mark.parametrize("ncpus", [0, 255])
def test_mptable_cpu_limits(ncpus):
    with pytest.raises(VmmError):
        build_mptable(ncpus)
