"""The CLI side of the stub: --gdb/--gdb-wait validation and 'pyvmm gdb' finding the kernel and its scripts."""

from __future__ import annotations

import json
import os
import shlex
import socket
import subprocess

import pytest

from pyvmm.gdbstub.launcher import find_kernel, query_exec_file
from pyvmm.gdbstub.server import GdbAddress
from vmm_cli import pyvmm_argv


def _pyvmm(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(pyvmm_argv(*args), capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)


def _one_line_error(proc: subprocess.CompletedProcess, message: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    assert message in proc.stderr, proc.stderr
    assert len([line for line in proc.stderr.splitlines() if line.strip()]) <= 3, proc.stderr


@pytest.mark.parametrize("args, message", [
    (["run", "--kernel", "/k", "--gdb", "serial:/dev/ttyS0"], "tcp::PORT"),
    (["run", "--kernel", "/k", "--gdb", "tcp::70000"], "tcp::PORT"),
    (["run", "--kernel", "/k", "--gdb-wait"], "--gdb-wait needs --gdb"),
    (["run", "--kernel", "/k", "--debug-kernel"], "drop --kernel"),
    (["gdb", "--connect", "unix:/nonexistent/gdb.sock"], "cannot connect to the gdb stub"),
    (["gdb", "--vmlinux", "/nonexistent/vmlinux"], "does not exist"),
    (["gdb", "--tree", "/nonexistent-tree"], "not a directory"),
])
def test_bad_gdb_options_are_one_line_errors(args, message):
    _one_line_error(_pyvmm(*args), message)


def test_gdb_port_in_use_is_a_one_line_error_before_the_guest_runs(tmp_path):
    """The stub binds before any vCPU runs; a taken port ends the VMM with one line."""
    from tinyguest import KVM_PRESENT

    if not KVM_PRESENT:
        pytest.skip("needs /dev/kvm to build the VM")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        from pyvmm.guestimage import build_default_guest

        try:
            image = build_default_guest(progress=None)
        except Exception as exc:  # no guest built on this machine
            pytest.skip(f"default guest unavailable: {exc}")
        proc = _pyvmm("run", "--kernel", str(image.vmlinux), "--gdb", f"tcp::{port}")
    _one_line_error(proc, "cannot listen for gdb on tcp:127.0.0.1:")


def test_pyvmm_gdb_uses_the_scripts_of_a_kept_build_tree(tmp_path):
    """A cache entry's vmlinux (hard link) finds vmlinux-gdb.py through kernel.json's source_dir."""
    tree = tmp_path / "src"
    tree.mkdir()
    (tree / "vmlinux-gdb.py").write_text("# scripts\n")
    entry = tmp_path / "debug-0123"
    entry.mkdir()
    (entry / "vmlinux").write_bytes(b"\x7fELF")
    (entry / "kernel.json").write_text(json.dumps({"source_dir": str(tree)}))
    kernel = find_kernel(GdbAddress.parse("tcp::1"), vmlinux=entry / "vmlinux")
    assert kernel.scripts_dir == tree
    proc = _pyvmm("gdb", "--vmlinux", str(entry / "vmlinux"), "--connect", "unix:/tmp/x.sock", "--print-command",
                  "--", "-batch", "-ex", "lx-dmesg")
    assert proc.returncode == 0, proc.stderr
    argv = shlex.split(proc.stdout)
    assert argv[-3:] == ["-batch", "-ex", "lx-dmesg"]
    assert f"source {tree}/vmlinux-gdb.py" in argv and f"file {entry}/vmlinux" in argv
    assert "target remote /tmp/x.sock" in argv
    assert argv.index("target remote /tmp/x.sock") < argv.index("-batch")


def test_tree_option_finds_the_trees_vmlinux(tmp_path):
    (tmp_path / "vmlinux").write_bytes(b"\x7fELF")
    (tmp_path / "vmlinux-gdb.py").write_text("")
    kernel = find_kernel(GdbAddress.parse("tcp::1"), tree=tmp_path)
    assert kernel.vmlinux == tmp_path / "vmlinux" and kernel.scripts_dir == tmp_path


def test_query_exec_file_from_a_stub(tmp_path):
    """'pyvmm gdb' asks the stub which kernel the VM booted (qXfer:exec-file)."""
    from tinyguest import KVM_PRESENT

    if not KVM_PRESENT:
        pytest.skip("needs /dev/kvm")
    from tinytarget import TinyTarget

    target = TinyTarget(tmp_path / "gdb.sock")
    try:
        assert query_exec_file(GdbAddress("unix", path=str(tmp_path / "gdb.sock"))) == "/tiny/guest"
        assert target.vcpus[0].pause_requested  # still held for the real debugger
    finally:
        target.close()
    assert not os.path.exists(tmp_path / "gdb.sock")
