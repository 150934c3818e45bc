"""Bad --modules / --acpi / fetch-kernel input is a one-line error before anything boots."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1]))
from vmm_cli import pyvmm_argv  # noqa: E402


def _pyvmm(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(pyvmm_argv(*args), capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)


@pytest.mark.parametrize("args,message", [
    (["run", "--modules", "{dir}"], "no module support"),
    (["run", "--kernel", "{kernel}", "--modules", "{dir}"], "no modules.dep"),
    (["run", "--kernel", "{kernel}", "--modules", "/nonexistent/modules"], "does not exist"),
    (["run", "--kernel", "{kernel}", "--acpi", "maybe"], "'maybe' is not one of"),
    (["guest", "fetch-kernel", "ubuntu:24.04"], "only 'debian[:VERSION]'"),
    (["guest", "fetch-kernel", "debian:5.10"], "unknown Debian kernel version"),
])
def test_one_line_error(tmp_path, args, message):
    kernel = tmp_path / "vmlinuz-1.0"
    kernel.write_bytes(b"not a kernel")
    proc = _pyvmm(*[a.replace("{dir}", str(tmp_path)).replace("{kernel}", str(kernel)) for a in args])
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert len([line for line in proc.stderr.splitlines() if line.strip()]) <= 3, proc.stderr
