"""ACPI tables for a hardware-reduced x86-64 machine: how a kernel with ACPI finds the
CPUs, the IOAPIC and every device pyvmm gives it, without a firmware.

What is written at :data:`layout.ACPI_START` (reserved in the e820 map, inside the BIOS
area Linux scans for the RSDP; the boot protocols also pass the RSDP address)::

    RSDP  -> XSDT -> FADT (hardware-reduced; sleep control/status ports; reset register)
                  |     -> DSDT (serial ports, one LNRO0005 device per virtio-mmio window, \\_S5)
                  -> MADT (LAPICs, IOAPIC, interrupt source overrides, LAPIC NMI)

The same :class:`Platform` that says where the devices are also feeds the MP table's
and the kernel command line's view of the machine, so the descriptions cannot drift.
Shape as in QEMU's ``hw/i386/acpi-microvm.c`` and Firecracker's ``src/vmm/src/acpi``;
field layouts from the ACPI 6.5 specification (5.2).
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass, field

from pyvmm.arch.x86_64 import acpi_aml as aml
from pyvmm.arch.x86_64 import layout
from pyvmm.errors import VmmError

u8, u16, u32, u64 = ctypes.c_uint8, ctypes.c_uint16, ctypes.c_uint32, ctypes.c_uint64

OEM_ID = b"PYVMM "
OEM_TABLE_ID = b"PYVMMACP"
CREATOR_ID = b"PYVM"
HYPERVISOR_VENDOR = b"PYVMM\0\0\0"

#: The sleep type value the DSDT's ``\\_S5`` package names; a write of
#: ``SLP_EN | S5_SLEEP_TYPE << 2`` to the sleep control register powers off.
S5_SLEEP_TYPE = 5
SLEEP_CONTROL_SLP_TYP_SHIFT = 2
SLEEP_CONTROL_SLP_TYP_MASK = 0x1C
SLEEP_CONTROL_SLP_EN = 0x20
SLEEP_STATUS_WAK_STS = 0x80

# FADT flags (5.2.9, table 5.10) and IA-PC boot architecture flags (5.2.9.3)
FADT_WBINVD = 1 << 0
FADT_PWR_BUTTON = 1 << 4          # set: no fixed-feature power button
FADT_SLP_BUTTON = 1 << 5          # set: no fixed-feature sleep button
FADT_RESET_REG_SUP = 1 << 10
FADT_HW_REDUCED_ACPI = 1 << 20
IAPC_VGA_NOT_PRESENT = 1 << 2
IAPC_MSI_NOT_SUPPORTED = 1 << 3
FADT_REVISION, FADT_MINOR_REVISION = 6, 5

# MADT (5.2.12)
MADT_REVISION = 5
MADT_PCAT_COMPAT = 1              # KVM's in-kernel irqchip has the two 8259s too
LAPIC_ENABLED = 1
MADT_LAPIC, MADT_IOAPIC, MADT_INT_OVERRIDE, MADT_LAPIC_NMI = 0, 1, 2, 4
INTI_POLARITY_HIGH = 0x1          # MPS INTI flags: bits 1:0 polarity, 3:2 trigger mode
INTI_TRIGGER_EDGE = 0x4
ALL_PROCESSORS = 0xFF
NMI_LINT = 1

# Generic Address Structure (5.2.3.2)
GAS_SYSTEM_IO = 1
GAS_ACCESS_BYTE = 1

TABLE_ALIGN = 16
MAX_CPUS = 254                    # APIC ids 0..n-1 and the IOAPIC's id n must fit in 8 bits


class _Packed(ctypes.LittleEndianStructure):
    _pack_ = 1


class SdtHeader(_Packed):
    _fields_ = [("signature", ctypes.c_char * 4), ("length", u32), ("revision", u8), ("checksum", u8),
                ("oem_id", ctypes.c_char * 6), ("oem_table_id", ctypes.c_char * 8), ("oem_revision", u32),
                ("creator_id", ctypes.c_char * 4), ("creator_revision", u32)]


class Rsdp(_Packed):
    _fields_ = [("signature", ctypes.c_char * 8), ("checksum", u8), ("oem_id", ctypes.c_char * 6),
                ("revision", u8), ("rsdt_address", u32), ("length", u32), ("xsdt_address", u64),
                ("extended_checksum", u8), ("reserved", u8 * 3)]


class Gas(_Packed):
    _fields_ = [("space_id", u8), ("bit_width", u8), ("bit_offset", u8), ("access_size", u8), ("address", u64)]


def io_register(port: int, width_bits: int = 8) -> Gas:
    return Gas(GAS_SYSTEM_IO, width_bits, 0, GAS_ACCESS_BYTE, port)


class Fadt(_Packed):
    _fields_ = [
        ("header", SdtHeader), ("firmware_ctrl", u32), ("dsdt", u32), ("reserved0", u8),
        ("preferred_pm_profile", u8), ("sci_int", u16), ("smi_cmd", u32), ("acpi_enable", u8),
        ("acpi_disable", u8), ("s4bios_req", u8), ("pstate_cnt", u8),
        ("pm1a_evt_blk", u32), ("pm1b_evt_blk", u32), ("pm1a_cnt_blk", u32), ("pm1b_cnt_blk", u32),
        ("pm2_cnt_blk", u32), ("pm_tmr_blk", u32), ("gpe0_blk", u32), ("gpe1_blk", u32),
        ("pm1_evt_len", u8), ("pm1_cnt_len", u8), ("pm2_cnt_len", u8), ("pm_tmr_len", u8),
        ("gpe0_blk_len", u8), ("gpe1_blk_len", u8), ("gpe1_base", u8), ("cst_cnt", u8),
        ("p_lvl2_lat", u16), ("p_lvl3_lat", u16), ("flush_size", u16), ("flush_stride", u16),
        ("duty_offset", u8), ("duty_width", u8), ("day_alrm", u8), ("mon_alrm", u8), ("century", u8),
        ("iapc_boot_arch", u16), ("reserved1", u8), ("flags", u32),
        ("reset_reg", Gas), ("reset_value", u8), ("arm_boot_arch", u16), ("minor_revision", u8),
        ("x_firmware_ctrl", u64), ("x_dsdt", u64),
        ("x_pm1a_evt_blk", Gas), ("x_pm1b_evt_blk", Gas), ("x_pm1a_cnt_blk", Gas), ("x_pm1b_cnt_blk", Gas),
        ("x_pm2_cnt_blk", Gas), ("x_pm_tmr_blk", Gas), ("x_gpe0_blk", Gas), ("x_gpe1_blk", Gas),
        ("sleep_control_reg", Gas), ("sleep_status_reg", Gas), ("hypervisor_vendor_id", u64),
    ]


class MadtHeader(_Packed):
    _fields_ = [("header", SdtHeader), ("lapic_address", u32), ("flags", u32)]


class MadtLapic(_Packed):
    _fields_ = [("type", u8), ("length", u8), ("processor_uid", u8), ("apic_id", u8), ("flags", u32)]


class MadtIoApic(_Packed):
    _fields_ = [("type", u8), ("length", u8), ("ioapic_id", u8), ("reserved", u8), ("address", u32),
                ("gsi_base", u32)]


class MadtIntOverride(_Packed):
    _fields_ = [("type", u8), ("length", u8), ("bus", u8), ("source", u8), ("gsi", u32), ("flags", u16)]


class MadtLapicNmi(_Packed):
    _fields_ = [("type", u8), ("length", u8), ("processor_uid", u8), ("flags", u16), ("lint", u8)]


@dataclass(frozen=True)
class SerialPort:
    base: int
    length: int
    irq: int                                # ISA IRQ


@dataclass(frozen=True)
class MmioWindow:
    base: int
    size: int
    gsi: int


@dataclass(frozen=True)
class Platform:
    """What the tables describe: the CPUs and the devices the VMM put on its buses."""

    ncpus: int
    serial_ports: tuple[SerialPort, ...] = ()
    virtio_mmio: tuple[MmioWindow, ...] = ()
    reset_port: int | None = None           # the FADT reset register (an I/O port) and value
    reset_value: int = 0
    sleep_control_port: int = layout.ACPI_SLEEP_CONTROL_PORT
    sleep_status_port: int = layout.ACPI_SLEEP_STATUS_PORT
    isa_irqs: tuple[int, ...] = field(default=())   # ISA IRQs in use, stated in the MADT overrides


def checksum(data: bytes) -> int:
    return -sum(data) & 0xFF


def _sdt(signature: bytes, revision: int, body: bytes) -> bytes:
    """A complete table: header (length and checksum filled in) + body."""
    header = SdtHeader(signature, ctypes.sizeof(SdtHeader) + len(body), revision, 0, OEM_ID, OEM_TABLE_ID, 1,
                       CREATOR_ID, 1)
    table = bytearray(bytes(header) + body)
    table[9] = checksum(table)
    return bytes(table)


def _finish(table: bytearray) -> bytes:
    """Fill in length and checksum of a table built as one ctypes structure plus entries."""
    table[4:8] = len(table).to_bytes(4, "little")
    table[9] = 0
    table[9] = checksum(table)
    return bytes(table)


def _header(signature: bytes, revision: int) -> SdtHeader:
    return SdtHeader(signature, 0, revision, 0, OEM_ID, OEM_TABLE_ID, 1, CREATOR_ID, 1)


def build_dsdt(platform: Platform) -> bytes:
    devices = []
    for index, port in enumerate(platform.serial_ports):
        devices.append(aml.device(f"COM{index + 1}", [
            aml.name("_HID", aml.eisa_id("PNP0501")),
            aml.name("_UID", aml.integer(index + 1)),
            aml.name("_CRS", aml.resource_template([aml.io_port(port.base, port.length),
                                                    aml.irq_no_flags(port.irq)])),
        ]))
    for index, window in enumerate(platform.virtio_mmio):
        # LNRO0005: the ACPI id Linux's virtio_mmio driver matches (as on arm64 and microvm).
        devices.append(aml.device(f"VR{index:02X}", [
            aml.name("_HID", aml.string("LNRO0005")),
            aml.name("_UID", aml.integer(index)),
            aml.name("_CRS", aml.resource_template([aml.memory32_fixed(window.base, window.size),
                                                    aml.interrupt(window.gsi)])),
        ]))
    body = aml.scope("_SB_", devices)          # at the root already: no "\\" prefix (as iasl emits)
    # \_S5: SLP_TYPa, SLP_TYPb (and two reserved): what the OS writes to power off.
    body += aml.name("_S5_", aml.package([aml.integer(S5_SLEEP_TYPE), aml.integer(0),
                                            aml.integer(0), aml.integer(0)]))
    return _sdt(b"DSDT", 2, body)


def build_fadt(platform: Platform, dsdt_addr: int) -> bytes:
    fadt = Fadt()
    fadt.header = _header(b"FACP", FADT_REVISION)
    fadt.minor_revision = FADT_MINOR_REVISION
    fadt.flags = FADT_WBINVD | FADT_PWR_BUTTON | FADT_SLP_BUTTON | FADT_HW_REDUCED_ACPI
    fadt.iapc_boot_arch = IAPC_VGA_NOT_PRESENT | IAPC_MSI_NOT_SUPPORTED
    fadt.dsdt = dsdt_addr
    fadt.x_dsdt = dsdt_addr
    if platform.reset_port is not None:
        fadt.flags |= FADT_RESET_REG_SUP
        fadt.reset_reg = io_register(platform.reset_port)
        fadt.reset_value = platform.reset_value
    fadt.sleep_control_reg = io_register(platform.sleep_control_port)
    fadt.sleep_status_reg = io_register(platform.sleep_status_port)
    fadt.hypervisor_vendor_id = int.from_bytes(HYPERVISOR_VENDOR, "little")
    return _finish(bytearray(bytes(fadt)))


def build_madt(platform: Platform) -> bytes:
    madt = MadtHeader(_header(b"APIC", MADT_REVISION), layout.LAPIC_ADDR, MADT_PCAT_COMPAT)
    entries: list[ctypes.Structure] = [
        MadtLapic(MADT_LAPIC, ctypes.sizeof(MadtLapic), cpu, cpu, LAPIC_ENABLED) for cpu in range(platform.ncpus)]
    entries.append(MadtIoApic(MADT_IOAPIC, ctypes.sizeof(MadtIoApic), platform.ncpus, 0, layout.IOAPIC_ADDR, 0))
    # KVM's default routing wires ISA IRQ n to IOAPIC pin n, timer included (a PC firmware
    # would report IRQ 0 on pin 2): say so, and state edge/active-high for the lines in use.
    for irq in sorted({0, *platform.isa_irqs}):
        entries.append(MadtIntOverride(MADT_INT_OVERRIDE, ctypes.sizeof(MadtIntOverride), 0, irq, irq,
                                       INTI_POLARITY_HIGH | INTI_TRIGGER_EDGE))
    entries.append(MadtLapicNmi(MADT_LAPIC_NMI, ctypes.sizeof(MadtLapicNmi), ALL_PROCESSORS,
                                INTI_POLARITY_HIGH | INTI_TRIGGER_EDGE, NMI_LINT))
    return _finish(bytearray(bytes(madt) + b"".join(bytes(e) for e in entries)))


def build_xsdt(addresses: list[int]) -> bytes:
    return _sdt(b"XSDT", 1, b"".join(a.to_bytes(8, "little") for a in addresses))


def build_rsdp(xsdt_addr: int) -> bytes:
    rsdp = Rsdp(b"RSD PTR ", 0, OEM_ID, 2, 0, ctypes.sizeof(Rsdp), xsdt_addr)
    data = bytearray(bytes(rsdp))
    data[8] = checksum(data[:20])               # ACPI 1.0 part
    data[32] = checksum(data)                   # the whole structure
    return bytes(data)


@dataclass(frozen=True)
class AcpiTables:
    """The encoded tables and where each goes; ``blob`` is written at ``base``."""

    base: int
    rsdp_addr: int
    blob: bytes
    tables: dict[str, tuple[int, bytes]]       # signature -> (address, bytes)


def _align(value: int) -> int:
    return -(-value // TABLE_ALIGN) * TABLE_ALIGN


def build_tables(platform: Platform, base: int = layout.ACPI_START) -> AcpiTables:
    """Lay out RSDP, DSDT, FADT, MADT and XSDT from ``base`` (the RSDP first, 16-aligned)."""
    if not 1 <= platform.ncpus <= MAX_CPUS:
        raise VmmError(f"the ACPI MADT supports 1..{MAX_CPUS} vCPUs, not {platform.ncpus}")
    placed: dict[str, tuple[int, bytes]] = {}
    cursor = _align(base + ctypes.sizeof(Rsdp))

    def place(signature: str, data: bytes) -> int:
        nonlocal cursor
        addr = cursor
        placed[signature] = (addr, data)
        cursor = _align(addr + len(data))
        return addr

    dsdt_addr = place("DSDT", build_dsdt(platform))
    fadt_addr = place("FACP", build_fadt(platform, dsdt_addr))
    madt_addr = place("APIC", build_madt(platform))
    xsdt_addr = place("XSDT", build_xsdt([fadt_addr, madt_addr]))
    placed = {"RSDP": (base, build_rsdp(xsdt_addr)), **placed}
    if cursor - base > layout.ACPI_MAX_SIZE:
        raise VmmError(f"ACPI tables ({cursor - base} bytes) do not fit in {layout.ACPI_MAX_SIZE:#x} bytes")
    blob = bytearray(cursor - base)
    for addr, data in placed.values():
        blob[addr - base:addr - base + len(data)] = data
    return AcpiTables(base, base, bytes(blob), placed)


assert ctypes.sizeof(SdtHeader) == 36
assert ctypes.sizeof(Rsdp) == 36
assert ctypes.sizeof(Gas) == 12
assert ctypes.sizeof(Fadt) == 276
assert ctypes.sizeof(MadtLapic) == 8 and ctypes.sizeof(MadtIoApic) == 12
assert ctypes.sizeof(MadtIntOverride) == 10 and ctypes.sizeof(MadtLapicNmi) == 6
