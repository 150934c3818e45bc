"""``pyvmm run``: a guest that resets or triple-faults is not a guest that finished.

With ``-- CMD`` the guest owes CMD's exit status; a triple fault or reset before it arrives
ends the VMM with status 1 and one ``pyvmm: error:`` line naming the RIP (on kvm_amd the RIP
is lost: KVM re-initialises the vCPU before returning, and the line says so). Without a
command pyvmm stops like QEMU's ``-no-reboot``: status 0, with a warning line for a triple
fault. Runs on kvm_pvm here and in the real-KVM tier (kvm_amd).
"""

from __future__ import annotations

import struct
import subprocess

import pytest

from tinyguest import ON_KVM_AMD, kvm_test
from vmm_cli import pyvmm_argv

pytestmark = kvm_test

ENTRY = 0x100_0000
# mov rax, [0x8000000000000000] (non-canonical: #GP; the boot IDT is empty: triple fault); hlt
TRIPLE_FAULT_CODE = bytes.fromhex("48a1") + struct.pack("<Q", 0x8000_0000_0000_0000) + b"\xf4"


def triple_fault_kernel(path) -> str:
    """An ELF64 'kernel' without a PVH note (so the 64-bit boot protocol) that triple-faults at once."""
    phdr = struct.pack("<IIQQQQQQ", 1, 5, 0x1000, ENTRY, ENTRY, len(TRIPLE_FAULT_CODE), len(TRIPLE_FAULT_CODE), 0x1000)
    ident = b"\x7fELF\x02\x01\x01" + bytes(9)
    header = struct.pack("<16sHHIQQQIHHHHHH", ident, 2, 62, 1, ENTRY, 64, 0, 0, 64, 56, 1, 64, 0, 0)
    image = (header + phdr).ljust(0x1000, b"\0") + TRIPLE_FAULT_CODE
    path.write_bytes(image)
    return str(path)


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(pyvmm_argv("run", "--timeout", "300", *args), stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=400)


def _rip_named(line: str) -> bool:
    if ON_KVM_AMD:
        return "RIP unknown" in line and "re-initialised the vCPU" in line
    return f"RIP {ENTRY:#x}" in line


def test_triple_fault_before_the_command_status_is_an_error_naming_the_rip(tmp_path):
    proc = _run("--kernel", triple_fault_kernel(tmp_path / "tf.elf"), "--", "true")
    errors = [line for line in proc.stderr.splitlines() if line.startswith("pyvmm: error:")]
    assert proc.returncode == 1, proc.stderr
    assert len(errors) == 1, proc.stderr
    assert "triple fault" in errors[0] and "before the command's exit status arrived" in errors[0]
    assert _rip_named(errors[0]), errors[0]


def test_triple_fault_without_a_command_stops_with_0_and_says_why(tmp_path):
    proc = _run("--kernel", triple_fault_kernel(tmp_path / "tf.elf"))
    assert proc.returncode == 0, proc.stderr
    warning = next(line for line in proc.stderr.splitlines() if "triple fault" in line)
    assert "pyvmm does not reboot guests" in warning and _rip_named(warning)


@pytest.mark.guest
def test_reset_before_the_command_status_is_an_error(guest_image):
    """The command reboots the default guest (i8042 reset): its status never arrives."""
    proc = _run("--", "reboot", "-f")
    errors = [line for line in proc.stderr.splitlines() if line.startswith("pyvmm: error:")]
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr
    assert errors == ["pyvmm: error: guest reset the machine, before the command's exit status arrived"]
