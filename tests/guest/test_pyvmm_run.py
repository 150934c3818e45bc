"""``pyvmm run -- CMD``: boot, run CMD in the guest, stream its output, exit with its status.

Each case is a whole boot (tens of seconds here), so the cases are few and each checks
several things: the exit status travels through the guest's debug-exit port, the
console is a plain pipe, and --extra-initrd adds files to the guest.
"""

from __future__ import annotations

import subprocess

import pytest

from pyvmm.cpio import CpioEntry, build_cpio
from vmm_cli import pyvmm_argv

pytestmark = [pytest.mark.kvm, pytest.mark.guest]

RUN_TIMEOUT = 400


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(pyvmm_argv("run", *args), stdin=subprocess.DEVNULL, capture_output=True,
                          timeout=RUN_TIMEOUT)


def test_command_status_and_extra_initrd(guest_image, tmp_path):
    archive = tmp_path / "x.cpio"
    archive.write_bytes(build_cpio([CpioEntry.file("x", b"payload from the host\n")]))
    proc = _run("--extra-initrd", str(archive), "--", "sh", "-c", "cat /x; exit 3")
    out = proc.stdout.decode(errors="replace")
    assert proc.returncode == 3, out[-2000:] + proc.stderr.decode(errors="replace")
    assert "payload from the host" in out


def test_command_success_exits_zero(guest_image):
    proc = _run("--", "true")
    assert proc.returncode == 0, proc.stdout.decode(errors="replace")[-2000:] + proc.stderr.decode(errors="replace")
