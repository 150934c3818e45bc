"""Run control of a VM for a debugger (all-stop): stop, resume, step, breakpoints, state.

One :class:`DebugTarget` owns the debugging state of a set of vCPUs: it installs itself
as their ``on_debug`` hook, programs ``KVM_SET_GUEST_DEBUG`` on each vCPU before it runs
again, and turns debug exits into :class:`StopEvent` values for the gdb session.

All-stop means: when one vCPU stops (a breakpoint, a watchpoint, a finished step) or the
user interrupts, every vCPU is paused (:meth:`pyvmm.vcpu.Vcpu.request_pause`) and only
then is the stop reported. The device event loop is never paused: device clocks run on
while the guest is stopped, as on real hardware, and the sound device counts the
resulting underruns like any other.

A stop that comes from elsewhere (QMP ``stop``: :meth:`interrupt`) is reported to gdb as
SIGINT, and gdb's continue first ends it (``on_resume``), as QEMU's gdb stub does.

Threads: ``_on_debug`` runs on a vCPU thread; everything else on the gdb session thread,
and register and memory access only while every vCPU is parked. A stop is signalled to
the session through ``stop_fd`` (a pipe it can ``select`` on).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from dataclasses import dataclass
from typing import Callable

from pyvmm.errors import GuestMemoryError
from pyvmm.kvm.constants import (KVM_GUESTDBG_BLOCKIRQ, KVM_GUESTDBG_ENABLE, KVM_GUESTDBG_INJECT_BP,
                                 KVM_GUESTDBG_INJECT_DB, KVM_GUESTDBG_SINGLESTEP, KVM_GUESTDBG_USE_HW_BP,
                                 KVM_GUESTDBG_USE_SW_BP)
from pyvmm.kvm.exits import VcpuExit

from .breakpoints import DebugRegisters, Kind, NoDebugRegister, SoftwareBreakpoints
from .probe import ASSUME_ALL, DebugSupport
from .registers import RegisterFile
from .vmem import GuestVirtualMemory

log = logging.getLogger(__name__)

SIGINT, SIGTRAP = int(signal.SIGINT), int(signal.SIGTRAP)
DR6_BS = 1 << 14
#: How long to wait for every vCPU to park after a stop was requested.
PAUSE_TIMEOUT = 10.0


class BreakpointError(Exception):
    """A breakpoint or watchpoint that cannot be set; the message says why, for the user."""


@dataclass(frozen=True)
class StopEvent:
    """Why the target stopped: ``vcpu`` index, the signal gdb sees, and the stop reason."""

    vcpu: int
    signal: int = SIGTRAP
    reason: str = ""       # "", "hwbreak", "swbreak", "watch", "rwatch", "awatch"
    address: int = 0       # the watched address, for watchpoint stops


class DebugTarget:
    def __init__(self, vcpus, memory, *, support: DebugSupport = ASSUME_ALL,
                 exec_file: str | None = None, on_kill: Callable[[], None] | None = None,
                 on_resume: Callable[[], object] | None = None, running: bool = True):
        self.vcpus = list(vcpus)
        self.memory = memory
        self.support = support
        self.exec_file = exec_file
        self.on_kill = on_kill
        self.on_resume = on_resume
        """Called before gdb lets vCPUs run again (continue, step, detach): the VM ends a
        machine-wide stop (QMP ``stop``) so that devices and clocks run with the vCPUs."""
        self._closed = False
        self.attached = False
        """True while a gdb session serves this target (set by the session): only then is a
        stop from elsewhere reported (:meth:`interrupt`)."""
        self.hw = DebugRegisters()
        self.sw = SoftwareBreakpoints()
        self._sw_as_hw: set[int] = set()   # Z0 requests served by a debug register
        self._warned: set[str] = set()
        self._lock = threading.Lock()
        self._running = running   # False: the vCPUs are (or will be) paused, as with --gdb-wait
        self._pending: StopEvent | None = None
        self._stepping: set[int] = set()
        self._control = [0] * len(self.vcpus)
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.last_stop = StopEvent(0, SIGTRAP)
        for vcpu in self.vcpus:
            vcpu.on_debug = self._on_debug

    def close(self) -> None:
        with self._lock:
            self._closed = True
        for vcpu in self.vcpus:
            if vcpu.on_debug == self._on_debug:
                vcpu.on_debug = None
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass

    @property
    def stop_fd(self) -> int:
        """Readable when a vCPU stopped on its own (breakpoint, step): call :meth:`take_stop`."""
        return self._wake_r

    @property
    def running(self) -> bool:
        return self._running

    # -- stopping ---------------------------------------------------------------------

    def _pause_all(self) -> None:
        for vcpu in self.vcpus:
            vcpu.request_pause()
        for vcpu in self.vcpus:
            if not vcpu.wait_paused(PAUSE_TIMEOUT):
                log.warning("gdb: vcpu%d did not stop within %g s", vcpu.id, PAUSE_TIMEOUT)

    def halt(self, signum: int = SIGINT, vcpu: int = 0) -> StopEvent:
        """Stop every vCPU now (Ctrl-C, a debugger attaching); a breakpoint hit meanwhile wins."""
        with self._lock:
            self._running = False
        self._pause_all()
        self._drain()
        with self._lock:
            event, self._pending = self._pending or StopEvent(vcpu, signum), None
        self.last_stop = event
        return event

    def interrupt(self, signum: int = SIGINT, vcpu: int = 0) -> None:
        """The VM was stopped by someone else (QMP ``stop``): if gdb is waiting for a stop,
        report this one (QEMU reports SIGINT). Any thread; returns at once."""
        with self._lock:
            if self._closed or not self.attached or not self._running or self._pending is not None:
                return
            self._pending = StopEvent(vcpu, signum)
            try:
                os.write(self._wake_w, b"!")
            except OSError:
                pass

    def take_stop(self) -> StopEvent | None:
        """After ``stop_fd`` became readable: wait for every vCPU to park; the stop to report."""
        self._drain()
        with self._lock:
            if self._pending is None:
                return None
        self._pause_all()
        with self._lock:
            event, self._pending = self._pending, None
            self._running = False
        if event is not None:
            self.last_stop = event
        return event

    def _drain(self) -> None:
        try:
            while os.read(self._wake_r, 64):
                pass
        except (BlockingIOError, OSError):
            pass

    # -- resuming ---------------------------------------------------------------------

    def resume(self, actions: dict[int, str]) -> None:
        """Run vCPUs: ``actions`` maps a vCPU index to "c" (continue) or "s" (single-step).

        vCPUs without an action stay stopped (gdb's vCont semantics).
        """
        if "s" in actions.values() and not self.support.single_step:
            message = "single-step does not work on this KVM (the probe's step never trapped)"
            self._warn_once("step", message)
            raise BreakpointError(message)  # refuse rather than run on while gdb waits for the step
        with self._lock:
            self._pending = None
            self._stepping = {i for i, action in actions.items() if action == "s"}
            self._running = True
        self._end_machine_stop()
        for index, vcpu in enumerate(self.vcpus):
            self._program(index)
        for index in actions:
            self.vcpus[index].resume()

    def _program(self, index: int) -> None:
        control = 0
        if index in self._stepping:
            control |= KVM_GUESTDBG_ENABLE | KVM_GUESTDBG_SINGLESTEP
            if self.support.block_irq_on_step:
                control |= KVM_GUESTDBG_BLOCKIRQ  # a step executes the next instruction, not an IRQ handler
        if self.hw:
            control |= KVM_GUESTDBG_ENABLE | KVM_GUESTDBG_USE_HW_BP
        if self.sw:
            control |= KVM_GUESTDBG_ENABLE | KVM_GUESTDBG_USE_SW_BP
        self._control[index] = control
        self.vcpus[index].fd.set_guest_debug(control, self.hw.debugreg() if self.hw else ())

    def detach(self, resume: bool = True) -> None:
        """Remove every breakpoint, stop debugging, let the guest run on (unless ``resume`` is False)."""
        for address in list(self.sw.saved):
            self._remove_sw(address)
        self.hw.clear()
        self._sw_as_hw.clear()
        held = [vcpu.pause_requested for vcpu in self.vcpus]
        self._pause_all()  # KVM_SET_GUEST_DEBUG needs the vCPU out of KVM_RUN
        self._drain()
        with self._lock:
            self._stepping.clear()
            self._pending = None
            self._running = resume
        if resume:
            self._end_machine_stop()
        for index, vcpu in enumerate(self.vcpus):
            self._program(index)
            if resume or not held[index]:
                vcpu.resume()

    def _end_machine_stop(self) -> None:
        if self.on_resume is not None:
            try:
                self.on_resume()
            except Exception:
                log.exception("gdb: ending the VM's stop failed")

    # -- debug exits (vCPU thread) ------------------------------------------------------

    def _on_debug(self, vcpu, exit_: VcpuExit) -> bool:
        index = self._index_of(vcpu)
        with self._lock:
            event = self._classify(index, exit_)
            if event is None:
                # Not ours (the guest's own int3 or debug trap): deliver it to the guest.
                inject = KVM_GUESTDBG_INJECT_BP if exit_.debug_exception == 3 else KVM_GUESTDBG_INJECT_DB
                vcpu.fd.set_guest_debug(self._control[index] | inject, self.hw.debugreg() if self.hw else ())
                return True
            if self._running and self._pending is None:
                self._pending = event
                for other in self.vcpus:
                    other.request_pause()
                try:
                    os.write(self._wake_w, b"!")
                except OSError:
                    pass
            else:
                # Another vCPU's stop is being reported: park with the others. An execution
                # breakpoint re-triggers when this vCPU runs again; a step or watchpoint is dropped.
                vcpu.request_pause()
        return True

    def _index_of(self, vcpu) -> int:
        for index, candidate in enumerate(self.vcpus):
            if candidate is vcpu:
                return index
        return 0

    def _classify(self, index: int, exit_: VcpuExit) -> StopEvent | None:
        if exit_.debug_exception == 1:
            for slot in self.hw.hits(exit_.dr6):
                if slot.kind is Kind.EXEC:
                    reason = "swbreak" if slot.address in self._sw_as_hw else "hwbreak"
                    return StopEvent(index, SIGTRAP, reason)
                return StopEvent(index, SIGTRAP, slot.kind.stop_reason, slot.request[1])
            if index in self._stepping:
                return StopEvent(index, SIGTRAP)
            return None
        if exit_.debug_exception == 3:
            if exit_.debug_pc in self.sw:
                return StopEvent(index, SIGTRAP, "swbreak")
            return None
        return StopEvent(index, SIGTRAP)

    # -- state of a stopped vCPU --------------------------------------------------------

    def registers(self, index: int) -> RegisterFile:
        return RegisterFile(self.vcpus[index].fd)

    def vmem(self, index: int) -> GuestVirtualMemory:
        return GuestVirtualMemory(self.memory, self.vcpus[index].fd.translate)

    def read_memory(self, index: int, address: int, length: int) -> bytes:
        """Guest-virtual memory as gdb should see it (our int3 bytes hidden)."""
        return self.sw.shadow(address, self.vmem(index).read(address, length))

    def write_memory(self, index: int, address: int, data: bytes) -> None:
        vmem = self.vmem(index)
        vmem.write(address, data)
        for bp in self.sw.saved:  # gdb rewrote bytes under one of our int3s: keep the int3, track the new byte
            if address <= bp < address + len(data):
                self.sw.saved[bp] = data[bp - address]
                vmem.write(bp, bytes([SoftwareBreakpoints.INT3]))

    # -- breakpoints ----------------------------------------------------------------------

    def insert_breakpoint(self, kind: int, address: int, length: int, index: int = 0) -> None:
        """gdb's Z packet: kind 0 software, 1 hardware, 2 write, 3 read, 4 access watchpoint."""
        if kind == 0:
            if self.support.sw_breakpoints:
                self._insert_sw(address, index)
                return
            if not self.support.hw_breakpoints:
                raise BreakpointError("neither software nor hardware breakpoints work on this KVM")
            self._warn_once("sw", "software breakpoints (int3) do not work on this KVM (the probe's int3 "
                                  "was not intercepted); 'break' uses one of the 4 hardware debug registers")
            try:
                self.hw.insert(Kind.EXEC, address)
            except NoDebugRegister:
                raise BreakpointError("no software breakpoints on this KVM and all 4 hardware debug "
                                      "registers are in use") from None
            self._sw_as_hw.add(address)
            return
        if kind == 1:
            if not self.support.hw_breakpoints:
                raise BreakpointError("hardware breakpoints do not work on this KVM")
            try:
                self.hw.insert(Kind.EXEC, address)
            except NoDebugRegister:
                raise BreakpointError("all 4 hardware debug registers are in use") from None
            return
        if kind in (2, 3, 4):
            if not self.support.watchpoints:
                message = ("hardware watchpoints do not trigger on this KVM (the probe's write watchpoint "
                           "in 64-bit ring-0 code never fired)")
                self._warn_once("watch", message)
                raise BreakpointError(message)
            try:
                self.hw.insert(Kind(kind), address, length)
            except NoDebugRegister as exc:
                raise BreakpointError(f"watchpoint of {length} bytes at {address:#x}: {exc}") from None
            except ValueError as exc:
                raise BreakpointError(str(exc)) from None
            return
        raise BreakpointError(f"unknown breakpoint type {kind}")

    def remove_breakpoint(self, kind: int, address: int, length: int, index: int = 0) -> bool:
        if kind == 0:
            if address in self._sw_as_hw:
                self._sw_as_hw.discard(address)
                return self.hw.remove(Kind.EXEC, address)
            return self._remove_sw(address, index)
        if kind == 1:
            return self.hw.remove(Kind.EXEC, address)
        if kind in (2, 3, 4):
            return self.hw.remove(Kind(kind), address, length)
        return False

    def _insert_sw(self, address: int, index: int) -> None:
        if address in self.sw:
            return
        vmem = self.vmem(index)
        try:
            original = vmem.read(address, 1)
            vmem.write(address, bytes([SoftwareBreakpoints.INT3]))
        except GuestMemoryError as exc:
            raise BreakpointError(f"cannot write a breakpoint at {address:#x}: {exc}") from None
        self.sw.saved[address] = original[0]

    def _remove_sw(self, address: int, index: int = 0) -> bool:
        original = self.sw.saved.pop(address, None)
        if original is None:
            return False
        try:
            self.vmem(index).write(address, bytes([original]))
        except GuestMemoryError as exc:
            log.warning("gdb: could not restore the byte under the breakpoint at %#x: %s", address, exc)
        return True

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning("gdb: %s", message)
