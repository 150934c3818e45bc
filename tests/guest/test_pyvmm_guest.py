"""The default Linux guest under pyvmm's own KVM VMM: one boot shared by many checks.

On this platform (kvm_pvm) the guest kernel runs in an instruction emulator, so a boot
takes tens of seconds: every check here reuses one booted guest, driven through its
serial console over a pty (the VMM's raw-terminal path).
"""

from __future__ import annotations

import re

import pytest

from pyvmm.guest.session import GuestSession
from vmm_cli import pyvmm_argv

pytestmark = [pytest.mark.kvm, pytest.mark.guest]

MEM_MIB = 256
SMP = 2
BOOT_TIMEOUT = 400


@pytest.fixture(scope="module")
def guest(guest_image):
    argv = pyvmm_argv(
        "run", "--mem", f"{MEM_MIB}M", "--smp", str(SMP),
        # loglevel=7 after the default "quiet" so the console shows the boot milestones
        "--append-extra", "loglevel=7", "--append-extra", "pyvmm.session",
    )
    session = GuestSession.start(argv, timeout=BOOT_TIMEOUT, use_pty=True)
    yield session
    status = session.close(timeout=120)
    assert status == 0, f"VMM exit status {status} after 'reboot -f'\n{session.recent_output()}"


def _line_index(session, pattern: str) -> int:
    for index, (_, text) in enumerate(session.lines):
        if re.search(pattern, text):
            return index
    raise AssertionError(f"no console line matches {pattern!r}\n{session.recent_output(80)}")


def test_console_milestones_in_order(guest):
    milestones = [r"Linux version 6\.12", r"Run /init as init process", r"pyvmm-init: start",
                  r"pyvmm-init: session-ready"]
    indices = [_line_index(guest, p) for p in milestones]
    assert indices == sorted(indices), list(zip(milestones, indices))


def test_kernel_command_line_reached_the_guest(guest):
    cmdline = guest.check("cat /proc/cmdline", timeout=60)
    assert "console=ttyS0" in cmdline and "pyvmm.session" in cmdline


def test_guest_sees_its_cpus(guest):
    assert int(guest.check("grep -c ^processor /proc/cpuinfo", timeout=60)) == SMP


def test_guest_sees_its_memory(guest):
    meminfo = guest.check("grep MemTotal /proc/meminfo", timeout=60)
    total_kib = int(re.search(r"(\d+) kB", meminfo).group(1))
    # The kernel keeps its own image and reserved areas out of MemTotal.
    assert (MEM_MIB - 48) * 1024 < total_kib <= MEM_MIB * 1024, meminfo


@pytest.mark.parametrize("command,status", [("true", 0), ("false", 1), ("(exit 7)", 7), ("sh -c 'exit 200'", 200)])
def test_command_exit_status(guest, command, status):
    assert guest.run(command, timeout=60).status == status


def test_command_output(guest):
    result = guest.run("echo hello from $(uname -s) $(uname -r)", timeout=60)
    assert result.status == 0
    assert re.search(r"hello from Linux 6\.12", result.output), result.output


def test_user_space_is_the_debian_one(guest):
    """busybox and alsa-utils come from real Debian packages."""
    assert "BusyBox" in guest.run("busybox 2>&1 | head -1", timeout=60).output
    result = guest.run("aplay --version", timeout=60)
    assert result.status == 0 and "aplay: version" in result.output, result.output


def test_kernel_log_is_clean(guest):
    dmesg = guest.check("dmesg", timeout=120)
    for bad in ("Call Trace", "BUG:", "Oops", "segfault"):
        assert bad not in dmesg, f"{bad!r} in the guest kernel log:\n{dmesg[-3000:]}"
