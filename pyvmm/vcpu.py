"""The vCPU run loop: one thread per vCPU calling ``KVM_RUN`` and dispatching each exit.

PIO exits go to the port-I/O :class:`~pyvmm.bus.Bus`, MMIO exits to the MMIO bus; every
other exit either is handled here or ends the loop with a :class:`VcpuStop` saying why
(guest halted, triple fault, reset/power-off request, emulation failure with the guest RIP
and instruction bytes, ...). The VM waits on :meth:`Vcpu.wait` or passes ``on_stop``.

Stopping from another thread: :meth:`Vcpu.request_stop` sets ``kvm_run.immediate_exit``
and sends :data:`KICK_SIGNAL` to the vCPU thread, so a thread blocked in ``KVM_RUN``
returns with EINTR and a thread about to enter it returns at once (no lost wake-up). The
signal needs a (no-op) Python handler, installed from the main thread by
:func:`install_kick_handler` (``Vcpu.start`` does it when called on the main thread).

Pausing (a debugger's stop, a monitor's ``stop``): :meth:`Vcpu.pause` kicks the thread the
same way and parks it outside ``KVM_RUN`` until :meth:`Vcpu.resume`; while parked, any thread
may read and write the vCPU's registers (the kernel's vCPU mutex is free). Pause requests
made before :meth:`Vcpu.start` take effect before the first ``KVM_RUN`` (QEMU's ``-S``).
The device event loop is not paused: device clocks keep running, like real hardware.

Usage::

    vcpu = Vcpu(vm.create_vcpu(0), pio_bus, mmio_bus, memory=guest_memory)
    vcpu.start()
    stop = vcpu.wait(timeout=10)      # VcpuStop or None
    vcpu.pause(); vcpu.resume()       # park outside KVM_RUN / run on
    vcpu.stop()                       # request + join
    vcpu.exit_counts                  # {"IO": 1234, "MMIO": 56, ...}
"""

from __future__ import annotations

import enum
import logging
import signal
import struct
import threading
from dataclasses import dataclass
from typing import Callable

from pyvmm.bus import Bus
from pyvmm.errors import GuestMemoryError
from pyvmm.kvm.constants import KVM_EXIT_IO_OUT, ExitReason, SystemEvent
from pyvmm.kvm.exits import VcpuExit
from pyvmm.kvm.ioctls import KvmError, raw_ioctl
from pyvmm.kvm.structs import KVM_RUN_EXIT_OFFSET, kvm_run
from pyvmm.kvm.vcpu_fd import VcpuFd
from pyvmm.log import TRACE

log = logging.getLogger(__name__)

KICK_SIGNAL = signal.SIGUSR1

_IO_EXIT = struct.Struct("<BBHIQ")  # direction, size, port, count, data_offset
_MMIO_EXIT = struct.Struct("<Q8sIB")  # phys_addr, data, len, is_write
_MMIO_DATA_OFFSET = KVM_RUN_EXIT_OFFSET + 8
_EXIT_REASON = struct.Struct("<I")
_EXIT_REASON_OFFSET = kvm_run.exit_reason.offset
_MAX_REASON = 64


def _no_op(signum, frame) -> None:
    pass


def install_kick_handler() -> None:
    """Install the no-op handler for :data:`KICK_SIGNAL` (main thread only; idempotent).

    Without a handler the signal's default action would terminate the process.
    """
    if signal.getsignal(KICK_SIGNAL) in (signal.SIG_DFL, signal.SIG_IGN, None):
        signal.signal(KICK_SIGNAL, _no_op)


class StopKind(enum.Enum):
    REQUESTED = "stop requested by the VMM"
    HALT = "guest executed HLT"
    SHUTDOWN = "guest triple fault (KVM_EXIT_SHUTDOWN)"
    RESET = "guest requested a reset"
    POWEROFF = "guest requested power-off"
    CRASH = "guest reported a crash"
    SYSTEM_EVENT = "guest system event"
    INTERNAL_ERROR = "KVM internal error"
    FAIL_ENTRY = "KVM could not enter the guest"
    DEBUG = "debug exit"
    ERROR = "VMM error"


