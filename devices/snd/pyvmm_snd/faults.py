"""Faults a driver developer arms from the host to provoke the driver's timing and error paths.

Each stream's :class:`StreamFaults` decides how the messages its clock consumes are completed:

* ``fail N STATUS``: the next N messages complete with ``IO_ERR``/``BAD_MSG`` (nothing played
  or recorded);
* ``late N MS``: the next N messages complete MS milliseconds after their period (the ones
  after them may complete first: the used ring is allowed to be out of order);
* ``stall MS``: nothing completes for MS milliseconds while the clock runs on (audio is
  consumed on time, as a DMA engine would; once the held messages run out the periods are
  xruns), then everything held back completes in one burst;
* ``burst N``: the next N completions are held back and given to the driver at once, which
  moves the guest's hardware pointer by N periods between two interrupts (N = the periods in
  the buffer brings Linux's position back where it was: ALSA takes that for a whole buffer
  played if nothing called the pointer for half a buffer time, else for no progress at all,
  and the stream stalls RUNNING: bug (b) in the README's "Debugging the driver");
* ``needs-reset N``: after the Nth message the device sets DEVICE_NEEDS_RESET.

While the VM is paused (QMP ``stop``: :meth:`StreamFaults.freeze`) the late and stall timers
stand still too, and run what is left of their delay after ``cont``.

Device-wide (:class:`~pyvmm_snd.device.SoundDevice`): ``needs-reset`` now, ``drop-event N``
(the next N events are lost instead of delivered). Arming and every firing are traced
(``fault inject``/``fault fire``, :mod:`pyvmm.trace`). A driver reset forgets everything armed;
RELEASE completes what is held back (status OK) like every other held message.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pyvmm_snd import iomsg
from pyvmm_snd.spec import Status

if TYPE_CHECKING:
    from asyncio import AbstractEventLoop

    from pyvmm.events import EventSink
    from pyvmm.virtio.chain import ChainWriter
    from pyvmm.virtio.device import DeviceContext

    from pyvmm_snd.device import SoundDevice
    from pyvmm_snd.iomsg import IoMessage

log = logging.getLogger(__name__)

MAX_DELAY_MS = 60_000
"""Longest late/stall delay accepted: long enough for any driver timeout, short enough that a
typo cannot park a stream for hours."""
MAX_COUNT = 100_000


@dataclass
class _Held:
    msg: IoMessage
    status: Status
    latency_bytes: int
    writer: ChainWriter | None
    timer: object = None
    deadline: float = 0.0
    """Loop time of the late completion."""


class _Paused:
    """Stands in for a timer while the VM is paused (the stall is still on)."""

    def cancel(self) -> None:
        pass


class StreamFaults:
    """The faults armed for one stream (see the module docstring); owned by its ``StreamIo``."""

    def __init__(self, stream_id: int, ctx: DeviceContext, sink: EventSink):
        self.stream_id = stream_id
        self.ctx = ctx
        self.sink = sink
        self._frozen_at: float | None = None
        """Loop time the VM was paused at (None: running); a driver reset keeps it."""
        self._disarm()

    def _disarm(self) -> None:
        """Nothing armed, nothing held back (new, and after a driver reset)."""
        self.fail_count = 0
        self.fail_status = Status.IO_ERR
        self.late_count = 0
        self.late_ms = 0.0
        self.burst_count = 0
        self.stall_timer = None
        self.reset_after: int | None = None
        self.fired = 0
        self.stall_deadline = 0.0
        self._held: list[_Held] = []
        """Completions held back by a stall or burst, oldest first (later ones queue behind them)."""
        self._late: list[_Held] = []
        """Completions waiting for their ``late`` timer (later ones may overtake them)."""

    # -- arming (monitor and QMP, on the device loop) ------------------------------------------------

    def fail(self, count: int, status: Status) -> None:
        self.fail_count, self.fail_status = check_count(count), status
        self._armed("status", count=count, status=status.name)

    def late(self, count: int, ms: float) -> None:
        self.late_count, self.late_ms = check_count(count), check_delay(ms)
        self._armed("late", count=count, ms=ms)

    def stall(self, ms: float) -> None:
        delay = check_delay(ms)
        if self.stall_timer is not None:
            self.stall_timer.cancel()
        if self._frozen_at is not None:  # armed during a pause: the delay starts at cont
            self.stall_deadline = self._frozen_at + delay / 1e3
            self.stall_timer = _Paused()
        else:
            self.stall_deadline = self.ctx.loop.time() + delay / 1e3
            self.stall_timer = self.ctx.loop.call_at(self.stall_deadline, self._end_stall)
        self._armed("stall", ms=ms)

    def burst(self, count: int) -> None:
        self.burst_count = check_count(count)
        self._armed("burst", count=count)

    def needs_reset_after(self, count: int) -> None:
        self.reset_after = check_count(count) or None
        self._armed("needs_reset", after=count)

    @property
    def pending(self) -> dict[str, object]:
        """What is armed and not fired yet (for ``info`` and QMP)."""
        return {"fail": self.fail_count, "fail_status": self.fail_status.name, "late": self.late_count,
                "late_ms": self.late_ms, "burst": self.burst_count, "stalled": self.stall_timer is not None,
                "needs_reset_after": self.reset_after, "held_back": len(self._held) + len(self._late)}

    @property
    def armed(self) -> bool:
        return bool(self.fail_count or self.late_count or self.burst_count or self.stall_timer is not None
                    or self.reset_after or self._held or self._late)

    # -- the data path (StreamIo, on the device loop) -------------------------------------------------

    def take_failure(self) -> Status | None:
        """The status to fail the message being consumed with, or None to play/record it."""
        if not self.fail_count:
            return None
        self.fail_count -= 1
        self._fired("status", status=self.fail_status.name, remaining=self.fail_count)
        return self.fail_status

    def complete(self, msg: IoMessage, status: Status, latency_bytes: int = 0,
                 writer: ChainWriter | None = None) -> None:
        """Complete a consumed message now, later or in a burst, as armed."""
        if not self.armed:
            iomsg.complete(self.ctx, msg, status, latency_bytes=latency_bytes, writer=writer)
            return
        held = _Held(msg, status, latency_bytes, writer)
        if self.reset_after is not None:
            self.reset_after -= 1
        if self.late_count:
            self.late_count -= 1
            held.deadline = self.ctx.loop.time() + self.late_ms / 1e3
            held.timer = self.ctx.loop.call_at(held.deadline, self._release_late, held)
            self._late.append(held)
            self._fired("late", head=msg.chain.head, ms=self.late_ms, remaining=self.late_count)
        elif self.stall_timer is not None:
            self._held.append(held)
        elif self.burst_count:
            self.burst_count -= 1
            self._held.append(held)
            if not self.burst_count:
                self._release_all("burst")
        elif self._held:  # keep order behind messages still held back by a burst or stall
            self._held.append(held)
        else:
            iomsg.complete(self.ctx, msg, status, latency_bytes=latency_bytes, writer=writer)
        if self.reset_after == 0:
            self.reset_after = None
            self._fired("needs_reset")
            self.ctx.request_reset(f"stream {self.stream_id}: injected DEVICE_NEEDS_RESET")

    def flush(self) -> int:
        """RELEASE: complete everything held back now (status as decided, nothing lost)."""
        if self.stall_timer is not None:
            self.stall_timer.cancel()
            self.stall_timer = None
        return self._release_all(None)

    def reset(self) -> None:
        """Driver reset: forget what is armed and held back, complete nothing."""
        if self.stall_timer is not None:
            self.stall_timer.cancel()
        for held in self._late:
            held.timer.cancel()
        self._disarm()

    # -- VM pause (QMP stop/cont) ------------------------------------------------------------------

    def freeze(self) -> None:
        """The VM is paused: late and stall timers stop (see the module docstring)."""
        if self._frozen_at is not None:
            return
        self._frozen_at = self.ctx.loop.time()
        if self.stall_timer is not None:
            self.stall_timer.cancel()
            self.stall_timer = _Paused()
        for held in self._late:
            held.timer.cancel()

    def thaw(self) -> None:
        """The VM runs again: every delay resumes with what was left of it."""
        if self._frozen_at is None:
            return
        loop = self.ctx.loop
        paused, self._frozen_at = loop.time() - self._frozen_at, None
        if self.stall_timer is not None:
            self.stall_deadline += paused
            self.stall_timer = loop.call_at(self.stall_deadline, self._end_stall)
        for held in self._late:
            held.deadline += paused
            held.timer = loop.call_at(held.deadline, self._release_late, held)

    # -- helpers ---------------------------------------------------------------------------------

    def _end_stall(self) -> None:
        self.stall_timer = None
        self._release_all("stall")

    def _release_late(self, held: _Held) -> None:
        if held in self._late:
            self._late.remove(held)
            self._complete(held)
            self.ctx.signal_used(held.msg.queue_index)

    def _release_all(self, why: str | None) -> int:
        """Complete what a stall or burst held back (and, for RELEASE, what waits to be late)."""
        held, self._held = self._held, []
        if why is None:
            for h in self._late:
                h.timer.cancel()
            held, self._late = self._late + held, []
        for h in held:
            self._complete(h)
        if held:
            self._fired(why or "flush", released=len(held))
            self.ctx.signal_used(held[0].msg.queue_index)
        return len(held)

    def _complete(self, held: _Held) -> None:
        iomsg.complete(self.ctx, held.msg, held.status, latency_bytes=held.latency_bytes, writer=held.writer,
                       notify=False)

    def _armed(self, what: str, **fields) -> None:
        log.info("stream %d: fault armed: %s %s", self.stream_id, what,
                 " ".join(f"{k}={v}" for k, v in fields.items()))
        self.sink.trace("fault", "inject", what=what, stream=self.stream_id, **fields)

    def _fired(self, what: str, **fields) -> None:
        self.fired += 1
        self.sink.trace("fault", "fire", what=what, stream=self.stream_id, **fields)


def check_count(count: int) -> int:
    if not 0 <= count <= MAX_COUNT:
        raise ValueError(f"count must be 0..{MAX_COUNT}")
    return count


def check_delay(ms: float) -> float:
    if not 0 < ms <= MAX_DELAY_MS:
        raise ValueError(f"delay must be more than 0 and at most {MAX_DELAY_MS} ms")
    return float(ms)




# -- device-wide faults (the monitor and QMP share these) ---------------------------------------


def needs_reset_now(device: SoundDevice, source: str) -> None:
    """Set DEVICE_NEEDS_RESET (with a configuration-change interrupt) now."""
    if device.ctx is None:
        raise ValueError("the driver has not activated the device")
    device.event_sink.trace("fault", "inject", what="needs_reset")
    device.ctx.request_reset(f"injected from {source}")


def drop_events(device: SoundDevice, count: int) -> None:
    """Lose the next ``count`` device events instead of delivering them."""
    device.events.drop_next = check_count(count)
    device.event_sink.trace("fault", "inject", what="drop_event", count=count)
