"""Where PCM I/O messages go once accepted: the data plane interface and a placeholder.

The control plane drives a data plane through five calls (``submit``, ``start``, ``stop``,
``release``, ``reset``). The real one (audio back ends) is a later piece of work;
:class:`PlaceholderDataPlane` only keeps the guest's audio clock running:

* messages are held while the stream is prepared or stopped (playback pre-buffering, the
  capture buffer queued before START, pause);
* while the stream runs, a per-stream clock completes the oldest message each time its
  duration (frames / rate) has elapsed: playback frames are discarded, capture messages are
  filled with silence;
* messages for a stream that is not prepared are returned with IO_ERR.

Pacing is not optional: the Linux driver advances its hardware pointer by one period per
completion, so completing a whole buffer at once wraps the pointer back to where it was and
ALSA sees no progress (``aplay`` fails with EIO after its timeout).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Protocol

from pyvmm_snd import iomsg
from pyvmm_snd.errors import GuestWarnings
from pyvmm_snd.spec import Direction, QueueIndex, Status
from pyvmm_snd.stream import PcmStream, StreamState

if TYPE_CHECKING:
    from pyvmm.virtio.device import DeviceContext

    from pyvmm_snd.iomsg import IoMessage

log = logging.getLogger(__name__)

MIN_TICK = 0.001
MAX_LATENESS_PERIODS = 2
"""A clock that fell further behind (busy host) restarts from now instead of bursting."""


class DataPlane(Protocol):
    def submit(self, stream: PcmStream, msg: IoMessage) -> None:
        """A valid I/O message for ``stream`` arrived."""

    def start(self, stream: PcmStream) -> None:
        """START was accepted (state is already STARTED)."""

    def stop(self, stream: PcmStream) -> None:
        """STOP was accepted (state is already STOPPED)."""

    def release(self, stream: PcmStream) -> None:
        """RELEASE: return every pending message of ``stream`` before this call returns
        (the RELEASE response is written after it)."""

    def reset(self) -> None:
        """Device reset: forget everything without completing it."""


class PlaceholderDataPlane:
    """Paced completions without audio; see the module docstring."""

    HOLD_STATES = (StreamState.PREPARED, StreamState.STARTED, StreamState.STOPPED)

    def __init__(self, ctx: DeviceContext):
        self.ctx = ctx
        self.loop = ctx.loop
        self._timers: dict[int, object] = {}
        self._due: dict[int, float] = {}
        self._streams: dict[int, PcmStream] = {}
        self._warn = GuestWarnings(log)

    def submit(self, stream: PcmStream, msg: IoMessage) -> None:
        if stream.state not in self.HOLD_STATES:
            self._warn("I/O message for stream %d in state %s (not prepared): returned with IO_ERR",
                       stream.id, stream.state.value)
            iomsg.complete(self.ctx, msg, Status.IO_ERR)
            return
        stream.pending.append(msg)
        if stream.state == StreamState.STARTED:
            self._run_clock(stream)

    def start(self, stream: PcmStream) -> None:
        self._run_clock(stream)

    def stop(self, stream: PcmStream) -> None:
        self._stop_clock(stream.id)

    def release(self, stream: PcmStream) -> None:
        self._stop_clock(stream.id)
        messages = stream.take_pending()
        for msg in messages:
            iomsg.complete(self.ctx, msg, Status.OK, notify=False)
        if messages:
            log.debug("stream %d: released %d pending I/O messages", stream.id, len(messages))
            self.ctx.signal_used(_queue_of(stream))

    def reset(self) -> None:
        for stream_id in list(self._timers):
            self._stop_clock(stream_id)

    # -- the per-stream clock ---------------------------------------------------------------

    def _duration(self, stream: PcmStream, msg: IoMessage) -> float:
        params = stream.effective_params
        byte_rate = params.rate_hz * params.frame_bits / 8
        seconds = msg.data_len / byte_rate if msg.data_len else params.period_seconds
        return max(seconds, MIN_TICK)

    def _run_clock(self, stream: PcmStream) -> None:
        if stream.id in self._timers or not stream.pending:
            return
        self._streams[stream.id] = stream
        self._due[stream.id] = self.loop.time() + self._duration(stream, stream.pending[0])
        self._timers[stream.id] = self.loop.call_at(self._due[stream.id], self._tick, stream.id)

    def _stop_clock(self, stream_id: int) -> None:
        timer = self._timers.pop(stream_id, None)
        if timer is not None:
            timer.cancel()
        self._due.pop(stream_id, None)

    def _tick(self, stream_id: int) -> None:
        self._timers.pop(stream_id, None)
        stream = self._streams[stream_id]
        if stream.state != StreamState.STARTED or not stream.pending:
            self._due.pop(stream_id, None)
            return
        msg = stream.pending.popleft()
        self._transfer(stream, msg)
        if not stream.pending:
            self._due.pop(stream_id, None)  # underrun: restart on the next message
            return
        due = self._due[stream_id] + self._duration(stream, stream.pending[0])
        now = self.loop.time()
        if due < now - MAX_LATENESS_PERIODS * stream.effective_params.period_seconds:
            log.debug("stream %d: clock %.3f s late, restarting it", stream_id, now - due)
            due = now
        self._due[stream_id] = due
        self._timers[stream_id] = self.loop.call_at(due, self._tick, stream_id)

    def _transfer(self, stream: PcmStream, msg: IoMessage) -> None:
        # PLACEHOLDER: no back end; playback is discarded, capture is silence.
        frames = iomsg.silence(stream.effective_params, msg.data_len) if msg.direction == Direction.INPUT else None
        iomsg.complete(self.ctx, msg, Status.OK, frames)


def _queue_of(stream: PcmStream) -> QueueIndex:
    return QueueIndex.TX if stream.direction == Direction.OUTPUT else QueueIndex.RX