@dataclass(frozen=True)
class VcpuStop:
    """Why a vCPU loop ended. ``message`` is one line fit for the user."""

    kind: StopKind
    message: str
    vcpu_id: int
    exit: VcpuExit | None = None
    rip: int | None = None
    insn_bytes: bytes = b""
    error: BaseException | None = None

    @property
    def is_error(self) -> bool:
        return self.kind in (StopKind.INTERNAL_ERROR, StopKind.FAIL_ENTRY, StopKind.ERROR, StopKind.CRASH)


@dataclass(frozen=True)
class GuestPosition:
    """Where the guest was: RIP, the linear/physical address of the code there and its bytes."""

    rip: int
    mode: str
    linear: int
    physical: int | None
    code: bytes

    @property
    def is_reset_vector(self) -> bool:
        """Real mode at CS:IP F000:FFF0 (CS base 0xFFFF0000): the state INIT or RESET leaves."""
        return self.mode == "real" and self.rip == 0xFFF0 and self.linear == 0xFFFF_FFF0

    def describe(self) -> str:
        text = f"RIP {self.rip:#x} ({self.mode} mode"
        if self.physical is not None and self.physical != self.linear:
            text += f", linear {self.linear:#x} -> physical {self.physical:#x}"
        text += ")"
        if self.code:
            text += f" code: {self.code.hex(' ')}"
        return text


def guest_position(fd: VcpuFd, memory=None, length: int = 15) -> GuestPosition:
    """Read RIP and, with ``memory`` (a GuestMemory), the instruction bytes at RIP through the guest's page tables."""
    regs = fd.get_regs()
    sregs = fd.get_sregs()
    long_mode = bool(sregs.efer & (1 << 10)) and sregs.cs.l
    if not sregs.cr0 & 1:
        mode = "real"
    elif long_mode:
        mode = "64-bit"
    else:
        mode = "protected"
    linear = regs.rip if long_mode else (sregs.cs.base + regs.rip) & 0xFFFF_FFFF
    physical: int | None = linear
    code = b""
    if sregs.cr0 & (1 << 31):
        try:
            physical = fd.translate(linear)
        except KvmError:
            physical = None
    if memory is not None and physical is not None:
        page_left = 0x1000 - (physical & 0xFFF)
        try:
            code = memory.read(physical, min(length, page_left))
            if len(code) < length and sregs.cr0 & (1 << 31):
                next_physical = fd.translate(linear + len(code))
                if next_physical is not None:
                    code += memory.read(next_physical, length - len(code))
        except (GuestMemoryError, KvmError):
            pass
    return GuestPosition(regs.rip, mode, linear, physical, code)


