"""The pieces as the data plane will use them, on a real asyncio loop: a playback stream's
clock feeds queued periods (or underrun silence) to a loopback back end, a capture stream's
clock reads periods from it. Assertions are on data and counters, never on wall time."""

from __future__ import annotations

import asyncio
import uuid
from collections import deque

from pyvmm_snd import pcm_format
from pyvmm_snd.backends import BackendParams, create_backend
from pyvmm_snd.clock import FastClock, RealTimeClock
from pyvmm_snd.spec import Direction, PcmFormat

FRAMES = 240  # 5 ms at 48 kHz


def stream_params(direction: Direction, stream_id: int) -> BackendParams:
    fb = pcm_format.frame_bytes(PcmFormat.S16, 2)
    return BackendParams(stream_id, direction, 2, PcmFormat.S16, 48000, FRAMES * fb, 4 * FRAMES * fb)


def test_real_time_playback_to_capture_through_loopback():
    name = uuid.uuid4().hex
    playback = create_backend("loopback", {"name": name}, Direction.OUTPUT, 0)
    capture = create_backend("loopback", {"name": name}, Direction.INPUT, 1)
    p_out, p_in = stream_params(Direction.OUTPUT, 0), stream_params(Direction.INPUT, 1)
    playback.open(p_out)
    capture.open(p_in)
    periods = [bytes([i]) * p_out.period_bytes for i in range(1, 11)]
    queued = deque(periods)
    captured: list[bytes] = []

    async def main():
        loop = asyncio.get_running_loop()
        done = loop.create_future()

        def play(tick):
            if queued:
                playback.write(queued.popleft())
            else:
                playback.play_silence(p_out.period_bytes)  # underrun: silence, never a replay

        def record(tick):
            captured.append(capture.read(p_in.period_bytes))
            if tick == 16:
                done.set_result(None)

        play_clock = RealTimeClock(loop, p_out.period_seconds, play, name="tx")
        record_clock = RealTimeClock(loop, p_in.period_seconds, record, name="rx")
        play_clock.start()
        await asyncio.sleep(p_out.period_seconds / 2)
        record_clock.start()
        await done
        play_clock.stop()
        record_clock.stop()
        return play_clock

    play_clock = asyncio.run(main())
    while capture.latency_bytes:  # whatever the capture side had not read yet
        captured.append(capture.read(p_in.period_bytes))
    silence = bytes(p_in.period_bytes)
    assert [c for c in captured if c != silence] == periods, "every period arrives once, in order"
    assert playback.stats.underrun == (play_clock.stats.ticks - 10) * p_out.period_bytes
    assert playback.stats.overflow == 0


def test_fast_clock_consumes_everything_queued_at_once():
    playback = create_backend("null", {}, Direction.OUTPUT)
    p = stream_params(Direction.OUTPUT, 0)
    playback.open(p)
    queued = deque(bytes(p.period_bytes) for _ in range(25))
    completed: list[int] = []

    async def main():
        loop = asyncio.get_running_loop()

        def play(tick):
            if not queued:
                return False
            playback.write(queued.popleft())
            completed.append(tick)
            return True

        clock = FastClock(loop, play)
        clock.start()
        for _ in range(50):
            await asyncio.sleep(0)
        queued.extend(bytes(p.period_bytes) for _ in range(5))  # new messages arrive
        clock.notify()
        for _ in range(20):
            await asyncio.sleep(0)
        clock.stop()

    asyncio.run(main())
    assert len(completed) == 30 and playback.stats.written == 30 * p.period_bytes
