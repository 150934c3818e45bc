"""The event queue: the driver pre-posts empty 8-byte buffers, the device fills one per event.

Events raised while no buffer is posted wait in a bounded backlog and go out, in order, as
soon as buffers arrive. The device holds at most one queue's worth of buffers: a driver that
re-publishes buffers the device still holds gets the extra ones back unused (length 0). The Linux driver posts the whole queue at probe and re-posts each
buffer right after consuming it, so the backlog only fills if the driver stalls.
"""

from __future__ import annotations

import logging
from collections import deque
from typing import TYPE_CHECKING

from pyvmm.events import NO_EVENTS, EventSink
from pyvmm_snd import rules, spec
from pyvmm_snd.errors import GuestWarnings
from pyvmm_snd.spec import EventCode, QueueIndex

if TYPE_CHECKING:
    from pyvmm.virtio.chain import DescriptorChain
    from pyvmm.virtio.device import DeviceContext

log = logging.getLogger(__name__)

EVENT_SIZE = 8
DEFAULT_BACKLOG = 64


class EventQueue:
    def __init__(self, max_backlog: int = DEFAULT_BACKLOG):
        self.ctx: DeviceContext | None = None
        self.buffers: deque[DescriptorChain] = deque()
        """Posted, still empty event buffers (oldest first)."""
        self.backlog: deque[bytes] = deque()
        """Encoded events waiting for a buffer."""
        self.max_backlog = max_backlog
        self.dropped = 0
        self.drop_next = 0
        """Fault injection (``drop-event N``): the next N events are lost instead of delivered."""
        self.sink: EventSink = NO_EVENTS
        """The device's event sink (``evt`` traces); set when the device activates."""
        self._warn = GuestWarnings(log)

    def activate(self, ctx: DeviceContext) -> None:
        self.ctx = ctx
        self.refill()

    def reset(self) -> None:
        """Forget posted buffers (the driver re-posts after reset) and undelivered events."""
        self.ctx = None
        self.buffers.clear()
        self.backlog.clear()
        self.drop_next = 0

    def refill(self) -> None:
        """Take newly posted buffers off the event queue, then deliver any backlog."""
        if self.ctx is None:
            return
        queue = self.ctx.queues[QueueIndex.EVENT]
        while (chain := queue.pop()) is not None:
            if chain.writable_len < EVENT_SIZE or chain.readable_len:
                self._warn("event buffer with %d writable / %d readable bytes (needs %d writable only): "
                            "returned unused", chain.writable_len, chain.readable_len, EVENT_SIZE)
                self.sink.violation(rules.EVENT_BUFFER_READABLE if chain.readable_len else rules.EVENT_BUFFER_SIZE,
                                    f"event buffer head {chain.head}: {chain.writable_len} writable, "
                                    f"{chain.readable_len} readable bytes", queue=int(QueueIndex.EVENT))
                self.ctx.complete(QueueIndex.EVENT, chain, 0)
                continue
            if len(self.buffers) >= queue.size:
                self._warn("event buffer %d beyond the %d the queue can hold (re-published while held): "
                           "returned unused", chain.head, queue.size)
                self.ctx.complete(QueueIndex.EVENT, chain, 0)
                continue
            self.buffers.append(chain)
        self._flush()

    def send(self, event: spec.Event | spec.CtlEvent) -> None:
        """Deliver ``event`` now if a buffer is posted, otherwise keep it for the next buffer."""
        data = bytes(event)
        log.debug("event %s", spec.describe_event(data))
        if self.drop_next:
            self.drop_next -= 1
            log.info("event %s dropped (injected; %d more to drop)", spec.describe_event(data), self.drop_next)
            self.sink.trace("fault", "fire", what="drop_event", desc=spec.describe_event(data),
                            remaining=self.drop_next)
            return
        if len(self.backlog) >= self.max_backlog:
            self.dropped += 1
            lost = self.backlog.popleft()
            self._warn("event backlog full (%d, driver is not posting event buffers): dropped %s",
                        self.max_backlog, spec.describe_event(lost))
            self.sink.trace("evt", "dropped", desc=spec.describe_event(lost), reason="backlog full")
        self.backlog.append(data)
        if self.sink.tracing("evt") and not (self.ctx is not None and self.buffers):
            self.sink.trace("evt", "held", desc=spec.describe_event(data), backlog=len(self.backlog))
        self._flush()

    def _flush(self) -> None:
        if self.ctx is None or not (self.buffers and self.backlog):
            return
        while self.buffers and self.backlog:
            chain = self.buffers.popleft()
            data = self.backlog.popleft()
            written = chain.writer().write(data)
            if self.sink.tracing("evt"):
                self.sink.trace("evt", "sent", desc=spec.describe_event(data), head=chain.head)
            self.ctx.complete(QueueIndex.EVENT, chain, written, notify=False)
        self.ctx.signal_used(QueueIndex.EVENT)

    # -- the events of this device ---------------------------------------------------------

    def jack(self, jack_id: int, connected: bool) -> None:
        code = EventCode.JACK_CONNECTED if connected else EventCode.JACK_DISCONNECTED
        self.send(spec.Event(code=code, data=jack_id))

    def xrun(self, stream_id: int) -> None:
        self.send(spec.Event(code=EventCode.PCM_XRUN, data=stream_id))

    def period_elapsed(self, stream_id: int) -> None:
        self.send(spec.Event(code=EventCode.PCM_PERIOD_ELAPSED, data=stream_id))

    def ctl_notify(self, control_id: int, mask: int) -> None:
        self.send(spec.CtlEvent(code=EventCode.CTL_NOTIFY, control_id=control_id, mask=mask))