class Vcpu:
    """Runs one :class:`VcpuFd` in its own thread and dispatches its exits.

    Hooks (called on the vCPU thread):
      * ``on_stop(vcpu, stop)`` once the loop has ended;
      * ``on_hlt(vcpu) -> bool``: a HLT exit (only without the in-kernel irqchip); return True to
        keep running. Default: stop with ``StopKind.HALT``;
      * ``on_debug(vcpu, exit) -> bool``: a KVM_EXIT_DEBUG (single-step/breakpoint, for a gdb stub);
        return True to keep running. Default: stop with ``StopKind.DEBUG``.
    """

    def __init__(self, fd: VcpuFd, pio_bus: Bus, mmio_bus: Bus, *, memory=None,
                 on_stop: Callable[[Vcpu, VcpuStop], None] | None = None,
                 on_hlt: Callable[[Vcpu], bool] | None = None,
                 on_debug: Callable[[Vcpu, VcpuExit], bool] | None = None):
        self.fd = fd
        self.id = fd.id
        self.pio_bus = pio_bus
        self.mmio_bus = mmio_bus
        self.memory = memory
        self.on_stop = on_stop
        self.on_hlt = on_hlt
        self.on_debug = on_debug
        self._counts = [0] * _MAX_REASON
        self._stop_requested = False
        self._result: VcpuStop | None = None
        self._done = threading.Event()
        self._thread: threading.Thread | None = None
        self._thread_ident: int | None = None
        # Pause state, guarded by _control: requested by pause(), honoured by the loop (_park).
        self._control = threading.Condition()
        self._pause_requested = False
        self._paused = False

    # -- control ----------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            raise RuntimeError(f"vcpu{self.id} is already running")
        if threading.current_thread() is threading.main_thread():
            install_kick_handler()
        elif signal.getsignal(KICK_SIGNAL) in (signal.SIG_DFL, signal.SIG_IGN, None):
            raise RuntimeError("call pyvmm.vcpu.install_kick_handler() from the main thread before starting vCPUs")
        self._stop_requested = False
        self._result = None
        self._done.clear()
        self.fd.immediate_exit = self._pause_requested  # a pause requested before start holds
        self._thread = threading.Thread(target=self._thread_main, name=f"vcpu{self.id}", daemon=True)
        self._thread.start()

    def request_stop(self) -> None:
        """Ask the loop to end (from any thread, including the vCPU's own); does not wait.

        A paused vCPU ends too (it leaves its parking place without running the guest).
        """
        with self._control:
            self._stop_requested = True
            self.fd.immediate_exit = True
            self._control.notify_all()
        self._kick()

    def _kick(self) -> None:
        """Make a ``KVM_RUN`` in progress on the vCPU thread return (EINTR); no-op on that thread."""
        ident = self._thread_ident
        if ident is not None and ident != threading.get_ident():
            try:
                signal.pthread_kill(ident, KICK_SIGNAL)
            except (ProcessLookupError, OSError):
                pass  # the thread has just ended

    def pause(self, timeout: float | None = 5.0) -> bool:
        """Park the vCPU outside ``KVM_RUN`` (from any thread) and wait until it is parked.

        Returns True once it is parked (or its loop has ended: nothing runs either way),
        False on timeout. ``timeout=0`` only requests the pause, which is the way to pause
        from the vCPU's own thread (e.g. in ``on_debug``): it parks when the hook returns.
        Idempotent: pausing a paused vCPU returns True at once.
        """
        self.request_pause()
        if timeout == 0:
            return self.is_paused
        return self.wait_paused(timeout)

    def request_pause(self) -> None:
        """Ask the vCPU to park; does not wait (see :meth:`pause`)."""
        with self._control:
            self._pause_requested = True
            self.fd.immediate_exit = True
        self._kick()

    def wait_paused(self, timeout: float | None = 5.0) -> bool:
        """Wait until a requested pause has taken effect (or the loop has ended)."""
        with self._control:
            return self._control.wait_for(self._parked_or_gone, timeout)

    def _parked_or_gone(self) -> bool:
        return self._paused or self._done.is_set() or (self._thread is None and self._pause_requested)

    def resume(self) -> None:
        """Let a paused vCPU (or one whose pause is still pending) run the guest again."""
        with self._control:
            self._pause_requested = False
            if not self._stop_requested:
                self.fd.immediate_exit = False
            self._control.notify_all()

    @property
    def is_paused(self) -> bool:
        """True while the vCPU thread is parked (not before start: see ``pause_requested``)."""
        return self._paused

    @property
    def pause_requested(self) -> bool:
        return self._pause_requested

    def _park(self) -> None:
        """On the vCPU thread: wait outside KVM_RUN until resumed or stopped."""
        with self._control:
            if not self._pause_requested:
                return
            self._paused = True
            self._control.notify_all()
            log.debug("vcpu%d paused", self.id)
            while self._pause_requested and not self._stop_requested:
                self._control.wait()
            self._paused = False
            if not self._stop_requested:
                self.fd.immediate_exit = False
            self._control.notify_all()
        log.debug("vcpu%d resumed", self.id)

    def stop(self, timeout: float | None = 5.0) -> VcpuStop | None:
        """Request a stop and join the thread; returns the stop reason."""
        self.request_stop()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
            if self._thread.is_alive():
                raise RuntimeError(f"vcpu{self.id} did not stop within {timeout} s")
        return self._result

    def wait(self, timeout: float | None = None) -> VcpuStop | None:
        """Block until the loop ends (or ``timeout``); the stop reason or None on timeout."""
        self._done.wait(timeout)
        return self._result

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def result(self) -> VcpuStop | None:
        return self._result

    @property
    def exit_counts(self) -> dict[str, int]:
        """Exits seen so far by reason name (INTR counts signal/immediate-exit returns)."""
        return {ExitReason.name_of(r): n for r, n in enumerate(self._counts) if n}

    # -- the loop ---------------------------------------------------------------------

    def _thread_main(self) -> None:
        self._thread_ident = threading.get_ident()
        try:
            result = self._loop()
        except Exception as exc:  # a device or binding bug: stop this VM, not the process
            log.exception("vcpu%d: exit handling failed", self.id)
            result = VcpuStop(StopKind.ERROR, f"vcpu{self.id}: {type(exc).__name__}: {exc}", self.id, error=exc)
        finally:
            self._thread_ident = None
        self._finish(result)
        with self._control:
            self._control.notify_all()  # wake wait_paused() callers: nothing runs any more

    def _finish(self, result: VcpuStop) -> None:
        self._result = result
        level = logging.ERROR if result.is_error else logging.DEBUG
        log.log(level, "vcpu%d stopped: %s", self.id, result.message)
        self._done.set()
        if self.on_stop is not None:
            self.on_stop(self, result)

    def _loop(self) -> VcpuStop:
        fd = self.fd
        page = fd.run_page
        ioctl, run_args = raw_ioctl, fd.run_args
        unpack_reason = _EXIT_REASON.unpack_from
        counts = self._counts
        pio_read, pio_write = self.pio_bus.read, self.pio_bus.write
        mmio_read, mmio_write = self.mmio_bus.read, self.mmio_bus.write
        unpack_io, unpack_mmio = _IO_EXIT.unpack_from, _MMIO_EXIT.unpack_from
        trace = log.isEnabledFor(TRACE)
        IO, MMIO, INTR = ExitReason.IO.value, ExitReason.MMIO.value, ExitReason.INTR.value

        while not self._stop_requested:
            if self._pause_requested:
                self._park()
                continue
            if ioctl(*run_args) < 0:
                reason = fd.run_failed()  # INTR when interrupted, else raises KvmError
            else:
                reason = unpack_reason(page, _EXIT_REASON_OFFSET)[0]
            if reason < _MAX_REASON:
                counts[reason] += 1
            if trace:
                log.log(TRACE, "vcpu%d exit %s", self.id, self.fd.exit().describe())
            if reason == IO:
                direction, size, port, count, offset = unpack_io(page, KVM_RUN_EXIT_OFFSET)
                if direction == KVM_EXIT_IO_OUT:
                    for _ in range(count):
                        pio_write(port, bytes(page[offset:offset + size]))
                        offset += size
                else:
                    for _ in range(count):
                        page[offset:offset + size] = _sized(pio_read(port, size), size, "PIO", port)
                        offset += size
            elif reason == MMIO:
                addr, data, length, is_write = unpack_mmio(page, KVM_RUN_EXIT_OFFSET)
                length = min(length, 8)
                if is_write:
                    mmio_write(addr, data[:length])
                else:
                    page[_MMIO_DATA_OFFSET:_MMIO_DATA_OFFSET + length] = _sized(
                        mmio_read(addr, length), length, "MMIO", addr)
            elif reason != INTR:
                stop = self._rare_exit(reason)
                if stop is not None:
                    return stop
        return VcpuStop(StopKind.REQUESTED, StopKind.REQUESTED.value, self.id)

    def _rare_exit(self, reason: int) -> VcpuStop | None:
        """Everything but PIO/MMIO: None to keep running, else why the loop stops."""
        exit_ = self.fd.exit()
        if reason == ExitReason.HLT:
            if self.on_hlt is not None and self.on_hlt(self):
                return None
            return VcpuStop(StopKind.HALT, f"vcpu{self.id}: {StopKind.HALT.value}", self.id, exit_)
        if reason == ExitReason.DEBUG:
            if self.on_debug is not None and self.on_debug(self, exit_):
                return None
            return VcpuStop(StopKind.DEBUG, f"vcpu{self.id}: {exit_.describe()}", self.id, exit_,
                            rip=exit_.debug_pc)
        if reason == ExitReason.SYSTEM_EVENT:
            kind = {SystemEvent.RESET: StopKind.RESET, SystemEvent.SHUTDOWN: StopKind.POWEROFF,
                    SystemEvent.CRASH: StopKind.CRASH}.get(exit_.event_type, StopKind.SYSTEM_EVENT)
            return VcpuStop(kind, f"vcpu{self.id}: {kind.value} ({exit_.describe()})", self.id, exit_)
        where = self._position()
        if reason == ExitReason.SHUTDOWN:
            if where is not None and where.is_reset_vector:
                # kvm_amd INITs the vCPU on a shutdown intercept before returning (the VMCB is
                # undefined after one); kvm_intel and kvm_pvm keep the faulting state.
                message = (f"vcpu{self.id}: {StopKind.SHUTDOWN.value}: RIP unknown, KVM re-initialised the vCPU "
                           f"before returning (kvm_amd does: its registers read the reset vector 0xfff0)")
                return self._stop_with(StopKind.SHUTDOWN, message, exit_, None)
            message = (f"vcpu{self.id}: {StopKind.SHUTDOWN.value}: the guest reset itself or crashed"
                       f" at {where.describe() if where else 'unknown RIP'}")
            return self._stop_with(StopKind.SHUTDOWN, message, exit_, where)
        if reason == ExitReason.INTERNAL_ERROR:
            insn = exit_.insn_bytes or (where.code if where else b"")
            message = f"vcpu{self.id}: {exit_.describe()}"
            if where is not None:
                message += f" at {where.describe()}"
            message += " (host dmesg may name the failing instruction)"
            return self._stop_with(StopKind.INTERNAL_ERROR, message, exit_, where, insn)
        if reason == ExitReason.FAIL_ENTRY:
            message = f"vcpu{self.id}: {exit_.describe()}"
            if where is not None:
                message += f" at {where.describe()}"
            return self._stop_with(StopKind.FAIL_ENTRY, message, exit_, where)
        message = f"vcpu{self.id}: unexpected exit {exit_.describe()}"
        if where is not None:
            message += f" at {where.describe()}"
        return self._stop_with(StopKind.ERROR, message, exit_, where)

    def _position(self) -> GuestPosition | None:
        try:
            return guest_position(self.fd, self.memory)
        except KvmError as exc:
            log.warning("vcpu%d: cannot read guest registers: %s", self.id, exc)
            return None

    def _stop_with(self, kind: StopKind, message: str, exit_: VcpuExit, where: GuestPosition | None,
                   insn: bytes | None = None) -> VcpuStop:
        return VcpuStop(kind, message, self.id, exit_, rip=where.rip if where else None,
                        insn_bytes=insn if insn is not None else (where.code if where else b""))


def _sized(data: bytes, size: int, space: str, addr: int) -> bytes:
    """A device's read answer cut or padded to the access width (a device bug must not kill the vCPU)."""
    if len(data) == size:
        return data
    log.warning("%s read at %#x/%d: device returned %d bytes", space, addr, size, len(data))
    return (bytes(data) + b"\xff" * size)[:size]
