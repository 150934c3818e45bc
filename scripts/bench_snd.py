#!/usr/bin/env python3
"""virtio-snd data-plane benchmark, device side, driven by the Python driver model
(``tests/snd/snd_driver.py``) on a real asyncio loop. Prints figures, asserts nothing.

* real time: one 48 kHz stereo S16 playback stream (10 ms periods, the driver keeps 4
  queued) for N seconds: wall time of N seconds of audio (ratio, target 1.00 +- 0.02), the
  clock's mean period error and p99/max lateness, and the process CPU % for that stream;
* minimum period: the device CPU of one real-time stream at the shortest period the device
  accepts (1 ms), next to 10 ms, for 48 kHz stereo S16 and 192 kHz 8-channel S32;
* fast clock throughput: 48 kHz stereo S16 and 192 kHz 8-channel S32 playback into the
  null back end, MB/s and multiples of real time (driver model + device; the guest side
  of a real VM costs extra).

* ``--guest-seconds N``: the real guest driver (QEMU TCG + vhost-user, ``tests/qemu_harness.py``)
  plays N seconds of 48 kHz stereo S16 (10 ms periods) with the real-time clock into a WAV; prints the
  guest's ``time aplay`` and the frames the host WAV received.

    python3 scripts/bench_snd.py [--seconds 5] [--fast-seconds 20] [--backend null] [--guest-seconds 0]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "snd"))

from snd_driver import SndDriver  # noqa: E402

from pyvmm_snd.device import SoundDevice  # noqa: E402
from pyvmm_snd import spec  # noqa: E402
from pyvmm_snd.spec import PcmFormat, PcmRate, QueueIndex, RequestCode, Status  # noqa: E402
from pyvmm_snd.stream import MIN_PERIOD_US  # noqa: E402

QUEUED = 4


def recycle_buffers(queue, per_size: int = 4 * QUEUED) -> None:
    """The model's allocator never frees; a long run cycles through a few buffers per size
    instead (never more than QUEUED messages are in flight)."""
    pools: dict[int, list[int]] = {}
    turns: dict[int, int] = {}
    allocate = queue.buffer

    def buffer(data):
        size = data if isinstance(data, int) else len(data)
        pool = pools.setdefault(size, [])
        if len(pool) < per_size:
            pool.append(allocate(data))
            return pool[-1]
        turns[size] = (turns.get(size, 0) + 1) % per_size
        addr = pool[turns[size]]
        if not isinstance(data, int):
            queue.memory.write(addr, data)
        return addr

    queue.buffer = buffer


def make_driver(loop, clock: str, backend: str, channels: int, fmt: PcmFormat, rate: PcmRate,
                period_bytes: int) -> SndDriver:
    device = SoundDevice({"clock": clock, "backend": backend, "capture.backend": "null", "channels": "1-8",
                          "formats": "s16+s32"})
    d = SndDriver(device, loop=loop)
    recycle_buffers(d.queues[QueueIndex.TX])
    d.start()
    assert d.set_params(0, buffer_bytes=QUEUED * period_bytes, period_bytes=period_bytes, channels=channels,
                        fmt=fmt, rate=rate) == Status.OK
    assert d.pcm(RequestCode.PCM_PREPARE, 0) == Status.OK
    return d


async def play(d: SndDriver, period_bytes: int, seconds_of_audio: float, period_s: float, poll: float):
    """Queue periods, refill as they complete, until ``seconds_of_audio`` played; returns the
    wall seconds and the stream's clock."""
    total = round(seconds_of_audio / period_s)
    frames = bytes(range(256)) * (period_bytes // 256) + bytes(period_bytes % 256)
    queued = done = 0
    for _ in range(QUEUED):
        d.add_tx(0, frames)
        queued += 1
    d.kick(QueueIndex.TX)
    start = time.perf_counter()
    assert d.pcm(RequestCode.PCM_START, 0) == Status.OK
    clock = d.device.dataplane.io[0].clock
    while done < total:
        await asyncio.sleep(poll)
        completed = len(d.collect(QueueIndex.TX))
        done += completed
        for _ in range(min(completed, total - queued)):
            d.add_tx(0, frames)
            queued += 1
        if completed:
            d.device.queue_notify(QueueIndex.TX)
    elapsed = time.perf_counter() - start
    d.pcm(RequestCode.PCM_STOP, 0)
    d.pcm(RequestCode.PCM_RELEASE, 0)
    return elapsed, clock


def count_device_cpu(d: SndDriver) -> list[float]:
    """Wrap the device's entry points (kick handling, clock ticks) to sum their thread CPU time."""
    spent = [0.0]

    def timed(fn):
        def wrapper(*args):
            t = time.thread_time()
            try:
                return fn(*args)
            finally:
                spent[0] += time.thread_time() - t
        return wrapper

    d.device.queue_notify = timed(d.device.queue_notify)
    io = d.device.dataplane.io[0]
    io._tick = timed(io._tick)
    return spent


def real_time(seconds: float, backend: str, period_frames: int = 480, rate: PcmRate = PcmRate.RATE_48000,
              channels: int = 2, fmt: PcmFormat = PcmFormat.S16, sample_bytes: int = 2, brief: bool = False) -> float:
    """One real-time playback stream; returns the device CPU (% of one core) it cost."""
    loop = asyncio.new_event_loop()
    rate_hz = spec.RATE_HZ[rate]
    period_bytes = period_frames * channels * sample_bytes
    period_s = period_frames / rate_hz
    with make_driver(loop, "realtime", backend, channels, fmt, rate, period_bytes) as d:
        device_cpu = count_device_cpu(d)
        cpu0 = time.process_time()
        elapsed, clock = loop.run_until_complete(play(d, period_bytes, seconds, period_s, min(0.002, period_s / 2)))
        cpu = time.process_time() - cpu0
        stats = clock.stats.summary()
        clock_stats = d.device.dataplane.io[0]
    loop.close()
    label = (f"{rate_hz / 1000:g} kHz {channels}-ch {fmt.name}, {period_s * 1e3:g} ms periods "
             f"({period_frames} frames)")
    device = 100 * device_cpu[0] / seconds  # per second of audio: stays right if a loaded machine ran late
    if brief:
        print(f"  {label}: device CPU {device:.2f} % of one core per second of audio ({device_cpu[0] * 1e6 / (seconds / period_s):.0f} us per period); "
              f"{seconds:.1f} s of audio in {elapsed:.3f} s "
              f"(ratio {elapsed / seconds:.4f}); lateness p99 {stats['p99_lateness_us']:.0f} us; "
              f"xruns {clock_stats.stats.xruns}")
        return device
    print(f"real time, {label}, backend {backend}:")
    print(f"  {seconds:.1f} s of audio took {elapsed:.3f} s wall (ratio {elapsed / seconds:.4f})")
    print(f"  completions: mean period error {stats['mean_period_error_us']:+.1f} us, lateness p50 "
          f"{stats['p50_lateness_us']:.0f} us, p99 {stats['p99_lateness_us']:.0f} us, "
          f"max {stats['max_lateness_us']:.0f} us, late ticks {stats['late_ticks']:.0f}, "
          f"re-bases {clock.stats.resyncs} (periods skipped {clock.stats.skipped_ticks})")
    print(f"  device CPU {device:.2f} % of one core for this stream (kicks + ticks); "
          f"whole process {100 * cpu / elapsed:.1f} % (with the driver model and its poll loop); "
          f"xruns {clock_stats.stats.xruns}")
    return device


def minimum_period(seconds: float, backend: str) -> None:
    """Device CPU per stream at the shortest period the device accepts (MIN_PERIOD_US), next to
    the driver's usual 10 ms, in one run: the cost grows as 1/period."""
    print(f"device CPU per real-time stream, minimum period {MIN_PERIOD_US} us vs 10 ms, backend {backend}:")
    for label, rate, rate_hz, channels, fmt, width in (
            ("48 kHz stereo S16", PcmRate.RATE_48000, 48000, 2, PcmFormat.S16, 2),
            ("192 kHz 8-ch S32", PcmRate.RATE_192000, 192000, 8, PcmFormat.S32, 4)):
        minimum = -(-MIN_PERIOD_US * rate_hz // 1_000_000)
        at_min = real_time(seconds, backend, minimum, rate, channels, fmt, width, brief=True)
        usual = real_time(seconds, backend, rate_hz // 100, rate, channels, fmt, width, brief=True)
        print(f"  {label}: {at_min:.2f} % at {MIN_PERIOD_US / 1000:g} ms vs {usual:.2f} % at 10 ms "
              f"(x{at_min / usual if usual else float('nan'):.1f})")


def throughput(label: str, seconds: float, backend: str, channels: int, fmt: PcmFormat, rate: PcmRate,
               rate_hz: int, sample_bytes: int) -> None:
    period_frames = rate_hz // 100
    period_bytes = period_frames * channels * sample_bytes
    loop = asyncio.new_event_loop()
    with make_driver(loop, "fast", backend, channels, fmt, rate, period_bytes) as d:
        elapsed, _ = loop.run_until_complete(play(d, period_bytes, seconds, 0.010, 0))
    loop.close()
    nbytes = seconds * rate_hz * channels * sample_bytes
    print(f"fast clock, {label}, backend {backend}: {seconds:.0f} s of audio in {elapsed:.3f} s = "
          f"{nbytes / elapsed / 1e6:.1f} MB/s, {seconds / elapsed:.0f} x real time")


def guest_real_time(seconds: float) -> None:
    import re
    import tempfile

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "snd_dataplane"))
    from guest_helpers import image_with_files, noise, wav_data
    from qemu_harness import guest_and_qemu, qemu_sound_guest

    work = Path(tempfile.mkdtemp(prefix="bench-snd-"))
    image, qemu = guest_and_qemu()
    audio = noise(int(48000 * seconds) * 4, seed=1)
    image = image_with_files(image, {"/test/bench.raw": audio}, work)
    with qemu_sound_guest({"backend.path": str(work / "out{stream}.wav"), "capture.backend": "null"},
                          image=image, qemu=qemu) as guest:
        out = guest.session.run("time aplay -q -D hw:0,0 -t raw -f S16_LE -c 2 -r 48000 --period-size=480 "
                                "--buffer-size=1920 /test/bench.raw",
                                timeout=seconds * 3 + 60).output
    match = re.search(r"real\s+(\d+)m\s*([\d.]+)s", out)
    wall = int(match.group(1)) * 60 + float(match.group(2)) if match else float("nan")
    _, data = wav_data(work / "out0.wav")
    print(f"guest (QEMU TCG, real driver, real-time clock): 'time aplay' of {seconds:.1f} s of audio: "
          f"{wall:.2f} s (ratio {wall / seconds:.4f}); host WAV got {len(data) / 4 / 48000:.3f} s "
          f"({len(data) - len(audio)} bytes of end padding)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="audio played in the real-time run")
    parser.add_argument("--fast-seconds", type=float, default=20.0, help="audio played in each fast run")
    parser.add_argument("--backend", default="null", help="playback back end (null, wav needs backend.path)")
    parser.add_argument("--guest-seconds", type=float, default=0.0,
                        help="also time aplay of this much audio in a QEMU guest (0: skip)")
    args = parser.parse_args()
    if args.guest_seconds:
        guest_real_time(args.guest_seconds)
    real_time(args.seconds, args.backend)
    minimum_period(args.seconds, args.backend)
    throughput("48 kHz stereo S16", args.fast_seconds, args.backend, 2, PcmFormat.S16, PcmRate.RATE_48000, 48000, 2)
    throughput("192 kHz 8-ch S32", args.fast_seconds, args.backend, 8, PcmFormat.S32, PcmRate.RATE_192000,
               192000, 4)


if __name__ == "__main__":
    main()
