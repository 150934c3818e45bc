"""When the data plane completes I/O: one period per period duration on absolute deadlines
(fake loop, exact times), pre-START buffering, STOP/START pause and resume, RELEASE flushing
before its own response, the fast clock, and several streams each on its own clock."""

from __future__ import annotations

import asyncio

import pytest

from dp_helpers import BUFFER, PERIOD, PERIOD_S, TimedDriver, periods, read_wav
from pyvmm_snd.spec import PcmRate, QueueIndex, RequestCode, Status

R = RequestCode
TX, RX, CTL = QueueIndex.TX, QueueIndex.RX, QueueIndex.CONTROL


def null_driver(**options) -> TimedDriver:
    return TimedDriver(options={"backend": "null", **options})


def test_playback_completes_on_absolute_period_deadlines():
    with null_driver() as d:
        d.start()
        d.run_stream(0, buffer_bytes=BUFFER, period_bytes=PERIOD)
        for data in periods(6):
            d.add_tx(0, data)
        d.kick(TX)
        assert d.pcm(R.PCM_START, 0) == Status.OK
        t0 = d.loop.time()
        d.advance(PERIOD_S * 0.999)
        assert d.times(TX) == []  # not on arrival: the first period is still playing
        d.advance(10 * PERIOD_S)
        assert d.times(TX) == pytest.approx([t0 + n * PERIOD_S for n in range(1, 7)], abs=1e-9)
        for entry in d.collect(TX):
            assert entry.len == 8 and d.io_status(TX, entry) == (Status.OK, 0)


def test_late_loop_does_not_shift_later_deadlines():
    """A tick delivered late (busy loop) is followed by ticks on the original grid."""
    with null_driver() as d:
        d.start()
        d.run_stream(0, buffer_bytes=BUFFER, period_bytes=PERIOD)
        for data in periods(4):
            d.add_tx(0, data)
        d.kick(TX)
        d.pcm(R.PCM_START, 0)
        t0 = d.loop.time()
        d.loop.now += 1.5 * PERIOD_S  # the loop was busy past the first deadline
        d.advance(0)
        d.advance(3 * PERIOD_S)
        assert d.times(TX) == pytest.approx([t0 + 1.5 * PERIOD_S] + [t0 + n * PERIOD_S for n in (2, 3, 4)],
                                            abs=1e-9)


def test_buffers_queued_before_start_are_held_then_played_in_order(tmp_path):
    out = tmp_path / "out.wav"
    with TimedDriver(options={"backend.path": str(out), "capture.backend": "null"}) as d:
        d.start()
        d.run_stream(0, buffer_bytes=BUFFER, period_bytes=PERIOD)
        data = periods(4)
        for p in data:
            d.add_tx(0, p)
        assert d.kick(TX) == []
        d.advance(1.0)
        assert d.collect(TX) == []  # prepared, not started: held however long
        d.pcm(R.PCM_START, 0)
        d.advance(4 * PERIOD_S + 1e-9)
        assert len(d.collect(TX)) == 4
        d.pcm(R.PCM_STOP, 0)
        d.pcm(R.PCM_RELEASE, 0)
    params, frames = read_wav(out)
    assert (params.nchannels, params.sampwidth, params.framerate) == (2, 2, 48000)
    assert frames == b"".join(data)


def test_stop_start_pauses_and_resumes_without_prepare(tmp_path):
    out = tmp_path / "out.wav"
    with TimedDriver(options={"backend.path": str(out), "capture.backend": "null"}) as d:
        d.start()
        d.run_stream(0, buffer_bytes=BUFFER, period_bytes=PERIOD)
        data = periods(4)
        for p in data:
            d.add_tx(0, p)
        d.kick(TX)
        d.pcm(R.PCM_START, 0)
        t0 = d.loop.time()
        d.advance(1.25 * PERIOD_S)  # one period done, a quarter into the second
        assert d.pcm(R.PCM_STOP, 0) == Status.OK
        d.advance(5.0)  # paused: nothing completes, nothing counts as an underrun
        assert len(d.times(TX)) == 1
        assert d.pcm(R.PCM_START, 0) == Status.OK  # no PREPARE in between
        d.advance(2.75 * PERIOD_S + 1e-9)  # just past the fourth completion
        times = d.times(TX)
        pause = 5.0
        assert times == pytest.approx([t0 + PERIOD_S] + [t0 + pause + n * PERIOD_S for n in (2, 3, 4)], abs=1e-9)
        stream_io = d.device.dataplane.io[0]
        assert stream_io.stats.xruns == 0
        d.pcm(R.PCM_STOP, 0)
        d.pcm(R.PCM_RELEASE, 0)
    assert read_wav(out)[1] == b"".join(data)  # paused, not restarted: one recording


