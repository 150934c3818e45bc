"""The ACPI tables pyvmm writes, decoded by Debian's iasl and by hand."""

from __future__ import annotations

import re
import struct

import pytest

from pyvmm.arch.x86_64 import acpi, layout
from pyvmm.errors import VmmError

from iasl import compile_asl, disassemble


def platform(ncpus=2, devices=3):
    windows = tuple(acpi.MmioWindow(*layout.virtio_mmio_slot(i)) for i in range(devices))
    return acpi.Platform(
        ncpus=ncpus, serial_ports=(acpi.SerialPort(0x3F8, 8, 4),), virtio_mmio=windows,
        reset_port=0x64, reset_value=0xFE,
        isa_irqs=tuple(i for i in (4, *(w.gsi for w in windows)) if i < 16))


def asl_body(dsl: str) -> str:
    """The ASL without iasl's comment header (which names the input file and the date)."""
    return dsl[dsl.index("DefinitionBlock"):]


@pytest.fixture
def tables():
    return acpi.build_tables(platform())


def test_layout_and_checksums(tables):
    assert tables.base == tables.rsdp_addr == layout.ACPI_START
    assert len(tables.blob) <= layout.ACPI_MAX_SIZE
    assert layout.ACPI_START + layout.ACPI_MAX_SIZE <= layout.MPTABLE_START
    for signature, (addr, data) in tables.tables.items():
        assert addr % 16 == 0, signature
        assert tables.blob[addr - tables.base:addr - tables.base + len(data)] == data
        if signature != "RSDP":
            assert data[:4] == signature.encode()
            assert struct.unpack_from("<I", data, 4)[0] == len(data)
            assert sum(data) % 256 == 0, f"{signature} checksum"


def test_rsdp_points_to_xsdt_which_points_to_fadt_and_madt(tables):
    rsdp = tables.tables["RSDP"][1]
    assert rsdp[:8] == b"RSD PTR " and rsdp[15] == 2              # revision 2: XSDT
    assert sum(rsdp[:20]) % 256 == 0 and sum(rsdp) % 256 == 0      # both checksums
    length, xsdt = struct.unpack_from("<IQ", rsdp, 20)
    assert length == 36 and xsdt == tables.tables["XSDT"][0]
    xsdt_data = tables.tables["XSDT"][1]
    pointers = struct.unpack_from("<2Q", xsdt_data, 36)
    assert pointers == (tables.tables["FACP"][0], tables.tables["APIC"][0])
    fadt = tables.tables["FACP"][1]
    assert struct.unpack_from("<Q", fadt, 140)[0] == tables.tables["DSDT"][0]   # X_DSDT
    assert struct.unpack_from("<I", fadt, 40)[0] == tables.tables["DSDT"][0]    # DSDT


def test_dsdt_decodes_to_one_device_per_transport_and_the_serial_port(tables, tmp_path):
    dsl = disassemble(tables.tables["DSDT"][1], tmp_path, "dsdt")
    devices = re.findall(r"Device \((\w+)\)", dsl)
    assert devices == ["COM1", "VR00", "VR01", "VR02"]
    com1 = dsl[dsl.index("Device (COM1)"):dsl.index("Device (VR00)")]
    assert 'EisaId ("PNP0501")' in com1 and "0x03F8," in com1 and "0x08,               // Length" in com1
    assert re.search(r"IRQNoFlags \(\)\s*\{4\}", com1)
    for index in range(3):
        base, size, gsi = layout.virtio_mmio_slot(index)
        start = dsl.index(f"Device (VR{index:02X})")
        block = dsl[start:dsl.index("})", start)]
        assert 'Name (_HID, "LNRO0005")' in block
        assert f"0x{base:08X},         // Address Base" in block
        assert f"0x{size:08X},         // Address Length" in block
        assert "Interrupt (ResourceConsumer, Edge, ActiveHigh, Exclusive, ,, )" in block
        assert f"0x{gsi:08X}," in block
    assert re.search(r"Name \(_S5, Package \(0x04\)[^}]*0x05,", dsl)


def test_dsdt_survives_an_iasl_round_trip(tables, tmp_path):
    """Decode, recompile with iasl, decode again: the same ASL (so the AML is well-formed)."""
    dsl = disassemble(tables.tables["DSDT"][1], tmp_path / "a", "dsdt")
    recompiled = compile_asl(dsl, tmp_path / "b", "dsdt")
    assert asl_body(disassemble(recompiled, tmp_path / "c", "dsdt")) == asl_body(dsl)


def test_fadt_is_hardware_reduced_with_sleep_and_reset_registers(tables, tmp_path):
    dsl = disassemble(tables.tables["FACP"][1], tmp_path, "facp")
    assert re.search(r"Revision : 06", dsl) and re.search(r"FADT Minor Revision : 05", dsl)
    assert re.search(r"Hardware Reduced \(V5\) : 1", dsl)
    assert re.search(r"Reset Register Supported \(V2\) : 1", dsl)
    assert re.search(r"Value to cause reset : FE", dsl)

    def gas(title):
        block = dsl[dsl.index(title):]
        space = re.search(r"Space ID : (\w+)", block).group(1)
        address = int(re.search(r"Address : (\w+)", block).group(1), 16)
        return space, address

    assert gas("Reset Register :") == ("01", 0x64)
    assert gas("Sleep Control Register :") == ("01", layout.ACPI_SLEEP_CONTROL_PORT)
    assert gas("Sleep Status Register :") == ("01", layout.ACPI_SLEEP_STATUS_PORT)
    assert "Checksum is incorrect" not in dsl and "Invalid" not in dsl


@pytest.mark.parametrize("ncpus", [1, 4])
def test_madt_lists_cpus_ioapic_overrides_and_nmi(ncpus, tmp_path):
    tables = acpi.build_tables(platform(ncpus=ncpus, devices=6))
    dsl = disassemble(tables.tables["APIC"][1], tmp_path, "apic")
    assert re.search(r"Local Apic Address : FEE00000", dsl)
    assert re.search(r"PC-AT Compatibility : 1", dsl)
    apic_ids = [int(x, 16) for x in re.findall(r"Local Apic ID : (\w+)", dsl)]
    assert apic_ids == list(range(ncpus))
    assert re.findall(r"I/O Apic ID : (\w+)", dsl) == [f"{ncpus:02X}"]
    assert re.search(r"Address : FEC00000", dsl)
    # ISA IRQ -> GSI, identity; the timer, COM1 and the virtio lines below 16 (5, 6, 7, 10, 11)
    overrides = re.findall(r"Source : (\w+)\s*\n\[[^\]]*\]\s*Interrupt : (\w+)", dsl)
    assert [(int(s, 16), int(g, 16)) for s, g in overrides] == [(i, i) for i in (0, 4, 5, 6, 7, 10, 11)]
    assert "Local APIC NMI" in dsl and re.search(r"Interrupt Input LINT : 01", dsl)


def test_table_limits():
    with pytest.raises(VmmError):
        acpi.build_tables(platform(ncpus=0))
    with pytest.raises(VmmError):
        acpi.build_tables(platform(ncpus=acpi.MAX_CPUS + 1))
    most = acpi.build_tables(platform(ncpus=8, devices=layout.VIRTIO_MMIO_MAX_DEVICES))
    assert len(most.blob) < layout.ACPI_MAX_SIZE
