"""The 64-bit Linux boot protocol through ``pyvmm run`` (the default guest tests use PVH).

The initramfs is one static program doing ``exit(0)``, so the kernel panics with
"Attempted to kill init" right after its first system call and ``panic=-1`` reboots, which
ends the VMM with status 0. That keeps this boot short while still proving the kernel
reached user space through the zero page, the identity page tables and the MP table.
"""

from __future__ import annotations

import struct
import subprocess

import pytest

from pyvmm.cpio import CpioEntry, build_cpio
from vmm_cli import pyvmm_argv

pytestmark = [pytest.mark.kvm, pytest.mark.guest]

CMDLINE = ("console=ttyS0 noxsave clearcpuid=smap,smep,popcnt rodata=off tsc=reliable no_timer_check "
           "reboot=k panic=-1 loglevel=7")


def exit0_elf() -> bytes:
    """A static x86-64 ELF executable doing exit(0) through ``syscall``."""
    code = b"\xb8\x3c\x00\x00\x00\x31\xff\x0f\x05"        # mov eax, 60; xor edi, edi; syscall
    base, offset = 0x400000, 64 + 56
    size = offset + len(code)
    header = struct.pack("<16sHHIQQQIHHHHHH", b"\x7fELF\x02\x01\x01" + bytes(9), 2, 62, 1, base + offset,
                         64, 0, 0, 64, 56, 1, 64, 0, 0)
    return header + struct.pack("<IIQQQQQQ", 1, 5, 0, base, base, size, size, 0x1000) + code


def test_linux64_boot_reaches_user_space(guest_image, tmp_path):
    initrd = tmp_path / "exit0.cpio"
    initrd.write_bytes(build_cpio([CpioEntry.file("init", exit0_elf(), 0o755)]))
    proc = subprocess.run(
        pyvmm_argv("run", "--kernel", str(guest_image.vmlinux), "--initrd", str(initrd), "--mem", "128M",
                   "--boot-protocol", "linux64", "--append", CMDLINE, "--timeout", "300"),
        stdin=subprocess.DEVNULL, capture_output=True, timeout=360,
    )
    console = proc.stdout.decode(errors="replace")
    assert proc.returncode == 0, console[-3000:] + proc.stderr.decode(errors="replace")
    assert "BIOS-e820: [mem 0x0000000000100000-0x0000000007ffffff] usable" in console, console
    assert "Processors: 1" in console, console
    assert "Run /init as init process" in console, console
    assert "Attempted to kill init! exitcode=0x00000000" in console, console
