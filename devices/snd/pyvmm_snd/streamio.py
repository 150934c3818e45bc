"""One PCM stream's data path: the I/O messages it holds, its period clock, its host back end,
its xrun accounting. :class:`StreamIo` is the single owner of all of them.

Every I/O message for the stream goes through :meth:`StreamIo.accept`, which applies the
stream's checks (state, exact period size, in-flight bound) and either holds the message or
raises :class:`~pyvmm_snd.errors.RequestError` with the spec status (``IO_ERR``). Held
messages live here until the clock consumes them, RELEASE flushes them or a reset drops
them. The back end's :class:`~pyvmm_snd.backends.BackendParams` are built once, at PREPARE.

Audio moves between guest RAM and the back end in pieces of at most :data:`CHUNK_BYTES`
(whole frames), so no host buffer grows with the period the guest chose.

Each clock tick is one period of the stream's audio clock:

* playback: the oldest queued message's frames go to the back end (scaled by the stream's
  volume/mute controls; bit-exact at 0 dB) and the message is completed (status OK,
  ``latency_bytes`` = what the back end holds but has not played yet). The guest's hardware
  pointer advances one period per completion, so completions *are* the guest's audio clock;
* capture: one period is read from the back end into the oldest queued message, which is
  completed with used length = frames + 8.

With ``clock=realtime`` (:class:`~pyvmm_snd.clock.RealTimeClock`, absolute deadlines) a tick
that finds no message is an xrun: playback feeds the back end silence (never a replay),
capture drops the period it read (also when completing would give the driver a whole buffer
without it queuing anything new:
see :meth:`StreamIo._capture_would_wrap`); the clock keeps running. A gap of consecutive xrun periods
is counted once, sends one ``VIRTIO_SND_EVT_PCM_XRUN`` if the driver negotiated
``EVT_XRUNS``, and is logged at INFO when data flows again (a gap that the STOP ends is the
normal end of a drain and is logged at DEBUG). With ``clock=fast``
(:class:`~pyvmm_snd.clock.FastClock`) a tick happens only when a message is waiting, so there
are no xruns; the last held message waits for the next one (or one period duration) before
it completes, because a burst of a whole buffer of completions moves the guest's hardware
pointer by exactly its buffer size, which ALSA cannot tell from no progress at all (arecord
then fails with EIO). ``clock=fast`` applies to playback only: capture always runs on the
real-time clock (the device cannot see how fast the guest application reads; filling faster
overruns the guest's buffer and arecord restarts from a new run).

A back end that fails (cannot open, write error) is logged once and the stream carries on
without the host: the guest's clock never stops because of the host.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterator

from pyvmm.events import NO_EVENTS, EventSink
from pyvmm_snd import iomsg, pcm_format, rules
from pyvmm_snd.backends import BackendParams, PcmBackend
from pyvmm_snd.clock import FastClock, RealTimeClock
from pyvmm_snd.errors import RequestError
from pyvmm_snd.faults import StreamFaults
from pyvmm_snd.spec import Direction, QueueIndex, Status
from pyvmm_snd.stream import PcmParams, PcmStream, StreamState

if TYPE_CHECKING:
    from pyvmm.conformance import Rule
    from pyvmm.virtio.device import DeviceContext

    from pyvmm_snd.iomsg import IoMessage

log = logging.getLogger(__name__)

CHUNK_BYTES = 64 << 10
"""Largest piece of audio handed to or asked of a back end in one call (rounded down to whole
frames): host memory per call stays bounded whatever the period size."""

HOLD_STATES = (StreamState.PREPARED, StreamState.STARTED, StreamState.STOPPED)
"""States in which the stream takes I/O messages (spec: after PREPARE, until RELEASE)."""


@dataclass
class StreamIoStats:
    """Counters of one stream over the device's life (all runs)."""

    periods: int = 0
    """Messages completed by the clock (not counting RELEASE flushes)."""
    bytes: int = 0
    xruns: int = 0
    """Gaps: runs of consecutive periods without a guest buffer."""
    xrun_periods: int = 0
    xrun_events: int = 0
    flushed: int = 0
    """Messages returned unplayed/unfilled by RELEASE."""
    refused: int = 0
    """Messages answered IO_ERR by :meth:`StreamIo.accept` (state, size, in-flight bound)."""
    backend_errors: int = 0
    injected_errors: int = 0
    """Messages completed with an injected error status (``fail_next``)."""