def test_release_returns_pending_io_before_its_response():
    with null_driver() as d:
        d.start()
        d.run_stream(0, buffer_bytes=BUFFER, period_bytes=PERIOD)
        heads = [d.add_tx(0, p) for p in periods(5)]
        d.kick(TX)
        d.pcm(R.PCM_START, 0)
        d.advance(1.5 * PERIOD_S)
        d.pcm(R.PCM_STOP, 0)
        d.completions.clear()
        assert d.pcm(R.PCM_RELEASE, 0) == Status.OK
        order = [(q, h) for _, q, h in d.completions]
        assert order[:-1] == [(TX, h) for h in heads[1:]]  # the four held ones, in order...
        assert order[-1][0] == CTL  # ...then the RELEASE response
        released = d.collect(TX)
        assert [e.id for e in released] == heads
        for entry in released:
            assert entry.len == 8 and d.io_status(TX, entry)[0] == Status.OK
        assert d.loop.pending_timers() == 0


def test_capture_release_returns_unfilled_buffers():
    with null_driver() as d:
        d.start()
        d.run_stream(1, buffer_bytes=BUFFER, period_bytes=PERIOD)
        heads = [d.add_rx(1, PERIOD) for _ in range(8)]
        d.kick(RX)
        d.pcm(R.PCM_START, 1)
        d.advance(2 * PERIOD_S + 1e-9)
        filled = d.collect(RX)
        assert [e.id for e in filled] == heads[:2] and all(e.len == PERIOD + 8 for e in filled)
        d.pcm(R.PCM_STOP, 1)
        d.pcm(R.PCM_RELEASE, 1)
        rest = d.collect(RX)
        assert [e.id for e in rest] == heads[2:] and all(e.len == 8 for e in rest)


def test_fast_clock_completes_as_soon_as_the_backend_took_the_period(tmp_path):
    """Everything but the last held message completes at once; that one waits for the next
    message (or one period), so the guest's pointer never jumps a whole buffer."""
    out = tmp_path / "out.wav"
    with TimedDriver(options={"clock": "fast", "backend.path": str(out), "capture.backend": "null"}) as d:
        d.start()
        d.run_stream(0, buffer_bytes=4 * PERIOD, period_bytes=PERIOD)
        data = periods(8)
        for p in data[:4]:
            d.add_tx(0, p)
        d.kick(TX)
        d.advance(0)
        assert d.collect(TX) == []  # held until START, as with the real-time clock
        d.pcm(R.PCM_START, 0)
        t0 = d.loop.time()
        d.advance(0)
        assert len(d.collect(TX)) == 3  # not the whole buffer
        for p in data[4:7]:
            d.add_tx(0, p)
        d.kick(TX)
        d.advance(0)
        assert len(d.collect(TX)) == 3
        assert set(d.times(TX)) == {t0}  # no time had to pass
        d.add_tx(0, data[7])
        d.kick(TX)
        d.advance(0)
        assert len(d.collect(TX)) == 1
        d.advance(PERIOD_S * 0.99)
        assert d.collect(TX) == []
        d.advance(PERIOD_S * 0.02)  # the last one, after one period without a successor
        assert len(d.collect(TX)) == 1
        assert d.device.dataplane.io[0].stats.xruns == 0  # nothing queued is not an underrun here
        d.pcm(R.PCM_STOP, 0)
        d.pcm(R.PCM_RELEASE, 0)
    assert read_wav(out)[1] == b"".join(data)


def test_fast_clock_leaves_capture_in_real_time():
    """The device cannot see the guest application read: capture faster than real time would
    overrun the guest's buffer, so clock=fast only speeds up playback."""
    with TimedDriver(options={"clock": "fast", "backend": "tone"}) as d:
        d.start()
        d.run_stream(1, buffer_bytes=BUFFER, period_bytes=PERIOD)
        heads = [d.add_rx(1, PERIOD) for _ in range(4)]
        d.kick(RX)
        d.pcm(R.PCM_START, 1)
        t0 = d.loop.time()
        d.advance(4 * PERIOD_S + 1e-9)
        assert [e.id for e in d.collect(RX)] == heads
        assert d.times(RX) == pytest.approx([t0 + n * PERIOD_S for n in range(1, 5)], abs=1e-9)


