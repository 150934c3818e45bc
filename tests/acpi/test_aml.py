"""The AML encoder against byte sequences worked out from the ACPI specification (chapter 20)."""

from __future__ import annotations

import pytest

from pyvmm.arch.x86_64 import acpi_aml as aml


@pytest.mark.parametrize("body_len,encoded", [
    (0, b"\x01"), (0x3E, b"\x3f"),                 # one byte up to 63 in total
    (0x3F, b"\x41\x04"),                           # 0x41 total: two bytes, low nibble first
    (0xFFD, b"\x4f\xff"),                          # 0xFFF total: the largest two-byte length
    (0xFFE, b"\x81\x00\x01"),                      # 0x1001 total: three bytes
])
def test_pkg_length(body_len, encoded):
    assert aml.pkg_length(body_len) == encoded


def test_pkg_length_out_of_range():
    with pytest.raises(aml.AmlError):
        aml.pkg_length(1 << 28)


@pytest.mark.parametrize("value,encoded", [
    (0, b"\x00"), (1, b"\x01"), (2, b"\x0a\x02"), (0x100, b"\x0b\x00\x01"),
    (0xD000_0000, b"\x0c\x00\x00\x00\xd0"), (1 << 32, b"\x0e\x00\x00\x00\x00\x01\x00\x00\x00"),
])
def test_integer(value, encoded):
    assert aml.integer(value) == encoded


def test_names():
    assert aml.name_seg("_SB") == b"_SB_"
    assert aml.name_string("\\_SB_.COM1") == b"\\\x2e_SB_COM1"
    assert aml.name_string("\\_S5") == b"\\_S5_"
    assert aml.name_string("A.B.C") == b"\x2f\x03A___B___C___"
    for bad in ("lower", "TOOLONG", "1ABC", ""):
        with pytest.raises(aml.AmlError):
            aml.name_seg(bad)


def test_eisa_id_matches_iasl():
    # iasl compiles EisaId("PNP0501") to 0x0105D041 and EisaId("PNP0A03") to 0x030AD041.
    assert aml.eisa_id("PNP0501") == b"\x0c" + (0x0105D041).to_bytes(4, "little")
    assert aml.eisa_id("PNP0A03") == b"\x0c" + (0x030AD041).to_bytes(4, "little")


def test_resource_descriptors():
    assert aml.io_port(0x3F8, 8) == bytes([0x47, 1, 0xF8, 3, 0xF8, 3, 1, 8])
    assert aml.irq_no_flags(4) == bytes([0x22, 0x10, 0x00])
    assert aml.memory32_fixed(0xD000_0000, 0x1000) == bytes([0x86, 9, 0, 1, 0, 0, 0, 0xD0, 0, 0x10, 0, 0])
    assert aml.interrupt(5) == bytes([0x89, 6, 0, 0x03, 1, 5, 0, 0, 0])   # consumer, edge, high, exclusive
    assert aml.interrupt(16, edge=False, active_low=True, shared=True)[3] == 0x0D
    template = aml.resource_template([aml.irq_no_flags(4)])
    assert template == bytes([0x11, 0x08, 0x0A, 0x05, 0x22, 0x10, 0x00, 0x79, 0x00])


def test_package_and_device_nesting():
    pkg = aml.package([aml.integer(5), aml.integer(0)])
    assert pkg == bytes([0x12, 0x05, 0x02, 0x0A, 0x05, 0x00])
    dev = aml.device("VR00", [aml.name("_UID", aml.integer(0))])
    assert dev == b"\x5b\x82\x0b" + b"VR00" + b"\x08_UID\x00"
    scope = aml.scope("\\_SB_", [dev])
    assert scope[0] == 0x10 and scope[1] == len(scope) - 1


def test_bad_values_are_refused():
    for call in (lambda: aml.integer(-1), lambda: aml.string("a\0b"), lambda: aml.irq_no_flags(16),
                 lambda: aml.eisa_id("pnp0501"), lambda: aml.interrupt(), lambda: aml.package([b"\x00"] * 256)):
        with pytest.raises(aml.AmlError):
            call()
