"""Tiny hand-assembled x86 guests for exercising the KVM bindings and the vCPU loop.

A :class:`TinyVm` is a VM with a few MiB of RAM at guest-physical 0, a port bus and an MMIO
bus, and helpers that put a vCPU straight into real, 32-bit protected or 64-bit long mode
through ``KVM_SET_SREGS``. Guest code is machine code written as bytes with the assembly
in comments (checked once with GNU as/objdump; no assembler is needed to run the tests).

Layout used by every tiny guest::

    0x0000  real-mode IVT          0x0500  GDT (null, code64, data, code32)   0x0600  GDT pointer
    0x1000  guest code             0x3000  data scratch                        0x8000  stack top
    0x9000  PML4, 0xA000 PDPT, 0xB000 PD (identity map of the first 1 GiB with 2 MiB pages)
"""

from __future__ import annotations

import os
import signal
import struct
import threading

import pytest

from pyvmm.bus import Bus
from pyvmm.kvm import ExitReason, Kvm, VcpuExit, VcpuFd
from pyvmm.memory import GuestMemory
from pyvmm.vcpu import KICK_SIGNAL, install_kick_handler

KVM_PRESENT = os.path.exists("/dev/kvm")
requires_kvm = pytest.mark.skipif(not KVM_PRESENT, reason="/dev/kvm is absent: this test needs KVM")
kvm_test = [pytest.mark.kvm, requires_kvm]
ON_KVM_PVM = os.path.isdir("/sys/module/kvm_pvm")
"""kvm_pvm (see platform.md) differs from hardware KVM in a few documented ways the tests allow for."""
ON_KVM_AMD = os.path.isdir("/sys/module/kvm_amd")
"""kvm_amd (the real-KVM tier, scripts/real-kvm) differs from kvm_intel in a few ways too (triple fault)."""

RAM_SIZE = 4 << 20
GDT, GDT_PTR, CODE, DATA, STACK_TOP = 0x500, 0x600, 0x1000, 0x3000, 0x8000
PML4, PDPT, PD = 0x9000, 0xA000, 0xB000
MMIO_BASE = 0x3000_0000  # above RAM, inside the 1 GiB identity map: every access exits (or hits an ioeventfd)

SEL_CODE64, SEL_DATA, SEL_CODE32 = 0x08, 0x10, 0x18
_GDT_ENTRIES = [0, 0x00AF9B000000FFFF, 0x00CF93000000FFFF, 0x00CF9B000000FFFF]

CR0_PE, CR0_ET, CR0_NE, CR0_PG = 1, 1 << 4, 1 << 5, 1 << 31
CR4_PAE = 1 << 5
EFER_LME, EFER_LMA = 1 << 8, 1 << 10


def u16(v: int) -> bytes:
    return struct.pack("<H", v)


def u32(v: int) -> bytes:
    return struct.pack("<I", v)


def u64(v: int) -> bytes:
    return struct.pack("<Q", v)


class Recorder:
    """A bus device logging writes as ``(offset, bytes)`` and answering reads from ``replies``."""

    def __init__(self, replies: dict[int, bytes] | None = None):
        self.writes: list[tuple[int, bytes]] = []
        self.reads: list[tuple[int, int]] = []
        self.replies = replies or {}
        self._cond = threading.Condition()

    def read(self, offset: int, size: int) -> bytes:
        with self._cond:
            self.reads.append((offset, size))
        return (self.replies.get(offset, b"") + b"\0" * size)[:size]

    def write(self, offset: int, data: bytes) -> None:
        with self._cond:
            self.writes.append((offset, bytes(data)))
            self._cond.notify_all()

    def values(self, offset: int = 0) -> list[int]:
        with self._cond:
            return [int.from_bytes(d, "little") for o, d in self.writes if o == offset]

    def wait_for_value(self, value: int, offset: int = 0, timeout: float = 20.0) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: value in [int.from_bytes(d, "little")
                                                         for o, d in self.writes if o == offset], timeout)


