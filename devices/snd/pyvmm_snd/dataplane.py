"""Where PCM I/O messages go: the data-plane interface and the data plane.

The control plane drives a data plane through six calls (``prepare``, ``start``, ``stop``,
``release``, ``reset``, ``close``); the device hands it every tx/rx chain through
:meth:`PcmDataPlane.process`. :class:`PcmDataPlane` owns one
:class:`~pyvmm_snd.streamio.StreamIo` per stream (held messages, period clock, host back end):

* :meth:`PcmDataPlane.accept` is the one gate of every I/O message: shape and header
  (:func:`pyvmm_snd.iomsg.parse`, BAD_MSG), stream id and direction (BAD_MSG, as QEMU
  answers), then the stream's own checks in :meth:`StreamIo.accept` (state, exact period
  size, in-flight bound: IO_ERR). A refused message is answered at once with its status
  and one rate-limited log line;
* accepted messages are held while the stream is prepared or stopped (playback
  pre-buffering, the capture buffers queued before START, pause) and consumed one period
  per clock tick while it runs;
* STOP pauses the clock, START resumes it (no PREPARE needed); RELEASE returns every held
  message before the RELEASE response is written and closes the back end (flush).

Pacing is not optional: the Linux driver advances its hardware pointer by one period per
completion, so completing a whole buffer at once wraps the pointer back to where it was and
ALSA sees no progress (``aplay`` fails with EIO after its timeout). Everything runs on the
device event loop and nothing blocks it, so a control request is never stuck behind audio.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Callable, Protocol, Sequence

from pyvmm.events import NO_EVENTS, EventSink
from pyvmm.virtio.constants import VIRTQ_DESC_F_WRITE
from pyvmm_snd import iomsg, rules
from pyvmm_snd.errors import GuestWarnings, RequestError, bad_msg
from pyvmm_snd.spec import QueueIndex, Status
from pyvmm_snd.stream import PcmStream
from pyvmm_snd.streamio import StreamIo

if TYPE_CHECKING:
    from pyvmm.virtio.chain import DescriptorChain
    from pyvmm.virtio.device import DeviceContext

    from pyvmm_snd.backends import PcmBackend

log = logging.getLogger(__name__)


class DataPlane(Protocol):
    def prepare(self, stream: PcmStream) -> None:
        """PREPARE was accepted: the stream's parameters are final until the next SET_PARAMS."""

    def start(self, stream: PcmStream) -> None:
        """START was accepted (state is already STARTED)."""

    def stop(self, stream: PcmStream) -> None:
        """STOP was accepted (state is already STOPPED)."""

    def release(self, stream: PcmStream) -> None:
        """RELEASE: return every pending message of ``stream`` before this call returns
        (the RELEASE response is written after it)."""

    def reset(self) -> None:
        """Device reset: forget everything without completing it."""


