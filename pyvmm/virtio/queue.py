"""The device side of a split virtqueue (virtio spec 2.7): avail ring in, used ring out.

Every value the driver wrote is distrusted; each failure has a name
(:class:`~pyvmm.virtio.faults.QueueFault`) and is reported in one place, :meth:`SplitQueue._fault`
(a rate-limited guest-error line, :mod:`pyvmm.guest_log`, and the ``on_fault`` hook):

* Ring layout (size, addresses, alignment, RAM) is checked by :meth:`SplitQueue.enable`,
  which raises :class:`InvalidQueueError`; the transport logs it and refuses the queue.
* A *malformed chain* (any rule of :mod:`pyvmm.virtio.descriptors` broken: index out of
  range, loop, readable after writable, bad indirect table, buffer outside RAM, length
  overflow, indirect not negotiated) is returned to the used ring with length 0 (so the
  driver gets its descriptors back and sees an empty answer) and skipped: :meth:`pop`
  carries on with the next chain. The device never sees it.
* A *broken ring* (avail idx more than the queue size ahead, a head index >= size, more
  chains in flight than the queue size) cannot be answered through the ring: the queue
  stops (``broken``) and calls ``request_reset`` so the transport sets DEVICE_NEEDS_RESET.

Bounds: a chain has at most ``size`` descriptors (:mod:`~pyvmm.virtio.descriptors`), the device
holds at most ``size`` chains (``in_flight``: a driver cannot make the device hold more by
re-publishing heads it has not got back, which QEMU refuses the same way), and inside one
front-end *turn* (:meth:`begin_turn`/:meth:`end_turn`) :meth:`pop` takes at most ``size``
chains, so a driver refilling the ring as fast as the device empties it cannot keep the
device loop in one queue forever: the front end serves the rest in a later loop turn.

Memory ordering (x86-64, TSO): ring index fields are read and written through aligned
memoryview casts (``H``/``I``) of the rings, i.e. single loads/stores that cannot tear (not
numpy scalar indexing: its far larger code path costs several times more when the loop wakes
with cold caches to serve one period, see the README's data-path section). The avail idx is
read before the ring entries it covers and used entries are stored before the used idx (loads
are not reordered with loads, nor stores with stores). The two places that need store->load order
(publishing avail_event then re-reading avail idx; publishing used idx then reading
used_event) go through :func:`full_barrier`.
"""

from __future__ import annotations

import itertools
import logging
import threading
from typing import Callable

from pyvmm.errors import GuestMemoryError
from pyvmm.events import EventSink
from pyvmm.guest_log import guest_error
from pyvmm.log import TRACE
from pyvmm.memory import GuestMemory
from pyvmm.virtio import constants as C
from pyvmm.virtio.chain import ChainReader, ChainWriter, DescriptorChain, ShortChainError
from pyvmm.virtio.descriptors import ChainError, guest_views, parse_chain
from pyvmm.virtio.faults import QueueFault

__all__ = [
    "SplitQueue", "DescriptorChain", "ChainReader", "ChainWriter", "ShortChainError",
    "InvalidQueueError", "ChainError", "QueueFault", "full_barrier", "need_event", "guest_views",
]

log = logging.getLogger(__name__)

_barrier_lock = threading.Lock()

_epochs = itertools.count(1)
"""Epochs are unique across all queues: a chain names the queue *and* the reset it was popped in."""


def full_barrier() -> None:
    """A full memory fence: taking a lock is a locked read-modify-write on x86 (mfence-equivalent)."""
    _barrier_lock.acquire()
    _barrier_lock.release()


def need_event(event_idx: int, new_idx: int, old_idx: int) -> bool:
    """Spec 2.7.10 / vring_need_event: did the index pass ``event_idx`` going from old to new?"""
    return ((new_idx - event_idx - 1) & 0xFFFF) < ((new_idx - old_idx) & 0xFFFF)


def trace_notify(sink: EventSink, queue: SplitQueue) -> None:
    """The ``queue notify`` trace record of a driver notification (both front ends send it)."""
    if sink.tracing("queue"):
        sink.trace("queue", "notify", queue=queue.index, avail_idx=queue.avail_idx(), next_avail=queue.next_avail,
                   in_flight=queue.in_flight)


class InvalidQueueError(ValueError):
    """The driver configured a queue the device cannot use (size, alignment, address)."""


class _BrokenRing(Exception):
    def __init__(self, kind: QueueFault, message: str):
        super().__init__(message)
        self.kind = kind


