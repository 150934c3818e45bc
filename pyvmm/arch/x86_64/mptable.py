"""An Intel MultiProcessor Specification 1.4 table: how Linux finds the CPUs, the IOAPIC
and the ISA interrupt wiring when there is no ACPI.

Layout at :data:`layout.MPTABLE_START` (in the BIOS area Linux scans): the 16-byte
floating pointer, then the configuration table header and its entries.
"""

from __future__ import annotations

import ctypes

from pyvmm.arch.x86_64 import layout
from pyvmm.errors import VmmError
from pyvmm.memory import GuestMemory

u8, u16, u32 = ctypes.c_uint8, ctypes.c_uint16, ctypes.c_uint32

MP_SPEC_REV = 4              # 1.4
APIC_VERSION = 0x14          # an integrated local APIC
IOAPIC_VERSION = 0x11
CPU_ENABLED = 0x01
CPU_BOOTPROCESSOR = 0x02
CPU_SIGNATURE = 0x600        # family 6 (the kernel only prints it)
CPU_FEATURES = (1 << 0) | (1 << 9)   # CPUID.1:EDX FPU | APIC
MPC_APIC_USABLE = 0x01
BUS_ID_ISA = 0
MAX_CPUS = 254               # APIC ids 0..ncpus-1, IOAPIC id ncpus, 0xff is broadcast


class EntryType:
    PROCESSOR = 0
    BUS = 1
    IOAPIC = 2
    INTSRC = 3
    LINTSRC = 4


class IrqType:
    INT = 0
    NMI = 1
    SMI = 2
    EXTINT = 3


IRQFLAG_CONFORMS = 0         # polarity and trigger conform to the bus (ISA: active high, edge)


class _Packed(ctypes.LittleEndianStructure):
    _pack_ = 1


class MpFloatingPointer(_Packed):
    _fields_ = [("signature", ctypes.c_char * 4), ("physptr", u32), ("length", u8), ("specification", u8),
                ("checksum", u8), ("feature1", u8), ("feature2", u8), ("feature3", u8 * 3)]


class MpConfigHeader(_Packed):
    _fields_ = [("signature", ctypes.c_char * 4), ("length", u16), ("spec", u8), ("checksum", u8),
                ("oem", ctypes.c_char * 8), ("productid", ctypes.c_char * 12), ("oemptr", u32),
                ("oemsize", u16), ("oemcount", u16), ("lapic", u32), ("reserved", u32)]


class MpProcessor(_Packed):
    _fields_ = [("type", u8), ("apicid", u8), ("apicver", u8), ("cpuflag", u8), ("cpufeature", u32),
                ("featureflag", u32), ("reserved", u32 * 2)]


class MpBus(_Packed):
    _fields_ = [("type", u8), ("busid", u8), ("bustype", ctypes.c_char * 6)]


class MpIoApic(_Packed):
    _fields_ = [("type", u8), ("apicid", u8), ("apicver", u8), ("flags", u8), ("apicaddr", u32)]


class MpIntSrc(_Packed):
    _fields_ = [("type", u8), ("irqtype", u8), ("irqflag", u16), ("srcbus", u8), ("srcbusirq", u8),
                ("dstapic", u8), ("dstirq", u8)]


class MpLintSrc(_Packed):
    _fields_ = [("type", u8), ("irqtype", u8), ("irqflag", u16), ("srcbusid", u8), ("srcbusirq", u8),
                ("destapic", u8), ("destapiclint", u8)]


def checksum(data: bytes) -> int:
    """The byte that makes ``data`` sum to 0 mod 256."""
    return -sum(data) & 0xFF


def build_mptable(ncpus: int, base: int = layout.MPTABLE_START) -> bytes:
    """The floating pointer plus configuration table, to be placed at ``base``."""
    if not 1 <= ncpus <= MAX_CPUS:
        raise VmmError(f"the MP table supports 1..{MAX_CPUS} vCPUs, not {ncpus}")
    ioapic_id = ncpus
    entries: list[ctypes.Structure] = []
    for cpu in range(ncpus):
        flags = CPU_ENABLED | (CPU_BOOTPROCESSOR if cpu == 0 else 0)
        entries.append(MpProcessor(EntryType.PROCESSOR, cpu, APIC_VERSION, flags, CPU_SIGNATURE, CPU_FEATURES))
    entries.append(MpBus(EntryType.BUS, BUS_ID_ISA, b"ISA   "))
    entries.append(MpIoApic(EntryType.IOAPIC, ioapic_id, IOAPIC_VERSION, MPC_APIC_USABLE, layout.IOAPIC_ADDR))
    for pin in range(layout.IOAPIC_PINS):
        entries.append(MpIntSrc(EntryType.INTSRC, IrqType.INT, IRQFLAG_CONFORMS, BUS_ID_ISA, pin, ioapic_id, pin))
    # Virtual-wire mode: the PIC's output on the BSP's LINT0, NMIs on every CPU's LINT1.
    entries.append(MpLintSrc(EntryType.LINTSRC, IrqType.EXTINT, IRQFLAG_CONFORMS, BUS_ID_ISA, 0, 0, 0))
    entries.append(MpLintSrc(EntryType.LINTSRC, IrqType.NMI, IRQFLAG_CONFORMS, BUS_ID_ISA, 0, 0xFF, 1))

    body = b"".join(bytes(e) for e in entries)
    header = MpConfigHeader(b"PCMP", ctypes.sizeof(MpConfigHeader) + len(body), MP_SPEC_REV, 0,
                            b"PYVMM", b"000000000000", 0, 0, len(entries), layout.LAPIC_ADDR, 0)
    header.checksum = checksum(bytes(header) + body)
    config = bytes(header) + body

    pointer = MpFloatingPointer(b"_MP_", base + ctypes.sizeof(MpFloatingPointer), 1, MP_SPEC_REV)
    pointer.checksum = checksum(bytes(pointer))
    table = bytes(pointer) + config
    if len(table) > layout.MPTABLE_MAX_SIZE:
        raise VmmError(f"MP table for {ncpus} vCPUs is too large ({len(table)} bytes)")
    return table


def write_mptable(memory: GuestMemory, ncpus: int) -> None:
    memory.write(layout.MPTABLE_START, build_mptable(ncpus))


assert ctypes.sizeof(MpFloatingPointer) == 16
assert ctypes.sizeof(MpConfigHeader) == 44
assert ctypes.sizeof(MpProcessor) == 20
assert all(ctypes.sizeof(t) == 8 for t in (MpBus, MpIoApic, MpIntSrc, MpLintSrc))
