"""The virtio-mmio transport, version 2 (virtio spec 4.2): the register window of one device.

Register accesses arrive on vCPU threads; the device runs on the event loop thread. The
transport keeps its register state under a short lock, never holds that lock while waiting
for the loop, and hands everything that touches the device over to the loop: queue
notifications (from the QueueNotify register or, faster, from per-queue ioeventfds that KVM
signals without leaving the guest), activation on DRIVER_OK and reset on Status=0 (these two
wait, so the driver reads back a status that matches the device).

Ordering: the loop runs what it is handed in order, so a reset is always done before anything
the driver does after it, even when the loop was too busy to finish it within the vCPU's
wait (:data:`_LOOP_TIMEOUT`). For that to hold, loop-side work never reads the registers
as they are *when it runs*: each driver reset starts a new *configuration* (fresh
:class:`SplitQueue` objects the driver programs from then on), an activation carries the
queues and features of the DRIVER_OK write that asked for it, a reset the queues it retires,
and a late completion or reset request from an older configuration is dropped.

Bounds: QueueNotify writes are coalesced per queue (at most one pending hand-over each, like
an eventfd), and each notification serves at most a queue's size of chains before the loop
moves on (:meth:`SplitQueue.begin_turn`); the rest is served in a later loop turn.

Feature negotiation: the device's bits plus VERSION_1 (required), RING_INDIRECT_DESC and
RING_EVENT_IDX. FEATURES_OK only sticks if the driver accepted VERSION_1 and nothing that was
not offered; otherwise the driver reads it back clear and gives up, as the spec intends.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Protocol

from pyvmm.eventloop import DeviceEventLoop
from pyvmm.guest_log import guest_error
from pyvmm.memory import GuestMemory
from pyvmm.virtio import constants as C
from pyvmm.virtio import rules
from pyvmm.virtio.constants import MmioReg as R
from pyvmm.virtio.constants import Status
from pyvmm.virtio.device import DeviceContext, VirtioDevice
from pyvmm.virtio.queue import InvalidQueueError, SplitQueue, trace_notify
from pyvmm.virtio.rules import report_queue_fault

log = logging.getLogger(__name__)

_LOOP_TIMEOUT = 10.0
"""Bound on how long a vCPU waits for the device to activate or reset."""

_QUEUE_CONFIG_REGS = {R.QUEUE_NUM, R.QUEUE_DESC_LOW, R.QUEUE_DESC_HIGH, R.QUEUE_DRIVER_LOW,
                      R.QUEUE_DRIVER_HIGH, R.QUEUE_DEVICE_LOW, R.QUEUE_DEVICE_HIGH, R.QUEUE_READY}


class Interrupt(Protocol):
    def trigger(self) -> None: ...


def cmdline_fragment(base: int, irq: int, size: int = C.MMIO_REGION_SIZE) -> str:
    """The ``virtio_mmio.device=`` kernel parameter that makes Linux probe a device at ``base``."""
    if size % 1024 == 0:
        size_text = f"{size // 1024}K"
    else:
        size_text = str(size)
    return f"virtio_mmio.device={size_text}@{base:#x}:{irq}"


class MmioTransport:
    """A :class:`~pyvmm.bus.BusDevice` exposing one :class:`VirtioDevice` through virtio-mmio v2."""

    def __init__(self, device: VirtioDevice, memory: GuestMemory, loop: DeviceEventLoop,
                 interrupt: Interrupt, *, name: str | None = None,
                 event_idx: bool = True, indirect_desc: bool = True):
        self.device = device
        self.memory = memory
        self.loop = loop
        self.interrupt = interrupt
        self.name = name or f"virtio-mmio({type(device).__name__})"
        self.queues = self._new_queues()
        """The current configuration's queues (replaced by a fresh list at each driver reset)."""
        transport_bits = C.bit(C.VERSION_1)
        if event_idx:
            transport_bits |= C.bit(C.RING_EVENT_IDX)
        if indirect_desc:
            transport_bits |= C.bit(C.RING_INDIRECT_DESC)
        self.offered_features = (device.device_features() & C.DEVICE_FEATURE_MASK) | transport_bits
        self._lock = threading.Lock()
        self._transition_lock = threading.Lock()
        self._eventfds: list[int] = []
        self._notify_pending: set[int] = set()
        self.kicks = [0] * len(self.queues)
        """Notifications delivered to the device, per queue (register writes and ioeventfds)."""
        self.interrupts = 0
        """Interrupts raised (used-buffer and configuration)."""
        self.config_generation = 0
        self._reset_registers()
        self._active: list[SplitQueue] | None = None  # loop thread only: the activated queues
        self._kicked_early: set[int] = set()  # loop thread only

    def __repr__(self) -> str:
        return f"MmioTransport({self.name}, status={self.status:#x}, features={self.driver_features:#x})"

    def _new_queues(self) -> list[SplitQueue]:
        return [SplitQueue(self.memory, n, i, name=f"{self.name} queue {i}")
                for i, n in enumerate(self.device.queue_max_sizes)]

    def _reset_registers(self) -> None:
        self.status = 0
        self.driver_features = 0
        self.interrupt_status = 0
        self._device_features_sel = 0
        self._driver_features_sel = 0
        self._queue_sel = 0

    # -- helpers for the VM -----------------------------------------------------------------

    def cmdline_fragment(self, base: int, irq: int) -> str:
        return cmdline_fragment(base, irq)

    def ioeventfds(self, base: int) -> list[tuple[int, int, int, int]]:
        """``(guest_addr, length, datamatch, eventfd)`` per queue for KVM_IOEVENTFD: a 4-byte write
        of the queue index to QueueNotify signals the eventfd instead of exiting to user space."""
        if not self._eventfds:
            for i in range(len(self.queues)):
                fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
                self._eventfds.append(fd)
                self.loop.add_reader(fd, self._on_eventfd, i)
        return [(base + R.QUEUE_NOTIFY, 4, i, fd) for i, fd in enumerate(self._eventfds)]

    def close(self) -> None:
        """Release the eventfds (the VM closes the device itself)."""
        for fd in self._eventfds:
            try:
                self.loop.remove_reader(fd)
            except Exception:
                log.debug("%s: could not remove eventfd reader", self.name, exc_info=True)
            os.close(fd)
        self._eventfds = []

    # -- bus interface (vCPU threads) -------------------------------------------------------

    def read(self, offset: int, size: int) -> bytes:
        if offset >= R.CONFIG:
            try:
                data = self.device.read_config(offset - R.CONFIG, size)
            except Exception:
                log.exception("%s: read_config(%#x, %d) raised", self.name, offset - R.CONFIG, size)
                data = b""
            return bytes(data[:size]).ljust(size, b"\0")
        if size != 4 or offset % 4:
            self._guest_error("%d-byte read at register offset %#x ignored (registers are 32-bit)",
                              size, offset)
            return b"\0" * size
        value = self._read_register(offset)
        log.log(5, "%s: read %s = %#x", self.name, _reg_name(offset), value)
        sink = self.device.event_sink
        if sink.tracing("mmio"):
            sink.trace("mmio", "read", reg=_reg_name(offset), value=value)
        return value.to_bytes(4, "little")

    def write(self, offset: int, data: bytes) -> None:
        if offset >= R.CONFIG:
            try:
                self.device.write_config(offset - R.CONFIG, bytes(data))
            except Exception:
                log.exception("%s: write_config(%#x, %s) raised", self.name, offset - R.CONFIG, data.hex())
            return
        if len(data) != 4 or offset % 4:
            self._guest_error("%d-byte write at register offset %#x ignored (registers are 32-bit)",
                              len(data), offset)
            return
        value = int.from_bytes(data, "little")
        log.log(5, "%s: write %s = %#x", self.name, _reg_name(offset), value)
        sink = self.device.event_sink
        if sink.tracing("mmio"):
            sink.trace("mmio", "write", reg=_reg_name(offset), value=value)
        self._write_register(offset, value)

    def _selected_queue(self) -> SplitQueue | None:
        sel = self._queue_sel
        return self.queues[sel] if sel < len(self.queues) else None

    def _read_register(self, offset: int) -> int:
        with self._lock:
            q = self._selected_queue()
            if offset == R.MAGIC_VALUE:
                return C.MMIO_MAGIC_VALUE
            if offset == R.VERSION:
                return C.MMIO_VERSION
            if offset == R.DEVICE_ID:
                return self.device.device_type
            if offset == R.VENDOR_ID:
                return C.MMIO_VENDOR_ID
            if offset == R.DEVICE_FEATURES:
                sel = self._device_features_sel
                return (self.offered_features >> (32 * sel)) & 0xFFFFFFFF if sel < 2 else 0
            if offset == R.QUEUE_NUM_MAX:
                return q.max_size if q is not None else 0
            if offset == R.QUEUE_READY:
                return int(q is not None and q.ready)
            if offset == R.INTERRUPT_STATUS:
                return self.interrupt_status
            if offset == R.STATUS:
                return self.status
            if offset == R.CONFIG_GENERATION:
                return self.config_generation
            if offset in (R.SHM_LEN_LOW, R.SHM_LEN_HIGH, R.SHM_BASE_LOW, R.SHM_BASE_HIGH):
                return 0xFFFFFFFF  # no shared memory regions
            if offset == R.QUEUE_RESET:
                return 0
        log.debug("%s: read of write-only or unknown register %s", self.name, _reg_name(offset))
        return 0

    def _write_register(self, offset: int, value: int) -> None:
        if offset == R.STATUS:
            self._write_status(value)
        elif offset == R.QUEUE_NOTIFY:
            self._write_queue_notify(value & 0xFFFF)
        elif offset == R.INTERRUPT_ACK:
            with self._lock:
                self.interrupt_status &= ~value
        elif offset in _QUEUE_CONFIG_REGS:
            self._write_queue_register(offset, value)
        else:
            with self._lock:
                if offset == R.DEVICE_FEATURES_SEL:
                    self._device_features_sel = value
                elif offset == R.DRIVER_FEATURES_SEL:
                    self._driver_features_sel = value
                elif offset == R.DRIVER_FEATURES:
                    self._write_driver_features(value)
                elif offset == R.QUEUE_SEL:
                    self._queue_sel = value
                elif offset in (R.SHM_SEL, R.QUEUE_RESET):
                    pass  # no shared memory, RING_RESET not offered
                else:
                    log.debug("%s: write to read-only or unknown register %s ignored",
                              self.name, _reg_name(offset))

    def _write_driver_features(self, value: int) -> None:
        if self.status & Status.FEATURES_OK or not self.status & Status.DRIVER:
            self._guest_error("DriverFeatures write in status %#x ignored", self.status)
            return
        sel = self._driver_features_sel
        if sel >= 2:
            if value:
                self._guest_error("driver accepts features %#x in unknown word %d", value, sel)
            return
        shift = 32 * sel
        self.driver_features = (self.driver_features & ~(0xFFFFFFFF << shift)) | (value << shift)

    def _write_queue_register(self, offset: int, value: int) -> None:
        reason = None
        with self._lock:
            q = self._selected_queue()
            if q is None:
                log.debug("%s: write to %s of missing queue %d ignored", self.name,
                          _reg_name(offset), self._queue_sel)
                return
            if offset == R.QUEUE_READY and not value:
                q.disable()  # allowed at any time (Linux's vm_del_vq); the device just stops seeing it
                return
            if self.status & Status.DRIVER_OK or (q.ready and offset != R.QUEUE_READY):
                self._guest_error("%s write to queue %d while it is live ignored", _reg_name(offset), q.index)
                return
            if not self.status & Status.FEATURES_OK:
                # spec 3.1.1: queues are set up after feature negotiation (the ring layout
                # depends on EVENT_IDX)
                self._guest_error("%s write to queue %d before FEATURES_OK ignored", _reg_name(offset), q.index)
                return
            low = ~0xFFFFFFFF
            if offset == R.QUEUE_NUM:
                q.size = value
            elif offset == R.QUEUE_DESC_LOW:
                q.desc_table = (q.desc_table & low) | value
            elif offset == R.QUEUE_DESC_HIGH:
                q.desc_table = (q.desc_table & 0xFFFFFFFF) | (value << 32)
            elif offset == R.QUEUE_DRIVER_LOW:
                q.avail_ring = (q.avail_ring & low) | value
            elif offset == R.QUEUE_DRIVER_HIGH:
                q.avail_ring = (q.avail_ring & 0xFFFFFFFF) | (value << 32)
            elif offset == R.QUEUE_DEVICE_LOW:
                q.used_ring = (q.used_ring & low) | value
            elif offset == R.QUEUE_DEVICE_HIGH:
                q.used_ring = (q.used_ring & 0xFFFFFFFF) | (value << 32)
            elif offset == R.QUEUE_READY:
                q.apply_features(self.driver_features)
                try:
                    q.enable()
                    log.debug("%s: %r enabled", self.name, q)
                except InvalidQueueError as e:
                    reason = str(e)
        if reason is not None:
            self.request_reset(f"queue setup rejected: {reason}")

    # -- status state machine ---------------------------------------------------------------

    def _write_status(self, value: int) -> None:
        with self._transition_lock:
            if value == 0:
                self._driver_reset()
                return
            with self._lock:
                old = self.status
                value |= old & int(Status.DEVICE_NEEDS_RESET)  # device-owned bit the driver may not have seen
                if value & ~0xFF or old & ~value:
                    self._guest_error("status %#x -> %#x ignored (bits can only be added; write 0 to reset)",
                                      old, value)
                    return
                added = value & ~old
                if added & Status.FEATURES_OK and not self._features_acceptable(value):
                    value &= ~int(Status.FEATURES_OK)
                    added &= ~int(Status.FEATURES_OK)
                if added & Status.DRIVER_OK and not value & Status.FEATURES_OK:
                    self._guest_error("DRIVER_OK without FEATURES_OK ignored")
                    value &= ~int(Status.DRIVER_OK)
                    added &= ~int(Status.DRIVER_OK)
                self.status = value
            if added & Status.FAILED:
                log.info("%s: the driver gave up on the device (status FAILED)", self.name)
            if added & Status.DRIVER_OK:
                self._activate()

    def _features_acceptable(self, status: int) -> bool:
        """Called with the lock held, when the driver sets FEATURES_OK."""
        features = self.driver_features
        problem = None
        if not status & Status.DRIVER or not status & Status.ACKNOWLEDGE:
            problem = "ACKNOWLEDGE and DRIVER are not set"
        elif features & ~self.offered_features:
            problem = f"driver accepted features {features & ~self.offered_features:#x} that were not offered"
        elif not features & C.bit(C.VERSION_1):
            problem = "driver did not accept VERSION_1 (legacy drivers are not supported)"
        if problem:
            self._guest_error("FEATURES_OK refused: %s", problem)
            return False
        log.debug("%s: features negotiated: %#x", self.name, features)
        return True

    def _activate(self) -> None:
        with self._lock:
            queues, features = self.queues, self.driver_features
        self._wait_for_loop("activation", self._activate_on_loop, queues, features)

    def _wait_for_loop(self, what: str, fn, *args) -> None:
        """Run ``fn`` on the loop and wait for it, at most :data:`_LOOP_TIMEOUT` seconds. On
        timeout it still runs, in order, later: the driver just does not wait for it."""
        if not self.loop.running:
            fn(*args)  # VM not started yet, or shutting down
            return
        try:
            self.loop.call(fn, *args, timeout=_LOOP_TIMEOUT)
        except TimeoutError:
            log.warning("%s: device %s still waiting for the device loop after %.0f s; it will "
                        "run before anything the driver does next", self.name, what, _LOOP_TIMEOUT)

    def _activate_on_loop(self, queues: list[SplitQueue], features: int) -> None:
        if queues is not self.queues:
            log.debug("%s: activation of a configuration the driver has reset since: skipped", self.name)
            return
        for q in queues:
            q.signal_used = lambda i=q.index: self._signal_used(queues, i)
            q.request_reset = lambda reason: self._request_reset_for(queues, reason)
            q.on_fault = self._on_queue_fault
        ctx = DeviceContext(
            memory=self.memory,
            queues=queues,
            features=features,
            loop=self.loop.loop,
            signal_used=lambda i: self._signal_used(queues, i),
            signal_config=lambda: self._signal_config_for(queues),
            request_reset=lambda reason: self._request_reset_for(queues, reason),
        )
        try:
            self.device.activate(ctx)
        except Exception as e:
            log.error("%s: device activation failed: %s", self.name, e, exc_info=True)
            self._request_reset_for(queues, f"activation failed: {e}")
            return
        self._active = queues
        log.info("%s: activated (features %#x, queues %s)", self.name, features,
                 ", ".join(f"{q.index}:{q.size if q.ready else 'off'}" for q in queues))
        early, self._kicked_early = self._kicked_early, set()
        for i in sorted(early):  # buffers made available before DRIVER_OK
            self._on_notify(i)

    def _driver_reset(self) -> None:
        with self._lock:
            retired, self.queues = self.queues, self._new_queues()
            self._reset_registers()
        self._wait_for_loop("reset", self._reset_on_loop, retired)
        log.debug("%s: reset by the driver", self.name)

    def _reset_on_loop(self, retired: list[SplitQueue]) -> None:
        was_active, self._active = self._active is not None, None
        self._kicked_early.clear()
        if was_active:
            try:
                self.device.reset()
            except Exception:
                log.exception("%s: device reset raised", self.name)
        for q in retired:
            q.reset()  # chains the device still holds complete into nothing

    # -- notifications (loop thread) --------------------------------------------------------

    def _on_eventfd(self, index: int) -> None:
        try:
            os.eventfd_read(self._eventfds[index])
        except (BlockingIOError, IndexError):
            return
        self._on_notify(index)

    def _write_queue_notify(self, index: int) -> None:
        """vCPU thread: hand the notification to the loop, at most one pending per queue."""
        if index >= len(self.queues):
            self._guest_error("notify for queue %d, the device has %d", index, len(self.queues))
            return
        with self._lock:
            if index in self._notify_pending:
                return
            self._notify_pending.add(index)
        self.loop.call_soon(self._on_notify_register, index)

    def _on_notify_register(self, index: int) -> None:
        with self._lock:
            self._notify_pending.discard(index)
        self._on_notify(index)

    def _on_notify(self, index: int) -> None:
        if self._active is None:
            if self.status & Status.DRIVER:
                self._kicked_early.add(index)
                self.device.event_sink.violation(rules.NOTIFY_BEFORE_DRIVER_OK, f"QueueNotify {index}",
                                                 status=f"{self.status:#x}")
            return
        if not self._active[index].ready:
            self.device.event_sink.violation(rules.NOTIFY_UNREADY_QUEUE, f"QueueNotify {index}", queue=index)
            return
        self.kicks[index] += 1
        trace_notify(self.device.event_sink, self._active[index])
        self._serve(self._active[index])

    def _serve(self, queue: SplitQueue) -> None:
        """One turn of the device on ``queue``; if it stopped on the turn budget with work
        left, the loop comes back to it after whatever else is waiting."""
        if self._active is None or queue is not self._active[queue.index]:
            return  # reset since this was scheduled
        queue.begin_turn()
        try:
            self.device.queue_notify(queue.index)
        except Exception:
            log.exception("%s: queue_notify(%d) raised", self.name, queue.index)
        finally:
            more = queue.end_turn()
        if more:
            self.loop.loop.call_soon(self._serve, queue)

    # -- interrupts (any thread) ------------------------------------------------------------

    def _raise(self, bits: int) -> None:
        with self._lock:
            self.interrupt_status |= bits
            self.interrupts += 1
        sink = self.device.event_sink
        if sink.tracing("irq"):
            sink.trace("irq", "config" if bits & C.MMIO_INT_CONFIG else "used", status=bits)
        self.interrupt.trigger()

    def _signal_used(self, queues: list[SplitQueue], index: int) -> None:
        if queues is not self.queues:
            return  # a late completion from before a reset
        if 0 <= index < len(queues) and queues[index].needs_notification():
            self._raise(C.MMIO_INT_VRING)

    def _signal_config_for(self, queues: list[SplitQueue]) -> None:
        if queues is self.queues:
            self.signal_config()

    def _request_reset_for(self, queues: list[SplitQueue], reason: str) -> None:
        if queues is self.queues:
            self.request_reset(reason)
        else:
            log.debug("%s: reset request from before a driver reset dropped: %s", self.name, reason)

    def signal_config(self) -> None:
        with self._lock:
            self.config_generation = (self.config_generation + 1) & 0xFFFFFFFF
        self._raise(C.MMIO_INT_CONFIG)

    def request_reset(self, reason: str) -> None:
        """Device-initiated reset (spec 2.1.2): DEVICE_NEEDS_RESET plus a config interrupt.

        Logged as a guest error: it is nearly always the driver's doing (a broken ring), and a
        driver can make it happen after every reset."""
        self._guest_error("device needs reset: %s", reason)
        with self._lock:
            self.status |= int(Status.DEVICE_NEEDS_RESET)
        self._raise(C.MMIO_INT_CONFIG)


    def _on_queue_fault(self, queue: SplitQueue, kind, detail: str) -> None:
        report_queue_fault(self.device.event_sink, queue, kind, detail)

    def _guest_error(self, message: str, *args: object) -> None:
        guest_error(log, "%s: " + message, self.name, *args)


def _reg_name(offset: int) -> str:
    try:
        return R(offset).name
    except ValueError:
        return f"{offset:#x}"