class SplitQueue:
    """One split virtqueue as the device sees it. Used from the device event loop thread only
    (configuration happens before activation, on the transport's register path)."""

    def __init__(self, memory: GuestMemory | None, max_size: int, index: int = 0, name: str | None = None):
        if not 1 <= max_size <= C.MAX_QUEUE_SIZE or max_size & (max_size - 1):
            raise ValueError(f"queue max size {max_size} is not a power of two in 1..{C.MAX_QUEUE_SIZE}")
        self.memory = memory
        """Guest RAM; a front end that remaps memory (vhost-user) sets it and calls :meth:`enable` again."""
        self.max_size = max_size
        self.index = index
        self.name = name or f"queue{index}"
        self.signal_used: Callable[[], None] | None = None
        """Called after :meth:`pop` returned a malformed chain to the used ring (the transport signals)."""
        self.request_reset: Callable[[str], None] | None = None
        """Called when the ring itself is broken (the transport sets DEVICE_NEEDS_RESET)."""
        self.on_fault: Callable[[SplitQueue, QueueFault, str], None] | None = None
        """Called for every driver error found on this queue (tracers, spec checkers)."""
        self.epoch = 0
        self.reset()

    # -- configuration ------------------------------------------------------------------

    def reset(self) -> None:
        """Back to the power-on state (spec 4.2.3.1: the driver reconfigures every queue).

        Chains popped before the reset become stale: :meth:`add_used` ignores them, so a
        device completing late (a backend thread, a timer) cannot write into the new rings
        (nor can a chain handed to another queue's :meth:`add_used`).
        """
        self.epoch = next(_epochs)
        self.size = self.max_size
        self.ready = False
        self.desc_table = 0
        self.avail_ring = 0
        self.used_ring = 0
        self.next_avail = 0
        self.next_used = 0
        self.event_idx = False
        self.indirect = False
        self.broken = False
        self.in_flight = 0
        """Chains :meth:`pop` returned that the device has not given back (:meth:`add_used`)."""
        self.notify_wanted = True
        """False while the device polls the ring on its own (:meth:`suppress_notifications`)."""
        self._turn_left: int | None = None
        self._turn_exhausted = False
        self._signalled_used = 0
        self._signalled_valid = False
        self._desc: memoryview | None = None
        self._avail: memoryview | None = None
        self._used16: memoryview | None = None
        self._used32: memoryview | None = None

    def apply_features(self, features: int) -> None:
        """Take RING_EVENT_IDX / RING_INDIRECT_DESC from the negotiated feature bits."""
        self.event_idx = bool(features & C.bit(C.RING_EVENT_IDX))
        self.indirect = bool(features & C.bit(C.RING_INDIRECT_DESC))

    def check_layout(self) -> None:
        """Raise :class:`InvalidQueueError` unless size and ring addresses are usable."""
        size = self.size
        if not 1 <= size <= self.max_size or size & (size - 1):
            raise InvalidQueueError(f"{self.name}: size {size} is not a power of two in 1..{self.max_size}")
        if self.memory is None:
            raise InvalidQueueError(f"{self.name}: no guest memory")
        parts = (
            ("descriptor table", self.desc_table, C.desc_table_size(size), C.DESC_TABLE_ALIGN),
            ("avail ring", self.avail_ring, C.avail_ring_size(size, self.event_idx), C.AVAIL_RING_ALIGN),
            ("used ring", self.used_ring, C.used_ring_size(size, self.event_idx), C.USED_RING_ALIGN),
        )
        for what, addr, length, align in parts:
            if addr % align:
                raise InvalidQueueError(f"{self.name}: {what} at {addr:#x} is not {align}-byte aligned")
            try:
                self.memory.view(addr, length)
            except GuestMemoryError:
                raise InvalidQueueError(
                    f"{self.name}: {what} {addr:#x}+{length:#x} is not inside one guest RAM region") from None

    def enable(self) -> None:
        """Validate the layout and start using the rings (QueueReady=1 / vring enable)."""
        self.check_layout()
        mem = self.memory
        size = self.size
        self._desc = memoryview(mem.view(self.desc_table, C.desc_table_size(size)))
        self._avail = memoryview(mem.view(self.avail_ring, C.avail_ring_size(size, self.event_idx))).cast("H")
        used = memoryview(mem.view(self.used_ring, C.used_ring_size(size, self.event_idx)))
        self._used16 = used.cast("H")
        self._used32 = used[:4 + C.USED_ELEM_SIZE * size].cast("I")
        self._signalled_used = self.next_used
        self._signalled_valid = False
        self.broken = False
        self.ready = True
        if not self.notify_wanted:
            self.suppress_notifications()  # the device polls (the rings moved: vhost-user remapped them)
        elif self.event_idx:
            self.set_avail_event(self.next_avail)  # kick me for the first buffer (matters after takeover)

    def disable(self) -> None:
        self.ready = False

    def load_used_idx(self) -> None:
        """Continue from the used idx found in the ring (a vhost-user back end taking over a
        live queue: SET_VRING_BASE gives next_avail, the ring itself holds the used idx)."""
        self.next_used = self.used_idx()
        self._signalled_used = self.next_used

    # -- avail side ---------------------------------------------------------------------

    def avail_idx(self) -> int:
        return self._avail[1]

    def avail_flags(self) -> int:
        return self._avail[0]

    def used_event(self) -> int:
        return self._avail[2 + self.size]

    def pending(self) -> int:
        """Chains the driver has made available that :meth:`pop` has not taken yet."""
        if not self.ready or self.broken:
            return 0
        return (self.avail_idx() - self.next_avail) & 0xFFFF

    def set_avail_event(self, idx: int) -> None:
        """Ask the driver (EVENT_IDX) to notify once avail idx moves past ``idx``."""
        self._used16[2 + 4 * self.size] = idx & 0xFFFF

    def set_no_notify(self, suppress: bool) -> None:
        """Without EVENT_IDX: VIRTQ_USED_F_NO_NOTIFY tells the driver kicks are not needed."""
        self._used16[0] = C.VIRTQ_USED_F_NO_NOTIFY if suppress else 0

    def suppress_notifications(self) -> None:
        """The device will look at the ring on its own (a period clock pops before it consumes):
        ask the driver not to kick (spec 2.7.10: VIRTQ_USED_F_NO_NOTIFY, or with EVENT_IDX an
        avail_event the avail idx has already passed) until :meth:`enable_notification`."""
        self.notify_wanted = False
        if not self.ready or self.broken:
            return
        if self.event_idx:
            self.set_avail_event(self.next_avail - 1)
        else:
            self.set_no_notify(True)

    def enable_notification(self) -> bool:
        """Ask for a kick on the next new buffer; True if buffers arrived meanwhile (pop again)."""
        self.notify_wanted = True
        if not self.ready or self.broken:
            return False
        if self.event_idx:
            self.set_avail_event(self.next_avail)
        else:
            self.set_no_notify(False)
        full_barrier()
        return self.avail_idx() != self.next_avail

    def pop(self) -> DescriptorChain | None:
        """The next valid chain, or None when the ring is empty (or not ready, or broken, or
        this turn's budget is spent: see :meth:`begin_turn`).

        With EVENT_IDX, avail_event follows ``next_avail`` (as QEMU does), so the driver kicks
        when it adds a buffer after those the device has taken; an empty ring re-checks after
        re-arming. A device that stops popping before the ring is empty gets no kick for
        buffers added meanwhile and must come back on its own (timer). Malformed chains are
        returned to the driver and skipped (see module doc). The chain counts in
        :attr:`in_flight` until :meth:`add_used` (or :meth:`undo_pop`) gives it back.
        """
        while True:
            if not self.ready or self.broken:
                return None
            avail_idx = self._avail[1]  # (avail_idx(), without the call: once per period and more)
            if avail_idx == self.next_avail:
                if not self.event_idx or not self.notify_wanted or not self.enable_notification():
                    return None
                continue
            if self._turn_left is not None:
                if self._turn_left <= 0:
                    self._turn_exhausted = True
                    return None
                self._turn_left -= 1
            try:
                head = self._next_head(avail_idx)
            except _BrokenRing as e:
                self._fault(e.kind, str(e))
                return None
            if self.event_idx and self.notify_wanted:
                self.set_avail_event(self.next_avail)
            try:
                chain = parse_chain(self.memory, self._desc, self.size, head, self.indirect, self.epoch)
            except ChainError as e:
                self._fault(e.kind, f"chain head {head}: {e}; returned to the driver with length 0")
                self._put_used(head, 0)
                if self.signal_used is not None:
                    self.signal_used()
                continue
            self.in_flight += 1
            if log.isEnabledFor(TRACE):
                log.log(TRACE, "virtio %s: pop %r: %s", self.name, chain,
                        " ".join(f"{a:#x}+{n}{'w' if f & C.VIRTQ_DESC_F_WRITE else 'r'}"
                                 for a, n, f in chain.descriptors))
            return chain

    def undo_pop(self, chain: DescriptorChain) -> None:
        """Put ``chain``, the last one popped, back on the avail side (a device that cannot
        handle it yet); :meth:`pop` returns it again."""
        if chain.epoch != self.epoch or chain.returned:
            raise ValueError(f"{self.name}: chain {chain.head} is not held by the device")
        chain.returned = True
        self.in_flight -= 1
        self.next_avail = (self.next_avail - 1) & 0xFFFF

    def _next_head(self, avail_idx: int) -> int:
        pending = (avail_idx - self.next_avail) & 0xFFFF
        if pending > self.size:
            raise _BrokenRing(QueueFault.AVAIL_IDX_JUMP,
                              f"avail idx {avail_idx} is {pending} ahead of {self.next_avail}, "
                              f"more than the queue size {self.size}")
        if self.in_flight >= self.size:
            # a driver cannot have more buffers available than descriptors it owns: these
            # are heads the device still holds, published again (spec 2.7.13.3)
            raise _BrokenRing(QueueFault.IN_FLIGHT_EXCEEDED,
                              f"virtqueue size exceeded: {pending} more chains available while the "
                              f"device holds {self.in_flight} of {self.size}")
        head = self._avail[2 + self.next_avail % self.size]
        if head >= self.size:
            raise _BrokenRing(QueueFault.HEAD_OUT_OF_RANGE,
                              f"avail ring entry {self.next_avail % self.size} names head {head} "
                              f">= queue size {self.size}")
        self.next_avail = (self.next_avail + 1) & 0xFFFF
        return head

    def _fault(self, kind: QueueFault, detail: str) -> None:
        """The one place a driver error on this queue is reported (log, hook, reset request)."""
        if self.on_fault is not None:
            try:
                self.on_fault(self, kind, detail)
            except Exception:
                log.exception("virtio %s: on_fault hook raised", self.name)
        # the kind is part of the format: each kind is rate-limited on its own
        if not kind.breaks_ring:
            guest_error(log, f"virtio %s: %s [{kind.name}]", self.name, detail)
            return
        self.broken = True
        guest_error(log, f"virtio %s: broken avail ring: %s [{kind.name}]; queue stopped until reset",
                    self.name, detail)
        if self.request_reset is not None:
            self.request_reset(f"{self.name}: {detail}")

    # -- turns (fairness between queues and timers on the device loop) ----------------------

    def begin_turn(self) -> None:
        """A front end starts serving a notification: :meth:`pop` may take ``size`` chains."""
        self._turn_left = self.size
        self._turn_exhausted = False

    def end_turn(self) -> bool:
        """The notification is served; True if :meth:`pop` stopped on the budget with chains
        still available (the front end serves the queue again in a later loop turn).
        Outside a turn (device timers) :meth:`pop` is not budgeted."""
        exhausted = self._turn_exhausted
        self._turn_left = None
        self._turn_exhausted = False
        return exhausted and self.pending() > 0

    # -- used side ----------------------------------------------------------------------

    def add_used(self, chain: DescriptorChain, written: int) -> None:
        """Return a chain to the driver; ``written`` bytes of its writable part are valid."""
        if chain.epoch != self.epoch:
            log.debug("virtio %s: chain %d was popped before a reset (or from another queue): dropped",
                      self.name, chain.head)
            return
        if chain.returned:
            log.error("virtio %s: device bug: chain %d completed twice; the second time ignored",
                      self.name, chain.head)
            return
        chain.returned = True
        self.in_flight -= 1
        if not self.ready:
            log.debug("virtio %s: add_used on a queue that is not ready (disabled?): dropped", self.name)
            return
        head = chain.head
        if written > chain.writable_len:
            log.warning("virtio %s: device claims %d bytes written to chain %d which has only %d "
                        "writable bytes; clamped", self.name, written, head, chain.writable_len)
            written = chain.writable_len
        self._put_used(head, written)

    def _put_used(self, head: int, written: int) -> None:
        if log.isEnabledFor(TRACE):
            log.log(TRACE, "virtio %s: used head %d len %d", self.name, head, written)
        slot = self.next_used % self.size
        self._used32[1 + 2 * slot] = head
        self._used32[2 + 2 * slot] = written
        self.next_used = (self.next_used + 1) & 0xFFFF
        self._used16[1] = self.next_used  # after the element: x86 keeps stores in order

    def used_idx(self) -> int:
        return self._used16[1]

    def needs_notification(self) -> bool:
        """Should the driver be interrupted for the used entries added since the last call?

        Spec 2.7.10: with EVENT_IDX only when used idx passed ``used_event``, otherwise unless
        the driver set VIRTQ_AVAIL_F_NO_INTERRUPT. Never when nothing was added.
        """
        if not self.ready:
            return False
        full_barrier()  # our used idx store must be visible before we read the driver's flags
        new = self.next_used
        old = self._signalled_used
        valid = self._signalled_valid
        self._signalled_used = new
        self._signalled_valid = True
        if old == new:
            return False
        if self.event_idx:
            return not valid or need_event(self.used_event(), new, old)
        return not self.avail_flags() & C.VIRTQ_AVAIL_F_NO_INTERRUPT

    def __repr__(self) -> str:
        return (f"SplitQueue({self.name}, size={self.size}, ready={self.ready}, "
                f"avail={self.next_avail}, used={self.next_used}, in_flight={self.in_flight})")
