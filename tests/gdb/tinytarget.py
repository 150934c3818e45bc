"""A tiny 64-bit guest served by the gdb stub, for driving the stub with Debian's real gdb in seconds.

Guest program at CODE (64-bit ring 0, identity-mapped)::

    0x1000  mov rax, 0x1122334455667788
    0x100a  mov [0x3000], rax
    0x1012  loop: inc qword [0x3008]
    0x101a  nop
    0x101b  jmp loop
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "kvm"))

from pyvmm.gdbstub import DebugTarget, GdbAddress, GdbServer, probe_debug_support  # noqa: E402
from pyvmm.vcpu import Vcpu  # noqa: E402
from tinyguest import CODE, DATA, TinyVm  # noqa: E402

GDB = shutil.which("gdb")
requires_gdb = pytest.mark.skipif(GDB is None, reason="Debian's gdb is not installed (scripts/setup installs it)")

PROGRAM = (bytes.fromhex("48b8") + (0x1122334455667788).to_bytes(8, "little")
           + bytes.fromhex("48890425") + DATA.to_bytes(4, "little")
           + bytes.fromhex("48ff0425") + (DATA + 8).to_bytes(4, "little")
           + bytes.fromhex("90 ebf5"))
STORE, LOOP, NOP, JMP = 0x100A, 0x1012, 0x101A, 0x101B
MARKER = 0x1122334455667788
#: The first 1 GiB is also mapped here (like a kernel's text mapping), through a second PDPT.
HIGH = 0xFFFF_FFFF_8000_0000
_PML4, _PD, _HIGH_PDPT = 0x9000, 0xB000, 0xC000


class TinyTarget:
    """TinyVm + a Vcpu thread + the gdb stub on a unix socket; the vCPU waits for gdb (like --gdb-wait)."""

    def __init__(self, socket_path: Path, *, vcpus: int = 1):
        self.vm = TinyVm(vcpus=vcpus)
        self.vm.load(CODE, PROGRAM)
        self.vm.memory.write_u64(_PML4 + 8 * 511, _HIGH_PDPT | 3)
        self.vm.memory.write_u64(_HIGH_PDPT + 8 * 510, _PD | 3)
        for fd in self.vm.vcpus:
            self.vm.long_mode(fd)
        self.vcpus = [Vcpu(fd, self.vm.pio, self.vm.mmio, memory=self.vm.memory) for fd in self.vm.vcpus]
        self.support = probe_debug_support(self.vm.kvm)
        self.killed = False
        self.target = DebugTarget(self.vcpus, self.vm.memory, support=self.support, exec_file="/tiny/guest",
                                  on_kill=self._kill, running=False)
        for vcpu in self.vcpus:
            vcpu.request_pause()
        self.server = GdbServer(self.target, GdbAddress("unix", path=str(socket_path))).start()
        self.socket_path = socket_path
        for vcpu in self.vcpus:
            vcpu.start()

    def _kill(self) -> None:
        self.killed = True
        for vcpu in self.vcpus:
            vcpu.request_stop()

    def counter(self) -> int:
        return self.vm.memory.read_u64(DATA + 8)

    def close(self) -> None:
        self.server.close(0)
        for vcpu in self.vcpus:
            vcpu.stop()
        self.vm.close()


def run_gdb(socket_path: Path, commands: list[str], *, timeout: float = 120, interrupt_when=None,
            extra: list[str] = ()) -> subprocess.CompletedProcess:
    """Debian's gdb in batch mode: connect, run ``commands``; SIGINT it (Ctrl-C) once ``interrupt_when()`` is true."""
    argv = [GDB, "-nx", "-batch", "-ex", "set pagination off", "-ex", "set confirm off",
            *extra, "-ex", f"target remote {socket_path}"]
    for command in commands:
        argv += ["-ex", command]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    if interrupt_when is not None:
        deadline = time.monotonic() + timeout
        while not interrupt_when() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGINT)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        raise AssertionError(f"gdb did not finish within {timeout} s:\n{out}") from None
    return subprocess.CompletedProcess(argv, proc.returncode, out, "")