class StreamIo:
    """Held messages + clock + back end of one stream (see the module docstring)."""

    def __init__(self, ctx: DeviceContext, stream: PcmStream, backend: PcmBackend | None, clock_kind: str,
                 gain: Callable[[int], float], report_xrun: Callable[[int], bool], sink: EventSink = NO_EVENTS,
                 poll: Callable[[QueueIndex], object] | None = None):
        self.ctx = ctx
        self.sink = sink
        """The device's event sink: xruns and injected faults are traced through it."""
        self.stream = stream
        self.backend = backend
        self.clock_kind = clock_kind if stream.direction == Direction.OUTPUT else "realtime"
        """Capture always runs in real time: the device cannot see the guest application read,
        and filling the guest's buffers faster than that overruns it (arecord restarts)."""
        self.gain = gain
        self.report_xrun = report_xrun
        self.poll = poll
        """Takes the new messages off the stream's queue (the data plane's ``take``): the
        real-time clock calls it before it consumes, so the driver need not kick meanwhile."""
        self.playback = stream.direction == Direction.OUTPUT
        """The stream's direction is fixed by its configuration."""
        self.stats = StreamIoStats()
        self.queue_index = QueueIndex.TX if self.playback else QueueIndex.RX
        self.held: deque[IoMessage] = deque()
        """Accepted messages not yet returned to the driver, oldest first."""
        self.max_held = ctx.queues[self.queue_index].size
        """No driver can have more chains in flight on a queue than its size; more held
        messages means the driver re-published chains the device still holds."""
        self.geometry: PcmParams | None = None
        """The stream's parameters as of the last PREPARE (period and buffer size, rate)."""
        self.params: BackendParams | None = None
        """The same for the back end, built once at PREPARE; None if the data plane cannot
        convert the format (the stream then runs without host audio)."""
        self.clock: RealTimeClock | FastClock | None = None
        self._backend_ok = False
        self._gap = 0
        """Periods of the xrun gap in progress (0: data is flowing)."""
        self._hold_timer = None
        """Fast clock: completes the last held message if no other one follows it."""
        self._releasing_last = False
        self._completed_since_submit = 0
        self.faults = StreamFaults(stream.id, ctx, sink)
        """Faults armed from the host (monitor, QMP): how consumed messages are completed."""
        self.frozen = False
        """The VM is paused (QMP ``stop``): the clock stands still until :meth:`thaw`."""
        self._thaw_clock = False

    # -- the gate --------------------------------------------------------------------------------

    def accept(self, msg: IoMessage) -> None:
        """Hold ``msg`` for the clock, or raise RequestError(IO_ERR) saying why not.

        The data part must be exactly one period: Linux always sends ``period_bytes``, the
        spec says a driver SHOULD, and the clock completes one message per period, so any
        other length would make the guest's position run ahead of or behind real time."""
        stream = self.stream
        if stream.state not in HOLD_STATES or self.geometry is None:
            self._refuse(f"stream {stream.id} is {stream.state.value}, not prepared", rules.IO_NOT_PREPARED)
        period = self.geometry.period_bytes
        if msg.data_len != period:
            self._refuse(f"stream {stream.id}: message carries {msg.data_len} bytes of frames, "
                         f"the negotiated period is {period}",
                         rules.TX_PERIOD_SIZE if self.playback else rules.RX_PERIOD_SIZE)
        if len(self.held) >= self.max_held:
            self._refuse(f"stream {stream.id} already holds {len(self.held)} messages (the queue size): "
                         f"the driver re-published chains in flight")
        self.held.append(msg)
        self._completed_since_submit = 0
        if self.clock_kind == "fast":  # a real-time clock ticks regardless
            self._cancel_hold()
            if self.clock is not None and stream.state == StreamState.STARTED:
                self.clock.notify()

    def _refuse(self, reason: str, rule: Rule | None = None) -> None:
        self.stats.refused += 1
        raise RequestError(Status.IO_ERR, reason, rule)

    # -- commands ------------------------------------------------------------------------------

    def prepare(self) -> None:
        """PREPARE: fix the run's parameters. Messages held under older ones go back with IO_ERR."""
        self.geometry = self.stream.effective_params
        try:
            self.params = BackendParams.from_stream(self.stream.id, self.stream.direction, self.geometry)
        except ValueError as exc:
            self.params = None
            log.warning("stream %d: %s; the stream runs without host audio", self.stream.id, exc)
        stale = [m for m in self.held if m.data_len != self.geometry.period_bytes]
        if stale:
            self.held = deque(m for m in self.held if m.data_len == self.geometry.period_bytes)
            for msg in stale:
                iomsg.complete(self.ctx, msg, Status.IO_ERR, notify=False)
            self.ctx.signal_used(self.queue_index)

    def fail_next(self, count: int, status: Status) -> None:
        """Error injection (the monitor's ``fail``): the next ``count`` messages the clock
        consumes complete with ``status`` instead of OK, nothing played or recorded."""
        self.faults.fail(count, status)

    @property
    def failures_pending(self) -> int:
        return self.faults.fail_count

    def start(self) -> None:
        if self.clock is None:
            self._open()
        elif self.frozen:
            self._thaw_clock = True
        else:
            self.clock.resume()

    def stop(self) -> None:
        self._thaw_clock = False
        self._cancel_hold()
        if self.clock is not None:
            self.clock.pause()
        self._end_gap(trailing=True)

    def release(self) -> None:
        """Return every held message (status OK, nothing played/recorded), close the back end."""
        self._stop_clock()
        self.stats.flushed += self.faults.flush()
        messages, self.held = self.held, deque()
        for msg in messages:
            iomsg.complete(self.ctx, msg, Status.OK, notify=False)
        self.stats.flushed += len(messages)
        if messages:
            log.debug("stream %d: released %d pending I/O messages", self.stream.id, len(messages))
            self.ctx.signal_used(self.queue_index)
        self._close_backend()

    def reset(self) -> None:
        """Device reset: stop and drop every held message without completing it."""
        self._stop_clock()
        self._close_backend()
        self.faults.reset()
        self.held.clear()
        self.geometry = self.params = None

    # -- the run ----------------------------------------------------------------------------------

    def _open(self) -> None:
        geometry = self.geometry or self.stream.effective_params
        self._backend_ok = False
        self._completed_since_submit = 0
        if self.backend is not None and self.params is not None:
            try:
                self.backend.open(self.params)
                self._backend_ok = True
            except Exception as exc:  # BackendError, a host I/O error: never fatal
                self.stats.backend_errors += 1
                log.warning("stream %d: back end %s cannot play %s: %s; the stream runs without host audio",
                            self.stream.id, self.backend.describe(), geometry, exc)
        name = f"stream {self.stream.id}"
        if self.clock_kind == "fast":
            self.clock = FastClock(self.ctx.loop, self._tick, name=name)
        else:
            periods = max(1, geometry.buffer_bytes // geometry.period_bytes)
            self.clock = RealTimeClock(self.ctx.loop, geometry.period_seconds, self._tick,
                                       name=name, max_catchup=max(1, periods // 2))
        log.debug("stream %d: run starts (%s, %s clock)", self.stream.id, geometry, self.clock_kind)
        if self.frozen:
            self._thaw_clock = True  # starts with the first period when the VM runs again
        else:
            self.clock.start()

    def _stop_clock(self) -> None:
        self._thaw_clock = False
        self._cancel_hold()
        if self.clock is not None:
            self.clock.stop()
            self.clock = None
        self._end_gap(trailing=True)

    def _close_backend(self) -> None:
        if self.backend is not None and self._backend_ok:
            try:
                self.backend.close()
            except Exception as exc:
                log.warning("stream %d: closing back end %s failed: %s", self.stream.id, self.backend.describe(), exc)
        self._backend_ok = False

    # -- VM pause (QMP stop/cont) ----------------------------------------------------------------

    def freeze(self) -> None:
        """The VM is paused: no period passes (nothing completes, no xrun counts) until
        :meth:`thaw`; the period in progress finishes after the pause (RealTimeClock.pause)."""
        self.frozen = True
        self._cancel_hold()
        self.faults.freeze()
        if self.clock is not None and self.clock.running:
            self.clock.pause()
            self._thaw_clock = True

    def thaw(self) -> None:
        self.frozen = False
        self.faults.thaw()
        if self._thaw_clock and self.clock is not None and self.stream.state == StreamState.STARTED:
            self.clock.resume()
        self._thaw_clock = False

    def close(self) -> None:
        """The VMM exits: stop the clock, flush the back end."""
        self._stop_clock()
        self._close_backend()

    @property
    def polls_queue(self) -> bool:
        """A real-time clock is running: every tick pops the queue first (see ``poll``)."""
        return (self.poll is not None and self.clock_kind == "realtime" and self.clock is not None
                and self.clock.running and self.stream.state == StreamState.STARTED)

    def _tick(self, tick: int) -> bool:
        """One period; returns True when more messages wait (the fast clock ticks again)."""
        if self.stream.state != StreamState.STARTED:
            return False
        if self.clock_kind == "realtime" and self.poll is not None:
            self.poll(self.queue_index)
        if not self.held or (not self.playback and self._capture_would_wrap()):
            if self.clock_kind != "fast":
                self._xrun()
            return False
        if self.clock_kind == "fast" and len(self.held) == 1 and not self._releasing_last:
            self._hold_last()
            return False
        self._releasing_last = False
        msg = self.held.popleft()
        if msg.sink is not None and isinstance(self.clock, RealTimeClock):  # for the io trace
            msg.deadline = self.clock.deadline(tick)
        if self._gap:
            self._end_gap(trailing=False)
        if self.playback:
            self._play(msg)
        else:
            self._record(msg)
        self.stats.periods += 1
        self.stats.bytes += msg.data_len
        return bool(self.held)

    def _capture_would_wrap(self) -> bool:
        """Capture never completes a whole buffer's worth of messages without the driver queuing
        a new one in between: if the driver's period work has not run meanwhile (a busy guest),
        its hardware pointer would move by exactly the buffer size, ALSA would see no progress
        and arecord fails with EIO. A dropped period (an overrun) is the lesser harm."""
        if self.playback or self.geometry is None:
            return False
        periods = self.geometry.buffer_bytes // self.geometry.period_bytes
        return periods >= 2 and self._completed_since_submit >= periods - 1

    def _hold_last(self) -> None:
        if self._hold_timer is None and self.geometry is not None:
            self._hold_timer = self.ctx.loop.call_later(self.geometry.period_seconds, self._release_last)

    def _release_last(self) -> None:
        self._hold_timer = None
        if self.stream.state == StreamState.STARTED and self.held:
            self._releasing_last = True
            self._tick(0)
            self._releasing_last = False

    def _cancel_hold(self) -> None:
        if self._hold_timer is not None:
            self._hold_timer.cancel()
            self._hold_timer = None

    def _injected_failure(self, msg: IoMessage) -> bool:
        status = self.faults.take_failure()
        if status is None:
            return False
        self.stats.injected_errors += 1
        log.info("stream %d: I/O message completed with injected %s (%d more to fail)",
                 self.stream.id, status.name, self.faults.fail_count)
        self.faults.complete(msg, status, latency_bytes=self._latency())
        return True

    def _chunks(self, nbytes: int) -> Iterator[int]:
        """``nbytes`` cut into pieces of at most CHUNK_BYTES, each a whole number of frames."""
        geometry = self.geometry or self.stream.effective_params
        unit = geometry.frame_bits  # bytes of 8 frames: whole bytes and whole samples for every format
        step = max(1, CHUNK_BYTES // unit) * unit
        for start in range(0, nbytes, step):
            yield min(step, nbytes - start)

    def _play(self, msg: IoMessage) -> None:
        if self.faults.fail_count and self._injected_failure(msg):
            return
        if self._backend_ok:  # else nothing to feed: do not even read the guest's frames
            if msg.frames is not None and msg.data_len <= CHUNK_BYTES:  # the header in its own buffer
                self._feed(b"".join(msg.frames))
            else:
                reader = msg.chain.reader()
                reader.skip(iomsg.XFER_SIZE)
                for n in self._chunks(msg.data_len):
                    if not self._backend_ok:
                        break
                    self._feed(reader.read(n))
        self.faults.complete(msg, Status.OK, latency_bytes=self._latency())

    def _feed(self, data: bytes) -> None:
        """One piece of the guest's frames to the back end, gain applied."""
        try:
            self.backend.write(self._scaled(data))
        except Exception as exc:
            self._backend_failed(exc)

    def _record(self, msg: IoMessage) -> None:
        self._completed_since_submit += 1
        if self._injected_failure(msg):
            return
        writer = msg.chain.writer()
        for n in self._chunks(msg.data_len):
            data = self._backend_call(lambda backend: backend.read(n))
            if data is None or len(data) != n:
                data = iomsg.silence(self.geometry or self.stream.effective_params, n)
            else:
                data = self._scaled(data)
            writer.write(data)
        self.faults.complete(msg, Status.OK, latency_bytes=self._latency(), writer=writer)

    def _scaled(self, data: bytes) -> bytes:
        """The stream's volume/mute controls applied (``data`` itself at 0 dB unmuted)."""
        gain = self.gain(self.stream.id)
        if gain == 1.0 or self.params is None:
            return data
        return pcm_format.apply_gain(data, self.params.format, self.params.channels, gain, gain == 0.0)

    def _latency(self) -> int:
        if not self._backend_ok or self.backend is None:
            return 0
        try:
            return max(0, min(int(self.backend.latency_bytes), 0xFFFFFFFF))
        except Exception:
            return 0

    def _backend_call(self, fn):
        """``fn(backend)``'s result; None without a working back end. A failing back end is
        logged once and closed: the stream carries on without host audio."""
        if not self._backend_ok or self.backend is None:
            return None
        try:
            return fn(self.backend)
        except Exception as exc:
            self._backend_failed(exc)
            return None

    def _backend_failed(self, exc: Exception) -> None:
        self.stats.backend_errors += 1
        log.warning("stream %d: back end %s failed: %s; the stream carries on without host audio",
                    self.stream.id, self.backend.describe(), exc)
        self._close_backend()

    # -- xruns ------------------------------------------------------------------------------------

    def _xrun(self) -> None:
        geometry = self.geometry or self.stream.effective_params
        for n in self._chunks(geometry.period_bytes):
            if not self._backend_ok:
                break
            if self.playback:
                self._backend_call(lambda backend: backend.play_silence(n))
            else:
                self._backend_call(lambda backend: backend.read(n))  # a live source keeps its pace
        self.stats.xrun_periods += 1
        if self.sink.tracing("io"):
            self.sink.trace("io", "xrun", stream=self.stream.id, dir="playback" if self.playback else "capture",
                            gap_periods=self._gap + 1)
        if self._gap == 0:
            self.stats.xruns += 1
            if self.report_xrun(self.stream.id):
                self.stats.xrun_events += 1
        self._gap += 1

    def _end_gap(self, trailing: bool) -> None:
        if not self._gap:
            return
        periods, self._gap = self._gap, 0
        seconds = periods * (self.geometry.period_seconds if self.geometry else 0.0)
        what = ("underrun: %d periods (%.0f ms) of silence played" if self.playback
                else "overrun: %d periods (%.0f ms) of captured audio dropped (no guest buffer)")
        level = logging.DEBUG if trailing else logging.INFO
        log.log(level, "stream %d: " + what + "%s; %d xruns so far", self.stream.id, periods, seconds * 1e3,
                " at the end of the run" if trailing else "", self.stats.xruns)