class PcmDataPlane:
    """One :class:`StreamIo` per stream and the gate in front of them; see the module docstring."""

    def __init__(self, ctx: DeviceContext, streams: Sequence[PcmStream], backends: Sequence[PcmBackend | None],
                 clock: str = "realtime", gain: Callable[[int], float] = lambda stream_id: 1.0,
                 report_xrun: Callable[[int], bool] = lambda stream_id: False, sink: EventSink = NO_EVENTS):
        """``gain(stream_id)``: linear gain from the stream's controls (0.0 = mute);
        ``report_xrun(stream_id)``: send an XRUN event if negotiated, True if sent;
        ``sink``: the device's event sink (``io`` traces)."""
        self.ctx = ctx
        self.sink = sink
        self.io = [StreamIo(ctx, stream, backend, clock, gain, report_xrun, sink, poll=self.take)
                   for stream, backend in zip(streams, backends, strict=True)]
        self._warn = GuestWarnings(log)

    def process(self, queue_index: QueueIndex) -> None:
        """A kick: take every new chain off the tx or rx queue, then decide whether the driver
        should kick again (see :meth:`update_notifications`)."""
        self.take(queue_index)
        self.update_notifications(queue_index)

    def take(self, queue_index: QueueIndex) -> None:
        """Take every new chain off the tx or rx queue (a kick, or a real-time clock's tick)."""
        queue = self.ctx.queues[queue_index]
        refused = False
        while (chain := queue.pop()) is not None:
            if self.accept(queue_index, chain) is not Status.OK:
                refused = True
        if refused:  # held messages are completed (and signalled) by their stream's clock
            self.ctx.signal_used(queue_index)

    def update_notifications(self, queue_index: QueueIndex) -> None:
        """While a stream of this queue runs on a real-time clock, the clock pops the queue at
        every tick before it consumes (:meth:`StreamIo.poll`), so the driver's kicks would only
        cost a second wake-up per period: they are suppressed. Otherwise the device wants them;
        buffers made available in between are taken at once."""
        queue = self.ctx.queues[queue_index]
        if any(io.polls_queue for io in self.io if io.queue_index == queue_index):
            if queue.notify_wanted:
                queue.suppress_notifications()
        elif not queue.notify_wanted and queue.enable_notification():
            self.take(queue_index)

    def accept(self, queue_index: QueueIndex, chain: DescriptorChain) -> Status:
        """Every check an I/O message goes through, in order; OK means it is held by its stream,
        any other status has been written to the message and the chain returned."""
        msg = None
        try:
            msg = iomsg.parse(queue_index, chain)
            if self.sink.tracing("io"):
                msg.sink, msg.queued_t = self.sink, self.sink.since_start()
            if not 0 <= msg.stream_id < len(self.io):
                raise bad_msg(f"stream {msg.stream_id} does not exist")
            io = self.io[msg.stream_id]
            if io.playback != (queue_index == QueueIndex.TX):
                raise bad_msg(f"stream {io.stream.id} is {io.stream.direction.name.lower()}, "
                              f"not {msg.direction.name.lower()}")
            self._check_layout(queue_index, chain, msg)
            io.accept(msg)
        except RequestError as exc:
            self._warn("virtio-snd: %s I/O message refused (%s): %s", queue_index.name, exc.status.name, exc)
            if exc.rule is not None and msg is not None:
                self.sink.violation(exc.rule, f"{queue_index.name} message head {chain.head}, stream "
                                    f"{msg.stream_id}, {msg.data_len} bytes -> {exc.status.name}: {exc}",
                                    stream=msg.stream_id, state=self._state_of(msg.stream_id))
            self.sink.trace("io", "reject", stream=-1 if msg is None else msg.stream_id, queue=int(queue_index),
                            head=chain.head, status=exc.status.name, reason=str(exc))
            iomsg.reject(self.ctx, queue_index, chain, exc.status)
            return exc.status
        if msg.sink is not None:
            msg.sink.trace("io", "queued", stream=msg.stream_id, dir=iomsg.DIR_NAMES[msg.direction],
                           bytes=msg.data_len, queue=int(queue_index), head=chain.head,
                           descs=[[length, "w" if flags & VIRTQ_DESC_F_WRITE else "r"]
                                  for _addr, length, flags in chain.descriptors],
                           held=len(io.held))
        return Status.OK

    def _check_layout(self, queue_index: QueueIndex, chain: DescriptorChain, msg: iomsg.IoMessage) -> None:
        """Tolerated, but reported: frames in device-writable buffers on tx, in readable ones on rx."""
        if queue_index == QueueIndex.TX and chain.writable_len > iomsg.STATUS_SIZE:
            self.sink.violation(rules.TX_DEVICE_WRITABLE, f"TX message head {chain.head}: {chain.writable_len} "
                                f"device-writable bytes (the status needs {iomsg.STATUS_SIZE})",
                                stream=msg.stream_id)
        elif queue_index == QueueIndex.RX and chain.readable_len > iomsg.XFER_SIZE:
            self.sink.violation(rules.RX_DEVICE_READABLE, f"RX message head {chain.head}: {chain.readable_len} "
                                f"device-readable bytes (the header is {iomsg.XFER_SIZE})", stream=msg.stream_id)

    def _state_of(self, stream_id: int) -> str | None:
        return self.io[stream_id].stream.state.value if 0 <= stream_id < len(self.io) else None

    def prepare(self, stream: PcmStream) -> None:
        self.io[stream.id].prepare()

    def start(self, stream: PcmStream) -> None:
        io = self.io[stream.id]
        io.start()
        self.update_notifications(io.queue_index)

    def stop(self, stream: PcmStream) -> None:
        io = self.io[stream.id]
        io.stop()
        self.update_notifications(io.queue_index)

    def release(self, stream: PcmStream) -> None:
        io = self.io[stream.id]
        io.release()
        self.update_notifications(io.queue_index)

    def freeze(self) -> None:
        """The VM is paused (QMP ``stop``): no clock runs, so the driver may kick again."""
        for io in self.io:
            io.freeze()
        for queue_index in (QueueIndex.TX, QueueIndex.RX):
            self.update_notifications(queue_index)

    def thaw(self) -> None:
        for io in self.io:
            io.thaw()
        for queue_index in (QueueIndex.TX, QueueIndex.RX):
            self.update_notifications(queue_index)

    def reset(self) -> None:
        for io in self.io:
            io.reset()

    def close(self) -> None:
        """The VMM exits: stop every clock and flush every back end."""
        for io in self.io:
            io.close()
