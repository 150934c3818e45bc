"""Every guest-physical address the x86-64 boot uses, declared in one place.

Low memory (below 1 MiB) holds the small boot structures; the kernel goes at its own
physical address (1 MiB or above), the initrd as high as possible in low RAM. RAM stops
at 3 GiB; 3 GiB..4 GiB is the 32-bit MMIO hole (virtio-mmio windows, IOAPIC, LAPIC),
and RAM beyond 3 GiB of guest memory continues at 4 GiB.
"""

from __future__ import annotations

from pyvmm.errors import VmmError

KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30
PAGE_SIZE = 0x1000

# -- low memory: boot structures ----------------------------------------------------
BOOT_GDT_START = 0x500
BOOT_GDT_MAX_SIZE = 0x40
BOOT_IDT_START = 0x540          # an empty IDT (one zero gate): faults before the kernel's own IDT triple-fault

PVH_START_INFO = 0x6000         # struct hvm_start_info
PVH_MODLIST_START = 0x6040      # hvm_modlist_entry[] (the initrd)
PVH_MEMMAP_START = 0x6100       # hvm_memmap_table_entry[] up to ZERO_PAGE_START
PVH_MEMMAP_MAX_ENTRIES = (0x7000 - PVH_MEMMAP_START) // 24

ZERO_PAGE_START = 0x7000        # struct boot_params (64-bit boot protocol)
BOOT_STACK_POINTER = 0x8ff0     # grows down from just below the page tables

PML4_START = 0x9000             # identity map: PML4 -> PDPT -> four 2 MiB-page PDs (4 GiB)
PDPT_START = 0xa000
PD_START = 0xb000
PD_COUNT = 4

CMDLINE_START = 0x20000
COMMAND_LINE_SIZE = 2048        # Linux's x86 COMMAND_LINE_SIZE, including the NUL

EBDA_START = 0x9fc00            # top 1 KiB of conventional memory, as a PC BIOS reserves it
ACPI_START = 0xe0000            # RSDP (Linux also scans 0xe0000..1 MiB for it), then the tables
ACPI_MAX_SIZE = 0x10000         # up to the MP table
BIOS_AREA_START = 0xf0000       # system BIOS area: Linux scans it for the MP floating pointer
MPTABLE_START = BIOS_AREA_START
MPTABLE_MAX_SIZE = 0x10000
HIMEM_START = 0x100000          # 1 MiB: first byte the kernel may occupy

# -- the 32-bit MMIO hole -----------------------------------------------------------
MMIO32_START = 3 * GiB
MMIO32_END = 4 * GiB
LOW_RAM_MAX = MMIO32_START      # RAM below the hole ends here
HIGH_RAM_START = 4 * GiB

VIRTIO_MMIO_BASE = 0xd000_0000
VIRTIO_MMIO_SIZE = 0x1000       # one page per device (registers need 0x100 + config space)
IOAPIC_ADDR = 0xfec0_0000
IOAPIC_SIZE = 0x1000
LAPIC_ADDR = 0xfee0_0000
LAPIC_SIZE = 0x1000

# -- ports ---------------------------------------------------------------------------
ACPI_SLEEP_CONTROL_PORT = 0x600  # hardware-reduced ACPI sleep control/status registers (FADT)
ACPI_SLEEP_STATUS_PORT = 0x601

# -- interrupt lines ----------------------------------------------------------------
# The in-kernel IOAPIC has 24 pins; with KVM's default routing GSI n is IOAPIC pin n (and
# PIC line n for n < 16). ISA lines already spoken for:
#   0 PIT timer, 1 i8042 keyboard, 2 PIC cascade, 3 COM2, 4 COM1, 8 RTC,
#   9 kept for an ACPI SCI, 12 i8042 aux, 13 FPU error, 14/15 IDE.
# Virtio-mmio devices get the rest, in this order (the MP table declares every pin as an
# edge-triggered, active-high ISA interrupt, which is what an irqfd injects).
IOAPIC_PINS = 24
LEGACY_IRQS = {"pit": 0, "i8042_kbd": 1, "com2": 3, "com1": 4, "rtc": 8, "i8042_aux": 12}
VIRTIO_MMIO_IRQS = (5, 6, 7, 10, 11, 16, 17, 18, 19, 20, 21, 22, 23)
VIRTIO_MMIO_MAX_DEVICES = len(VIRTIO_MMIO_IRQS)


def virtio_mmio_slot(index: int) -> tuple[int, int, int]:
    """``(base address, window size, GSI)`` of the ``index``-th virtio-mmio device."""
    if not 0 <= index < VIRTIO_MMIO_MAX_DEVICES:
        raise VmmError(f"at most {VIRTIO_MMIO_MAX_DEVICES} virtio-mmio devices are supported (asked for #{index})")
    return VIRTIO_MMIO_BASE + index * VIRTIO_MMIO_SIZE, VIRTIO_MMIO_SIZE, VIRTIO_MMIO_IRQS[index]


def virtio_mmio_cmdline(index: int) -> str:
    """The ``virtio_mmio.device=`` kernel parameter that announces slot ``index`` (no ACPI/DT here)."""
    base, size, irq = virtio_mmio_slot(index)
    return f"virtio_mmio.device={size // KiB}K@{base:#x}:{irq}"


MIN_MEM_SIZE = 2 * MiB


def ram_layout(mem_size: int) -> list[tuple[int, int]]:
    """Guest RAM as ``[(gpa, size), ...]``: up to 3 GiB from 0, the remainder from 4 GiB."""
    if mem_size % PAGE_SIZE:
        raise VmmError(f"guest memory size {mem_size:#x} is not a multiple of {PAGE_SIZE:#x}")
    if mem_size < MIN_MEM_SIZE:
        raise VmmError(f"guest memory size {mem_size} is below the minimum of {MIN_MEM_SIZE // MiB} MiB")
    low = min(mem_size, LOW_RAM_MAX)
    ranges = [(0, low)]
    if mem_size > low:
        ranges.append((HIGH_RAM_START, mem_size - low))
    return ranges


def low_ram_end(ram: list[tuple[int, int]]) -> int:
    """End of the RAM range that starts at 0 (everything the 32-bit boot structures can use)."""
    for start, size in ram:
        if start == 0:
            return size
    raise VmmError("guest RAM does not start at address 0")
