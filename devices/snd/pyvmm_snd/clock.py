"""Period clocks of a PCM stream: when the data plane may complete the next I/O message.

:class:`RealTimeClock` ticks once per period on **absolute** deadlines of the event loop's
monotonic clock (``deadline_n = t0 + n * period``, scheduled with :func:`pyvmm.looptimer.loop_timer`,
a timerfd on asyncio's loop: ``call_at`` alone would fire up to 1 ms late), so the
time the tick callback takes, or a busy loop, never shifts later deadlines: over an hour
the clock is exactly as far along as the loop's clock. The first tick comes one period
after :meth:`~RealTimeClock.start` (the first period has then been played/recorded).

A tick that fires after its deadline (the loop was busy) is still delivered, immediately,
and counted in :attr:`ClockStats.late_ticks`; ticks whose deadlines passed while the loop
was stalled are delivered back to back, none is skipped (the guest's audio position stays
right; it just arrives in a burst). A burst can be too much for the guest: the Linux
driver advances its hardware pointer one period per completion, so a buffer's worth of
completions at once wraps it back where it was and ALSA sees no progress. With
``max_catchup=K`` a tick more than K periods late is still delivered, but then the clock
re-bases (``t0`` moves so the next tick is one period away) and the periods it will not
deliver are counted in :attr:`ClockStats.skipped_ticks` and logged; the data plane should
pass K below its stream's periods per buffer.

Run semantics, matching the stream commands:

* :meth:`start` begins a new run: ``t0`` = now, tick numbering restarts at 1.
* :meth:`pause` (STOP) cancels the pending tick and remembers how far into the current
  period the clock was; :meth:`resume` (START after STOP) moves ``t0`` forward by exactly
  the pause duration, so the period in progress finishes after its remaining time and no
  tick is owed for the pause (nothing accumulates: deadlines stay ``t0' + n * period``).
* :meth:`stop` (RELEASE, reset) ends the run; a later :meth:`start` begins a new one.

:class:`FastClock` has the same interface but ticks as soon as the data plane says work is
available (:meth:`notify`), through ``loop.call_soon``: tests and benchmarks run audio as
fast as the guest can produce it.

Both keep :class:`ClockStats` (per-tick lateness in ns) for benchmarks. Everything here
runs on the event loop's thread; nothing is thread-safe.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from pyvmm.looptimer import loop_timer

log = logging.getLogger(__name__)

TickCallback = Callable[[int], object]
"""Called with the tick number (1, 2, ... within a run)."""

LATENESS_HISTORY = 1 << 16
"""Lateness samples kept per clock (65 s of the shortest periods, 11 min of 10 ms ones): a
bound on memory whatever period the guest chose (about 5 MB per clock when full)."""


@dataclass
class ClockStats:
    """Counters and per-tick lateness (delivery time minus deadline) of one clock."""

    period_ns: int = 0
    ticks: int = 0
    late_ticks: int = 0
    """Ticks delivered more than the clock's ``late_threshold`` after their deadline."""
    resyncs: int = 0
    skipped_ticks: int = 0
    """Periods not delivered because a ``max_catchup`` re-base dropped them."""
    max_lateness_ns: int = 0
    lateness_ns: deque[int] = field(default_factory=lambda: deque(maxlen=LATENESS_HISTORY))
    intervals_ns: deque[int] = field(default_factory=lambda: deque(maxlen=LATENESS_HISTORY))
    """Time between consecutive ticks of one run (a pause or a new run starts over)."""
    _previous: float | None = None

    def new_segment(self) -> None:
        """The clock (re)started: the next tick has no predecessor to measure an interval from."""
        self._previous = None

    def record(self, deadline: float, now: float, late_threshold: float) -> None:
        lateness = round((now - deadline) * 1e9)
        self.ticks += 1
        self.lateness_ns.append(lateness)
        if self._previous is not None:
            self.intervals_ns.append(round((now - self._previous) * 1e9))
        self._previous = now
        self.max_lateness_ns = max(self.max_lateness_ns, lateness)
        if now - deadline > late_threshold:
            self.late_ticks += 1

    def summary(self) -> dict[str, float]:
        """Mean period error and lateness percentiles, in microseconds (NaN without ticks).

        ``mean_period_error_us`` is the mean interval between consecutive ticks minus the
        nominal period: about 0 for a drift-free clock however jittery single ticks are.
        """
        late = np.array(self.lateness_ns, dtype=np.float64) / 1e3
        intervals = np.array(self.intervals_ns, dtype=np.float64) / 1e3
        nan = float("nan")
        return {
            "ticks": float(self.ticks),
            "late_ticks": float(self.late_ticks),
            "skipped_ticks": float(self.skipped_ticks),
            "mean_period_error_us": float(intervals.mean() - self.period_ns / 1e3) if len(intervals) else nan,
            "mean_lateness_us": float(late.mean()) if len(late) else nan,
            "p50_lateness_us": float(np.percentile(late, 50)) if len(late) else nan,
            "p99_lateness_us": float(np.percentile(late, 99)) if len(late) else nan,
            "max_lateness_us": float(late.max()) if len(late) else nan,
        }


