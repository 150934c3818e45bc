"""Period clocks: absolute deadlines, late ticks, pause/resume, fast clock — on a fake loop
(deterministic time) and once on a real asyncio loop (asserting on deadlines, not wall time)."""

from __future__ import annotations

import asyncio
import heapq
import itertools

import pytest

from pyvmm_snd.clock import FastClock, RealTimeClock


class FakeHandle:
    def __init__(self, when, callback, args):
        self.when, self.callback, self.args = when, callback, args
        self.cancelled = False

    def cancel(self):
        self.cancelled = True


class FakeLoop:
    """Just enough of asyncio's loop for the clocks: time(), call_at(), call_soon()."""

    def __init__(self, now: float = 1000.0):
        self.now = now
        self._timers: list = []
        self._ready: list[FakeHandle] = []
        self._seq = itertools.count()
        self.scheduled: list[float] = []
        """Every deadline passed to call_at, in order."""

    def time(self):
        return self.now

    def call_at(self, when, callback, *args):
        handle = FakeHandle(when, callback, args)
        self.scheduled.append(when)
        heapq.heappush(self._timers, (when, next(self._seq), handle))
        return handle

    def call_soon(self, callback, *args):
        handle = FakeHandle(self.now, callback, args)
        self._ready.append(handle)
        return handle

    def pending_timers(self):
        return sorted(h.when for _, _, h in self._timers if not h.cancelled)

    def run_ready(self):
        while self._ready:
            handle = self._ready.pop(0)
            if not handle.cancelled:
                handle.callback(*handle.args)

    def advance_to(self, t):
        """Run everything due up to ``t``; a callback that sleeps moves ``now`` past deadlines."""
        self.run_ready()
        while self._timers and self._timers[0][0] <= t:
            when, _, handle = heapq.heappop(self._timers)
            if handle.cancelled:
                continue
            self.now = max(self.now, when)
            handle.callback(*handle.args)
            self.run_ready()
        self.now = max(self.now, t)


def test_ticks_on_absolute_deadlines():
    loop, ticks = FakeLoop(), []
    clock = RealTimeClock(loop, 0.010, ticks.append)
    clock.start()
    t0 = loop.now
    assert loop.pending_timers() == [pytest.approx(t0 + 0.010)]
    loop.advance_to(t0 + 0.0505)
    assert ticks == [1, 2, 3, 4, 5]
    assert loop.scheduled == [t0 + n * 0.010 for n in range(1, 7)]
    assert clock.stats.ticks == 5 and clock.stats.late_ticks == 0


def test_slow_callback_does_not_move_later_deadlines():
    loop = FakeLoop()
    period = 0.010

    def slow(n):
        if n == 2:
            loop.now += 0.004  # the callback takes 4 ms
        if n == 5:
            loop.now += 0.027  # the loop is stuck for almost 3 periods

    clock = RealTimeClock(loop, period, slow)
    clock.start()
    t0 = loop.now
    loop.advance_to(t0 + 0.1005)
    # Every deadline is t0 + n * period, whatever the callbacks did.
    assert loop.scheduled == [t0 + n * period for n in range(1, len(loop.scheduled) + 1)]
    assert clock.tick == 10
    # ticks 6, 7 (deadlines passed while tick 5 ran) were delivered late, none skipped
    lateness = list(clock.stats.lateness_ns)
    assert len(lateness) == 10
    assert lateness[5] == round(0.017 * 1e9) and lateness[6] == round(0.007 * 1e9)
    assert clock.stats.late_ticks == 2  # threshold is period/4: 17 ms and 7 ms late
    assert clock.stats.max_lateness_ns == round(0.017 * 1e9)


def test_deadlines_stay_exact_over_many_periods():
    loop = FakeLoop(now=12345.678)
    period = 1 / 48000 * 441  # 9.1875 ms, not representable in binary
    clock = RealTimeClock(loop, period, lambda n: None)
    clock.start()
    t0 = loop.now
    loop.advance_to(t0 + 10000 * period + period / 2)
    assert clock.tick == 10000
    assert loop.scheduled[-1] == t0 + 10001 * period  # no accumulated float error from adding periods


def test_pause_resume_shifts_epoch_by_pause_length():
    loop, ticks = FakeLoop(), []
    period = 0.010
    clock = RealTimeClock(loop, period, ticks.append)
    clock.start()
    t0 = loop.now
    loop.advance_to(t0 + 0.023)  # ticks 1, 2; 3 ms into period 3
    clock.pause()
    assert clock.paused and not clock.running and loop.pending_timers() == []
    loop.advance_to(t0 + 0.500)  # a long pause: no ticks owed
    assert ticks == [1, 2]
    clock.resume()
    # the period in progress finishes its remaining 7 ms
    assert loop.pending_timers() == [pytest.approx(t0 + 0.500 + 0.007)]
    loop.advance_to(t0 + 0.500 + 0.0275)
    assert ticks == [1, 2, 3, 4, 5]
    assert clock.t0 == pytest.approx(t0 + 0.477)
    assert clock.stats.late_ticks == 0


def test_stop_then_start_is_a_new_run():
    loop, ticks = FakeLoop(), []
    clock = RealTimeClock(loop, 0.010, ticks.append)
    clock.start()
    loop.advance_to(loop.now + 0.025)
    clock.stop()
    assert not clock.running and clock.t0 is None
    loop.advance_to(loop.now + 1.0)
    clock.resume()  # nothing paused: same as start
    t1 = loop.now
    assert clock.t0 == t1 and loop.pending_timers() == [pytest.approx(t1 + 0.010)]
    loop.advance_to(t1 + 0.0105)
    assert ticks == [1, 2, 1]


