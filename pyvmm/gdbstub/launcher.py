"""``pyvmm gdb``: Debian's gdb with the matching vmlinux and the kernel's gdb scripts, connected.

Which vmlinux: ``--vmlinux FILE``, else the build in ``--tree PATH``, else the one the running
VM booted (the stub answers ``qXfer:exec-file:read``; asking does not start a VM held by
``--gdb-wait``). The kernel's gdb scripts (``vmlinux-gdb.py``: ``lx-dmesg``, ``lx-symbols``,
``lx-ps``, ...) are loaded from the build tree next to that vmlinux, or from the tree named
in a pyvmm cache entry's ``kernel.json`` (the debug default guest keeps its tree).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
from dataclasses import dataclass
from pathlib import Path

from pyvmm.errors import VmmError

from . import packets as rsp
from .server import GdbAddress

GDB_SCRIPTS = "vmlinux-gdb.py"


@dataclass(frozen=True)
class KernelForGdb:
    vmlinux: Path
    scripts_dir: Path | None  # the directory holding vmlinux-gdb.py


def query_exec_file(address: GdbAddress, timeout: float = 5.0) -> str | None:
    """Ask a pyvmm gdb stub which kernel its VM booted (None if it does not say)."""
    try:
        if address.kind == "unix":
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(timeout)
            sock.connect(address.path)
        else:
            sock = socket.create_connection((address.host, address.port), timeout=timeout)
    except OSError as exc:
        raise VmmError(f"cannot connect to the gdb stub at {address}: {exc.strerror or exc} "
                       f"(start the VM with 'pyvmm run --gdb {address}')") from None
    with sock:
        request = b"qXfer:exec-file:read::0,fff"
        sock.sendall(rsp.frame(request))
        data = b""
        try:
            while not re.search(rb"\$([^#]*)#[0-9a-fA-F]{2}", data):
                chunk = sock.recv(4096)
                if not chunk:
                    return None
                data += chunk
                if len(data) > 2 * rsp.MAX_PACKET:
                    return None
            sock.sendall(b"+")
        except OSError:
            return None
    payload = rsp.unescape(re.search(rb"\$([^#]*)#", data).group(1))
    if payload[:1] not in (b"l", b"m") or len(payload) < 2:
        return None
    return os.fsdecode(payload[1:])


def _scripts_next_to(vmlinux: Path) -> Path | None:
    for candidate in (vmlinux.parent, vmlinux.resolve().parent):
        if (candidate / GDB_SCRIPTS).is_file():
            return candidate
    info = vmlinux.parent / "kernel.json"  # a pyvmm cache entry of a kept build tree
    if info.is_file():
        try:
            source_dir = json.loads(info.read_text()).get("source_dir")
        except (OSError, ValueError):
            source_dir = None
        if source_dir and (Path(source_dir) / GDB_SCRIPTS).is_file():
            return Path(source_dir)
    return None


def tree_vmlinux(tree: Path) -> Path:
    """The vmlinux built from a kernel tree (in the tree, or in its pyvmm out-of-tree build directory)."""
    tree = tree.expanduser()
    if not tree.is_dir():
        raise VmmError(f"--tree {tree}: not a directory")
    candidates = [tree / "vmlinux"]
    try:  # 'pyvmm kernel build' keeps its out-of-tree builds in the cache (a debug build preferred)
        from pyvmm.guestimage.kernel_tree import find_tree_build
    except ImportError:
        find_tree_build = None
    if find_tree_build is not None:
        build = find_tree_build(tree, debug=True) or find_tree_build(tree)
        if build is not None:
            candidates.insert(0, build.vmlinux)
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise VmmError(f"--tree {tree}: no vmlinux built there (build it first, e.g. 'pyvmm kernel build --tree {tree}')")


def find_kernel(address: GdbAddress, *, vmlinux: Path | None = None, tree: Path | None = None) -> KernelForGdb:
    if vmlinux is None and tree is not None:
        vmlinux = tree_vmlinux(tree)
    if vmlinux is None:
        booted = query_exec_file(address)
        if booted is None:
            raise VmmError(f"the gdb stub at {address} does not say which kernel it runs: give --vmlinux or --tree")
        vmlinux = Path(booted)
    if not vmlinux.is_file():
        raise VmmError(f"vmlinux {vmlinux} does not exist")
    return KernelForGdb(vmlinux, _scripts_next_to(vmlinux))


def gdb_argv(kernel: KernelForGdb, address: GdbAddress, extra: list[str], gdb: str | None = None) -> list[str]:
    """The command line: load the scripts, the vmlinux, connect; then the user's own arguments."""
    gdb = gdb or shutil.which("gdb")
    if gdb is None:
        raise VmmError("gdb is not installed (Debian: apt-get install gdb; ./scripts/setup does it)")
    argv = [gdb, "-q"]
    if kernel.scripts_dir is not None:
        argv += ["-iex", f"add-auto-load-safe-path {kernel.scripts_dir}"]
    argv += ["-ex", "set pagination off", "-ex", f"file {kernel.vmlinux}"]
    if kernel.scripts_dir is not None:
        argv += ["-ex", f"source {kernel.scripts_dir / GDB_SCRIPTS}"]
    remote = address.path if address.kind == "unix" else f"{address.host}:{address.port}"
    argv += ["-ex", f"target remote {remote}"]
    return argv + list(extra)
