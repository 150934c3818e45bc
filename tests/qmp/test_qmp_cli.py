"""``--qmp unix:PATH[,server,wait=off]``: QEMU's syntax, and a one-line error for anything else."""

from __future__ import annotations

import subprocess

import pytest

from pyvmm.config import QmpSpec
from pyvmm.errors import VmmError
from vmm_cli import pyvmm_argv


@pytest.mark.parametrize("text, path, wait", [
    ("unix:/tmp/q.sock", "/tmp/q.sock", False),
    ("unix:/tmp/q.sock,server", "/tmp/q.sock", True),          # QEMU: server waits by default
    ("unix:/tmp/q.sock,server=on", "/tmp/q.sock", True),
    ("unix:/tmp/q.sock,server,wait=off", "/tmp/q.sock", False),
    ("unix:/tmp/q.sock,server,nowait", "/tmp/q.sock", False),
    ("unix:/tmp/q.sock,wait=off,server", "/tmp/q.sock", False),
    ("unix:rel.sock,wait=on", "rel.sock", True),
])
def test_qmp_spec_parses_qemu_syntax(text, path, wait):
    assert QmpSpec.parse(text) == QmpSpec(path, wait)


@pytest.mark.parametrize("text, message", [
    ("tcp:localhost:4444", "only unix sockets"),
    ("/tmp/q.sock", "only unix sockets"),
    ("unix:", "only unix sockets"),
    ("unix:,server", "path is empty"),
    ("unix:/tmp/q,server=off", "cannot connect to a client"),
    ("unix:/tmp/q,wait=maybe", "wait=on|off"),
    ("unix:/tmp/q,reconnect=1", "wait=on|off"),
])
def test_bad_qmp_spec_is_a_vmm_error(text, message):
    with pytest.raises(VmmError, match=message):
        QmpSpec.parse(text)


@pytest.mark.parametrize("command", [["run", "--kernel", "/nonexistent"], ["vhost-user", "snd", "--socket", "/tmp/pyvmm-qmp-test.sock"]])
def test_bad_qmp_option_is_one_line_before_anything_starts(command):
    proc = subprocess.run(pyvmm_argv(*command, "--qmp", "tcp:localhost:4444"), capture_output=True, text=True,
                          timeout=60, stdin=subprocess.DEVNULL)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and "only unix sockets" in proc.stderr
    assert len([line for line in proc.stderr.splitlines() if line.strip()]) <= 3