def test_callback_may_stop_the_clock():
    loop, ticks = FakeLoop(), []
    clock = RealTimeClock(loop, 0.010, lambda n: (ticks.append(n), n == 3 and clock.stop()))
    clock.start()
    loop.advance_to(loop.now + 1.0)
    assert ticks == [1, 2, 3]
    assert loop.pending_timers() == []


def test_invalid_period():
    with pytest.raises(ValueError, match="period"):
        RealTimeClock(FakeLoop(), 0, lambda n: None)


def test_stats_summary():
    loop = FakeLoop()

    def sometimes_slow(n):
        if n == 3:
            loop.now += 0.012

    clock = RealTimeClock(loop, 0.010, sometimes_slow)
    clock.start()
    loop.advance_to(loop.now + 0.1001)
    clock.pause()
    loop.advance_to(loop.now + 5.0)  # a pause is not a long period
    clock.resume()
    loop.advance_to(loop.now + 0.1001)
    summary = clock.stats.summary()
    assert summary["ticks"] == 20
    assert len(clock.stats.intervals_ns) == 18  # no interval across the pause
    # one tick 2 ms late: the intervals around it are 12 and 8 ms, the mean stays exact
    assert summary["mean_period_error_us"] == pytest.approx(0, abs=1e-3)
    assert summary["max_lateness_us"] == pytest.approx(2000, abs=1e-3)
    assert summary["p50_lateness_us"] == pytest.approx(0, abs=1e-3)
    assert summary["late_ticks"] == 0  # 2 ms is below the period/4 threshold


def test_fast_clock_ticks_while_work_is_available():
    loop = FakeLoop()
    work = [3]

    def consume(n):
        if work[0] == 0:
            return False
        work[0] -= 1
        return True

    clock = FastClock(loop, consume)
    clock.start()
    loop.run_ready()
    assert work == [0]
    assert clock.tick == 4  # three periods consumed, then one tick that found nothing
    clock.notify()
    clock.notify()  # at most one tick pending
    loop.run_ready()
    assert clock.tick == 5
    clock.pause()
    clock.notify()
    loop.run_ready()
    assert clock.tick == 5
    work[0] = 1
    clock.resume()
    loop.run_ready()
    assert work == [0] and clock.tick == 7


def test_real_loop_deadlines_are_absolute(monkeypatch):
    """On a real asyncio loop (the clock's timerfd) with a callback that blocks 15 ms every other tick."""
    import time

    from pyvmm.looptimer import TimerFd

    period = 0.005
    deliveries: list[tuple[int, float]] = []
    deadlines: list[float] = []
    original = TimerFd.arm

    def spy(self, when):
        deadlines.append(when)
        return original(self, when)

    monkeypatch.setattr(TimerFd, "arm", spy)

    async def main():
        loop = asyncio.get_running_loop()
        done = loop.create_future()

        def tick(n):
            deliveries.append((n, loop.time()))
            if n % 2 == 0:
                time.sleep(0.015)
            if n == 20:
                clock.stop()
                done.set_result(None)

        clock = RealTimeClock(loop, period, tick)
        clock.start()
        await done
        return clock

    clock = asyncio.run(main())
    assert [n for n, _ in deliveries] == list(range(1, 21))
    t0 = deadlines[0] - period
    assert deadlines == [pytest.approx(t0 + n * period, abs=1e-9) for n in range(1, len(deadlines) + 1)]
    # every tick was delivered at or after its deadline (a timerfd never fires early), none skipped
    assert all(t >= t0 + n * period for n, t in deliveries)
    assert clock.stats.ticks == 20 and clock.stats.late_ticks > 0


def test_max_catchup_rebases_after_a_long_stall_and_counts_skips():
    loop, ticks = FakeLoop(), []
    period = 0.010

    def stall(n):
        ticks.append((n, loop.now))
        if n == 3:
            loop.now += 0.0555  # 5.55 periods: deadlines of ticks 4..8 pass

    clock = RealTimeClock(loop, period, stall, max_catchup=2)
    clock.start()
    t0 = loop.now
    loop.advance_to(t0 + 0.2)
    # tick 4 is delivered (late by 45.5 ms), then the clock re-bases instead of bursting 5..8
    assert ticks[3] == (4, pytest.approx(t0 + 0.0855))
    assert ticks[4] == (5, pytest.approx(t0 + 0.0955))
    assert clock.stats.resyncs == 1 and clock.stats.skipped_ticks == 4
    # after the re-base the deadlines are absolute again, from the new epoch
    new_t0 = clock.t0
    assert new_t0 == pytest.approx(t0 + 0.0455)
    assert [t for _, t in ticks[4:]] == [pytest.approx(new_t0 + n * period) for n in range(5, len(ticks) + 1)]


def test_max_catchup_tolerates_small_lateness():
    loop = FakeLoop()
    clock = RealTimeClock(loop, 0.010, lambda n: n == 2 and setattr(loop, "now", loop.now + 0.015), max_catchup=2)
    clock.start()
    t0 = loop.now
    loop.advance_to(t0 + 0.1)
    assert clock.stats.resyncs == 0 and clock.tick == 10  # tick 3 was 5 ms late: within the burst budget
    assert loop.scheduled[-1] == t0 + 11 * 0.010


def test_unbounded_catchup_is_the_default():
    loop = FakeLoop()
    clock = RealTimeClock(loop, 0.010, lambda n: n == 1 and setattr(loop, "now", loop.now + 0.5))
    clock.start()
    t0 = loop.now
    loop.advance_to(t0 + 0.5105)
    assert clock.tick == 51 and clock.stats.skipped_ticks == 0 and clock.stats.late_ticks >= 48