class TinyVm:
    """A VM with RAM at 0, buses, and vCPUs ready to be put in a CPU mode."""

    def __init__(self, *, vcpus: int = 1, irqchip: bool = False, ram_size: int = RAM_SIZE):
        install_kick_handler()
        self.kvm = Kvm()
        self.vm = self.kvm.create_vm()
        if irqchip:
            self.vm.set_tss_addr(0xFFFB_D000)
            self.vm.create_irqchip()
        self.memory = GuestMemory.create([(0, ram_size)])
        region = self.memory.regions[0]
        self.vm.set_user_memory_region(0, region.guest_addr, region.size, region.host_addr)
        self.vcpus: list[VcpuFd] = [self.vm.create_vcpu(i) for i in range(vcpus)]
        cpuid = self.kvm.get_supported_cpuid()
        for vcpu in self.vcpus:
            vcpu.set_cpuid(cpuid)  # without it KVM refuses EFER.LME (no CPUID.LM) and more
        self.pio = Bus("pio")
        self.mmio = Bus("mmio")
        self._write_tables()

    def close(self) -> None:
        for vcpu in self.vcpus:
            vcpu.close()
        self.vm.close()
        self.kvm.close()
        self.memory.close()

    def __enter__(self) -> TinyVm:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def load(self, addr: int, code: bytes) -> None:
        self.memory.write(addr, code)

    def _write_tables(self) -> None:
        self.memory.write(GDT, b"".join(u64(e) for e in _GDT_ENTRIES))
        self.memory.write(GDT_PTR, u16(len(_GDT_ENTRIES) * 8 - 1) + u32(GDT))
        self.memory.write_u64(PML4, PDPT | 0x3)
        self.memory.write_u64(PDPT, PD | 0x3)
        for i in range(512):  # 2 MiB pages: present, writable, PS
            self.memory.write_u64(PD + 8 * i, (i << 21) | 0x83)

    # -- CPU modes set through KVM_SET_SREGS ---------------------------------------------------

    def real_mode(self, vcpu: VcpuFd, entry: int = CODE, rsp: int = STACK_TOP) -> None:
        sregs = vcpu.get_sregs()
        for seg in (sregs.cs, sregs.ds, sregs.es, sregs.fs, sregs.gs, sregs.ss):
            seg.base, seg.selector = 0, 0
        vcpu.set_sregs(sregs)
        vcpu.set_regs({"rip": entry, "rsp": rsp, "rflags": 0x2})

    def _flat_segments(self, sregs, code_sel: int, long_mode: bool) -> None:
        for name in ("ds", "es", "fs", "gs", "ss"):
            seg = getattr(sregs, name)
            seg.base, seg.limit, seg.selector, seg.type = 0, 0xFFFF_FFFF, SEL_DATA, 3
            seg.present, seg.dpl, seg.db, seg.s, seg.l, seg.g = 1, 0, 1, 1, 0, 1
        cs = sregs.cs
        cs.base, cs.limit, cs.selector, cs.type = 0, 0xFFFF_FFFF, code_sel, 11
        cs.present, cs.dpl, cs.s, cs.g = 1, 0, 1, 1
        cs.l, cs.db = (1, 0) if long_mode else (0, 1)
        sregs.gdt.base, sregs.gdt.limit = GDT, len(_GDT_ENTRIES) * 8 - 1

    def protected_mode(self, vcpu: VcpuFd, entry: int = CODE, rsp: int = STACK_TOP) -> None:
        """Flat 32-bit protected mode, paging off."""
        sregs = vcpu.get_sregs()
        self._flat_segments(sregs, SEL_CODE32, long_mode=False)
        sregs.cr0 = CR0_PE | CR0_ET | CR0_NE
        vcpu.set_sregs(sregs)
        vcpu.set_regs({"rip": entry, "rsp": rsp, "rflags": 0x2})

    def long_mode(self, vcpu: VcpuFd, entry: int = CODE, rsp: int = STACK_TOP) -> None:
        """64-bit mode with the identity map of the first 1 GiB."""
        sregs = vcpu.get_sregs()
        self._flat_segments(sregs, SEL_CODE64, long_mode=True)
        sregs.cr3 = PML4
        sregs.cr4 = CR4_PAE
        sregs.cr0 = CR0_PE | CR0_ET | CR0_NE | CR0_PG
        sregs.efer = EFER_LME | EFER_LMA
        vcpu.set_sregs(sregs)
        vcpu.set_regs({"rip": entry, "rsp": rsp, "rflags": 0x2})

    # -- running without a thread -------------------------------------------------------------

    def run_until_stop(self, vcpu: VcpuFd, timeout: float = 20.0, max_exits: int = 100_000) -> tuple[list[VcpuExit], VcpuExit]:
        """Run, answering PIO/MMIO through the buses, until an exit that is neither.

        Returns ``(io_and_mmio_exits, final_exit)``. A watchdog kicks the vCPU after ``timeout``
        seconds and the call raises TimeoutError, so a wedged guest cannot hang the test run.
        """
        seen: list[VcpuExit] = []
        me = threading.get_ident()
        expired = threading.Event()

        def kick() -> None:
            expired.set()
            vcpu.immediate_exit = True
            signal.pthread_kill(me, KICK_SIGNAL)

        watchdog = threading.Timer(timeout, kick)
        watchdog.start()
        try:
            for _ in range(max_exits):
                reason = vcpu.run()
                if reason == ExitReason.INTR and expired.is_set():
                    vcpu.immediate_exit = False
                    raise TimeoutError(f"guest still running after {timeout} s; exits so far: {seen[-5:]}")
                exit_ = vcpu.exit()
                if reason == ExitReason.IO:
                    seen.append(exit_)
                    if exit_.is_write:
                        for i in range(exit_.count):
                            self.pio.write(exit_.port, exit_.data[i * exit_.size:(i + 1) * exit_.size])
                    else:
                        vcpu.complete_io_in(b"".join(self.pio.read(exit_.port, exit_.size) for _ in range(exit_.count)))
                elif reason == ExitReason.MMIO:
                    seen.append(exit_)
                    if exit_.is_write:
                        self.mmio.write(exit_.addr, exit_.data)
                    else:
                        vcpu.complete_mmio_read(self.mmio.read(exit_.addr, exit_.size))
                elif reason != ExitReason.INTR:
                    return seen, exit_
            raise AssertionError(f"no terminal exit within {max_exits} exits")
        finally:
            watchdog.cancel()
            if expired.is_set():
                vcpu.immediate_exit = False