class RealTimeClock:
    """Period ticks on absolute deadlines; see the module docstring for run semantics."""

    def __init__(self, loop: asyncio.AbstractEventLoop, period: float, callback: TickCallback,
                 late_threshold: float | None = None, name: str = "clock", max_catchup: int | None = None):
        """``late_threshold`` (seconds, default a quarter period) decides what counts as late;
        ``max_catchup`` (periods, default unlimited) bounds a catch-up burst, see the module doc."""
        if not period > 0:
            raise ValueError(f"{name}: period must be positive, got {period!r}")
        if max_catchup is not None and max_catchup < 0:
            raise ValueError(f"{name}: max_catchup must be >= 0, got {max_catchup!r}")
        self.max_catchup = max_catchup
        self.loop = loop
        self.period = float(period)
        self.callback = callback
        self.late_threshold = self.period / 4 if late_threshold is None else late_threshold
        self.name = name
        self.stats = ClockStats(period_ns=round(self.period * 1e9))
        self.t0: float | None = None
        self.tick = 0
        """Number of the last delivered tick in this run."""
        self._timer = None
        """The loop timer of the next tick (made at the first start, closed by :meth:`stop`)."""
        self._paused_at: float | None = None

    @property
    def running(self) -> bool:
        return self._timer is not None and self._timer.armed

    @property
    def paused(self) -> bool:
        return self._paused_at is not None

    def deadline(self, n: int) -> float:
        """Loop time at which tick ``n`` of the current run is due."""
        assert self.t0 is not None
        return self.t0 + n * self.period

    def start(self) -> None:
        """Begin a new run now (a running or paused run is abandoned)."""
        self._cancel()
        self._paused_at = None
        self.t0 = self.loop.time()
        self.tick = 0
        self.stats.new_segment()
        self._schedule()

    def pause(self) -> None:
        if not self.running:
            return
        self._cancel()
        self._paused_at = self.loop.time()

    def resume(self) -> None:
        """Continue a paused run; without a paused run this is :meth:`start`."""
        if self._paused_at is None or self.t0 is None:
            self.start()
            return
        self.t0 += self.loop.time() - self._paused_at
        self._paused_at = None
        self.stats.new_segment()
        self._schedule()

    def stop(self) -> None:
        self._cancel()
        if self._timer is not None:
            self._timer.close()
            self._timer = None
        self._paused_at = None
        self.t0 = None

    def notify(self) -> None:
        """Work became available: irrelevant for a real-time clock (it ticks regardless)."""

    def _cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()

    def _schedule(self) -> None:
        if self._timer is None:
            self._timer = loop_timer(self.loop, self._fire)
        self._timer.arm(self.deadline(self.tick + 1))

    def _fire(self) -> None:
        self.tick += 1
        deadline = self.deadline(self.tick)
        now = self.loop.time()
        self.stats.record(deadline, now, self.late_threshold)
        if now - deadline > self.late_threshold:
            log.debug("%s: tick %d late by %.1f ms", self.name, self.tick, (now - deadline) * 1e3)
        if self.max_catchup is not None and now - deadline > self.max_catchup * self.period:
            skipped = int((now - deadline) / self.period)
            self.t0 = now - self.tick * self.period
            self.stats.resyncs += 1
            self.stats.skipped_ticks += skipped
            log.info("%s: %.1f ms behind, skipping %d periods instead of a burst",
                     self.name, (now - deadline) * 1e3, skipped)
        # Schedule first: the callback may stop or pause the clock, which cancels this.
        self._schedule()
        self.callback(self.tick)


FAST_BATCH = 16
"""Fast clock: periods consumed per event-loop turn at most, so other work on the loop (kicks,
other streams, the monitor) waits for at most this many periods' work."""


class FastClock:
    """Ticks through ``call_soon`` whenever work is available.

    The callback returns True when it consumed a period and more may be waiting: the clock
    then ticks again at once, up to :data:`FAST_BATCH` ticks per loop turn (a loop turn per
    period would cost more than the period's work), and schedules another turn for the rest;
    :meth:`notify` schedules one when new work arrives. At most one turn is ever scheduled.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, callback: TickCallback, name: str = "fast-clock"):
        self.loop = loop
        self.callback = callback
        self.name = name
        self.late_threshold = float("inf")
        self.stats = ClockStats(period_ns=0)
        self.tick = 0
        self._active = False
        self._handle: asyncio.Handle | None = None
        self._requested_at = 0.0

    @property
    def running(self) -> bool:
        return self._active

    @property
    def paused(self) -> bool:
        return False

    def start(self) -> None:
        self.tick = 0
        self.resume()

    def pause(self) -> None:
        self._active = False
        self._cancel()

    def resume(self) -> None:
        self._active = True
        self.stats.new_segment()
        self.notify()

    def stop(self) -> None:
        self.pause()

    def notify(self) -> None:
        if self._active and self._handle is None:
            self._requested_at = self.loop.time()
            self._handle = self.loop.call_soon(self._fire)

    def _cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _fire(self) -> None:
        self._handle = None
        for _ in range(FAST_BATCH):
            self.tick += 1
            self.stats.record(self._requested_at, self.loop.time(), self.late_threshold)
            if not self.callback(self.tick) or not self._active:
                return
        self.notify()
