"""pyvmm's VM with --acpi on/off/auto on KVM: a few guest instructions find the RSDP through
the PVH start info and power off through the ACPI sleep register (or report that they could not)."""

from __future__ import annotations

import os
import struct
import sys
from pathlib import Path

import pytest

from pyvmm.arch.x86_64 import layout
from pyvmm.arch.x86_64.elf import XEN_ELFNOTE_PHYS32_ENTRY
from pyvmm.config import DeviceSpec, MachineConfig
from pyvmm.vm import Vm

sys.path.insert(0, str(Path(__file__).parents[1] / "arch"))
from arch_images import KERNEL_PADDR, build_elf, elf_note  # noqa: E402

pytestmark = [
    pytest.mark.kvm,
    pytest.mark.skipif(not os.path.exists("/dev/kvm"), reason="/dev/kvm is absent: KVM tests need it"),
]

NO_RSDP_STATUS = 7
# 32-bit PVH entry, EBX = hvm_start_info:
#   mov esi, [ebx+32]          rsdp_paddr
#   cmp dword [esi], "RSD "    (at 0 when there are no tables: low memory is zero)
#   jne .fail
#   mov dx, 0x600 ; mov al, SLP_EN | 5 << 2 ; out dx, al ; hlt
# .fail: mov dx, 0x501 ; mov al, 7 ; out dx, al ; hlt
PVH_CODE = (bytes([0x8B, 0x73, 0x20, 0x81, 0x3E]) + b"RSD " + bytes([0x75, 0x08])
            + bytes([0x66, 0xBA]) + struct.pack("<H", layout.ACPI_SLEEP_CONTROL_PORT) + bytes([0xB0, 0x34, 0xEE, 0xF4])
            + bytes([0x66, 0xBA, 0x01, 0x05, 0xB0, NO_RSDP_STATUS, 0xEE, 0xF4]))


@pytest.fixture
def kernel_file(tmp_path):
    text = bytearray(0x1000)
    text[:len(PVH_CODE)] = PVH_CODE
    notes = elf_note(b"Xen\0", XEN_ELFNOTE_PHYS32_ENTRY, struct.pack("<I", KERNEL_PADDR))
    path = tmp_path / "vmlinux"
    path.write_bytes(build_elf([(KERNEL_PADDR, bytes(text), 0x1000)], notes=notes))
    return path


def make_vm(kernel, acpi, devices=(), expect_exit_status=False):
    config = MachineConfig(kernel=kernel, cmdline="console=ttyS0", mem_size=64 << 20, acpi=acpi,
                           devices=[DeviceSpec.parse(d) for d in devices], expect_exit_status=expect_exit_status)
    config.validate()
    return Vm(config)


def cmdline_of(vm):
    data = vm.memory.read(layout.CMDLINE_START, layout.COMMAND_LINE_SIZE)
    return data[:data.index(b"\0")].decode()


# auto: this tiny ELF has neither a symbol table nor a config beside it, so pyvmm cannot
# tell whether it has ACPI and writes the tables (and the command-line devices).
@pytest.mark.parametrize("acpi,status", [("on", 0), ("off", NO_RSDP_STATUS), ("auto", 0)])
def test_poweroff_through_the_sleep_register(kernel_file, acpi, status):
    vm = make_vm(kernel_file, acpi)
    assert vm.run(timeout=60) == status
    if status == 0:
        assert "powered off (ACPI S5)" in vm._stop_reason.message


def test_poweroff_before_the_commands_status_is_an_error(kernel_file):
    """Like a reset (``reboot -f``): with ``pyvmm run -- CMD`` the guest owed CMD's status."""
    vm = make_vm(kernel_file, "on", expect_exit_status=True)
    assert vm.run(timeout=60) == 1
    assert vm._stop_reason.message == "guest powered off (ACPI S5), before the command's exit status arrived"


def test_devices_are_on_the_command_line_only_without_acpi(kernel_file, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)           # the sound device's default WAV output
    for acpi, in_cmdline, tables in (("on", False, True), ("off", True, False), ("auto", True, True)):
        vm = make_vm(kernel_file, acpi, devices=["virtio-snd"])
        try:
            base, _, gsi = layout.virtio_mmio_slot(0)
            assert (f"virtio_mmio.device=4K@{base:#x}:{gsi}" in cmdline_of(vm)) == in_cmdline, acpi
            assert (vm.memory.read(layout.ACPI_START, 8) == b"RSD PTR ") == tables, acpi
        finally:
            vm.shutdown()


def test_tables_in_memory_are_the_machine_description(kernel_file):
    """What the VM writes is ``acpi_platform()``'s tables (the real-KVM tier compares the guest's copy)."""
    from pyvmm.arch.x86_64 import acpi
    from pyvmm.vm import acpi_platform

    vm = make_vm(kernel_file, "on")
    try:
        expected = acpi.build_tables(acpi_platform(1, []))
        assert vm.memory.read(layout.ACPI_START, len(expected.blob)) == expected.blob
    finally:
        vm.shutdown()