def test_two_playback_and_one_capture_stream_each_on_its_own_clock(tmp_path):
    options = {"playback": "2", "capture": "1", "backend.path": str(tmp_path / "out{stream}.wav"),
               "capture.backend": "tone"}
    with TimedDriver(options=options) as d:
        d.start()
        # stream 0: 48 kHz stereo S16, 1024 frames; stream 1: 44.1 kHz mono S16, 441 frames (10 ms);
        # stream 2 (capture): 8 kHz mono S16, 160 frames (20 ms)
        d.run_stream(0, buffer_bytes=BUFFER, period_bytes=PERIOD)
        d.run_stream(1, buffer_bytes=4 * 882, period_bytes=882, channels=1, rate=PcmRate.RATE_44100)
        d.run_stream(2, buffer_bytes=8 * 320, period_bytes=320, channels=1, rate=PcmRate.RATE_8000)
        streams = {0: (PERIOD, PERIOD_S), 1: (882, 0.01), 2: (320, 0.02)}
        heads = {0: [d.add_tx(0, p) for p in periods(4, PERIOD, seed=0)],
                 1: [d.add_tx(1, p) for p in periods(4, 882, seed=1)],
                 2: [d.add_rx(2, 320) for _ in range(4)]}
        d.kick(TX)
        d.kick(RX)
        starts = {}
        for sid in (0, 1, 2):
            d.pcm(R.PCM_START, sid)
            starts[sid] = d.loop.time()
            d.advance(0.003)  # staggered starts
        d.advance(0.2)
        by_head = {}
        for t, q, h in d.completions:
            if q in (TX, RX):
                by_head[(q, h)] = t
        for sid, (_, period_s) in streams.items():
            queue = RX if sid == 2 else TX
            times = [by_head[(queue, h)] for h in heads[sid]]
            assert times == pytest.approx([starts[sid] + n * period_s for n in range(1, 5)], abs=1e-9), sid
        rx = d.collect(RX)
        assert [e.len for e in rx] == [328] * 4
        assert any(e.written[:320] != bytes(320) for e in rx)  # the tone, not silence


def test_real_asyncio_loop_paces_on_the_clock_deadlines():
    """On a real event loop completions never come before their deadline t0 + n * period and
    the deadlines are exactly one period apart (no wall-clock bound is asserted)."""
    loop = asyncio.new_event_loop()
    try:
        with TimedDriver(options={"backend": "null"}, loop=loop) as d:
            d.start()
            d.run_stream(0, buffer_bytes=4 * 960, period_bytes=960)  # 240 frames: 5 ms
            for p in periods(6, 960):
                d.add_tx(0, p)
            d.kick(TX)

            async def main():
                d.pcm(R.PCM_START, 0)
                clock = d.device.dataplane.io[0].clock
                while len(d.times(TX)) < 6:
                    await asyncio.sleep(0.002)
                return clock

            clock = loop.run_until_complete(main())
            deadlines = [clock.deadline(n) for n in range(1, 7)]
            assert [b - a for a, b in zip(deadlines, deadlines[1:])] == pytest.approx([0.005] * 5, abs=1e-9)
            for done, deadline in zip(d.times(TX), deadlines):
                assert done >= deadline
            assert clock.stats.ticks >= 6
    finally:
        loop.close()


def test_periods_at_the_minimum_tick_once_each():
    """48 frames at 48 kHz (1 ms, the device minimum): one completion per millisecond."""
    with null_driver(formats="s16") as d:
        d.start()
        d.run_stream(0, buffer_bytes=8 * 192, period_bytes=192)
        for p in periods(5, 192):
            d.add_tx(0, p)
        d.kick(TX)
        d.pcm(R.PCM_START, 0)
        t0 = d.loop.time()
        d.advance(0.0055)
        assert d.times(TX) == pytest.approx([t0 + 0.001 * n for n in range(1, 6)], abs=1e-9)


def test_capture_never_hands_a_whole_buffer_to_a_driver_that_queued_nothing_new():
    """Four periods per buffer, all four queued at START (Linux), the guest too busy to read:
    three complete, the fourth waits (its periods are overruns) until the driver queues one."""
    with null_driver() as d:
        d.start()
        d.run_stream(1, buffer_bytes=4 * PERIOD, period_bytes=PERIOD)
        heads = [d.add_rx(1, PERIOD) for _ in range(4)]
        d.kick(RX)
        d.pcm(R.PCM_START, 1)
        d.advance(10 * PERIOD_S + 1e-9)
        assert [e.id for e in d.collect(RX)] == heads[:3]
        stats = d.device.dataplane.io[1].stats
        assert (stats.xruns, stats.xrun_periods) == (1, 7)
        d.add_rx(1, PERIOD)
        d.kick(RX)
        d.advance(PERIOD_S)
        assert [e.id for e in d.collect(RX)] == [heads[3]]  # the oldest buffer first
