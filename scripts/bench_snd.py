#!/usr/bin/env python3
"""virtio-snd data-path benchmark: prints figures, asserts nothing.

The device side is driven by the Python driver model (``tests/snd/snd_driver.py``) on a real
asyncio loop; every scenario runs ``--runs`` times (default 3) and the median is printed with
the spread, and the machine's load average is printed before and after.

* machine: the floor under every real-time figure on this host: an asyncio loop whose only
  work is a 10 ms ``TimerFd`` (the period clock's timer) with an empty callback; how late it
  wakes (p50/p99/max) and the loop thread's whole CPU per period (no device, no driver);
* real time: one 48 kHz stereo S16 playback stream, 10 ms periods, the driver keeping 4
  queued: wall time for N seconds of audio (ratio, target 1.00), completion lateness against
  each period's deadline (p50/p99/max), and the device's CPU (kick handling + clock ticks,
  thread CPU time) per second of audio;
* minimum period: the device CPU of one real-time stream at the shortest period the device
  accepts (1 ms) next to 10 ms, for 48 kHz stereo S16 and 192 kHz 8-channel S32;
* fast clock: 48 kHz stereo S16 and 192 kHz 8-channel S32 playback as fast as the driver
  model feeds it, into the ``null`` and the ``wav`` back end (multiples of real time, the
  device's CPU per period, and wav/null);
* tracing: the fast 48 kHz run again with the device on an event bus as ``pyvmm run`` wires it,
  tracing off (what every run pays for the trace points) and tracing ``io,queue,irq`` to a file;
* ``--guest-seconds N``: the real driver (QEMU TCG + ``pyvmm vhost-user``) plays N seconds of
  48 kHz stereo S16 in real time; prints ``time aplay``, the frames the host WAV got and the
  back end process's CPU.

``--profile`` adds one cProfile'd run of the real-time and the fast scenario (the device's own
functions, per period) and, with ``--guest-seconds``, samples the back end process with py-spy
while the guest plays.

``--save FILE`` writes the medians as JSON; ``--compare FILE`` prints them next to a saved
run (a regression shows in one command)::

    python3 scripts/bench_snd.py --save before.json            # on the old tree
    python3 scripts/bench_snd.py --compare before.json         # on the new one
    python3 scripts/bench_snd.py --only fast --runs 5
    python3 scripts/bench_snd.py --only guest --guest-seconds 10 --profile
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "snd"))

from benchlib import process_cpu_seconds  # noqa: E402
from snd_driver import SndDriver  # noqa: E402

from pyvmm.looptimer import loop_timer  # noqa: E402
from pyvmm_snd import spec  # noqa: E402
from pyvmm_snd.device import SoundDevice  # noqa: E402
from pyvmm_snd.spec import PcmFormat, PcmRate, QueueIndex, RequestCode, Status  # noqa: E402
from pyvmm_snd.stream import MIN_PERIOD_US  # noqa: E402

QUEUED = 4
LINUX_CUTS = (4,)
"""Messages as Linux sends them: the 4-byte xfer header in its own descriptor, then the frames
(one descriptor while a period does not cross a page that is not physically contiguous), then
the status."""
SCENARIOS = ("machine", "realtime", "minimum", "fast", "guest")

FORMATS = {
    "48k-s16x2": ("48 kHz stereo S16", PcmRate.RATE_48000, 2, PcmFormat.S16, 2),
    "192k-s32x8": ("192 kHz 8-ch S32", PcmRate.RATE_192000, 8, PcmFormat.S32, 4),
}

HIGHER_IS_BETTER = {"x_real_time", "MB_per_s"}
NEITHER = {"wall_ratio", "aplay_wall_ratio", "wav_seconds", "xruns"}
"""How compare() marks a change: every other figure is better lower (lateness, CPU, kicks)."""


# -- the driver side ------------------------------------------------------------------------------


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


def make_driver(loop, clock: str, options: dict[str, str], channels: int, fmt: PcmFormat, rate: PcmRate,
                period_bytes: int, trace: Path | None = None) -> SndDriver:
    """``trace``: None, no event bus (NO_EVENTS); else the device gets a sink on an event bus
    as in the VMM, tracing ``io`` and ``queue`` into that JSONL file, or nothing if it is ``Path()``."""
    device = SoundDevice({"clock": clock, "capture.backend": "null", "channels": "1-8", "formats": "s16+s32",
                          **options})
    if trace is not None:
        from pyvmm.events import EventBus
        from pyvmm.trace.tracer import Tracer, parse_trace_specs

        tracer = Tracer(parse_trace_specs(["snd0:io,queue,irq"]), jsonl_path=trace) if trace != Path() else None
        device.event_sink = EventBus(tracer=tracer).sink("snd0")
    d = SndDriver(device, loop=loop)
    recycle_buffers(d.queues[QueueIndex.TX])
    d.start()
    assert d.set_params(0, buffer_bytes=QUEUED * period_bytes, period_bytes=period_bytes, channels=channels,
                        fmt=fmt, rate=rate) == Status.OK
    assert d.pcm(RequestCode.PCM_PREPARE, 0) == Status.OK
    return d


async def play(d: SndDriver, period_bytes: int, seconds_of_audio: float, period_s: float, poll: float):
    """Queue periods, refill as they complete, until ``seconds_of_audio`` played; returns the
    wall seconds, the stream's clock and the kicks the driver had to send."""
    total = round(seconds_of_audio / period_s)
    frames = bytes(range(256)) * (period_bytes // 256) + bytes(period_bytes % 256)
    queued = done = 0
    for _ in range(QUEUED):
        d.add_tx(0, frames, cuts=LINUX_CUTS)
        queued += 1
    d.kick(QueueIndex.TX)
    start = time.perf_counter()
    assert d.pcm(RequestCode.PCM_START, 0) == Status.OK
    clock = d.device.dataplane.io[0].clock
    tx = d.queues[QueueIndex.TX]
    kicks = 0
    while done < total:
        await asyncio.sleep(poll)
        completed = len(d.collect(QueueIndex.TX))
        done += completed
        old_avail = tx.avail_idx
        for _ in range(min(completed, total - queued)):
            d.add_tx(0, frames, cuts=LINUX_CUTS)
            queued += 1
        if completed and tx.needs_kick(old_avail):  # as Linux does (virtqueue_kick_prepare)
            kicks += 1
            d.device.queue_notify(QueueIndex.TX)
    elapsed = time.perf_counter() - start
    d.pcm(RequestCode.PCM_STOP, 0)
    d.pcm(RequestCode.PCM_RELEASE, 0)
    return elapsed, clock, kicks


PROFILER = None
"""A cProfile.Profile enabled only inside the device's entry points (``--profile``)."""


def count_device_cpu(d: SndDriver) -> list[float]:
    """Wrap the device's entry points (kick handling, clock ticks) to sum their thread CPU time
    (and profile them when PROFILER is set)."""
    spent = [0.0]

    def timed(fn):
        def wrapper(*args):
            t = time.thread_time()
            if PROFILER is not None:
                PROFILER.enable()
            try:
                return fn(*args)
            finally:
                if PROFILER is not None:
                    PROFILER.disable()
                spent[0] += time.thread_time() - t
        return wrapper

    d.device.queue_notify = timed(d.device.queue_notify)
    io = d.device.dataplane.io[0]
    io._tick = timed(io._tick)
    return spent


# -- scenarios (one run each; main() repeats them) ---------------------------------------------------


def machine_floor(seconds: float, period_s: float = 0.010) -> dict[str, float]:
    """An empty 10 ms timer on its own asyncio loop: the lateness and the loop-thread CPU that
    no device code can go below on this host (a VM's wake-ups can cost more than a period's work)."""
    loop = asyncio.new_event_loop()
    late: list[float] = []
    deadline = [0.0]

    def tick() -> None:
        late.append(loop.time() - deadline[0])
        deadline[0] += period_s
        timer.arm(deadline[0])

    timer = loop_timer(loop, tick)
    deadline[0] = loop.time() + period_s
    timer.arm(deadline[0])
    cpu = time.thread_time()
    loop.run_until_complete(asyncio.sleep(seconds))
    cpu = time.thread_time() - cpu
    timer.close()
    loop.close()
    late.sort()
    return {"lateness_p50_us": late[len(late) // 2] * 1e6, "lateness_p99_us": late[len(late) * 99 // 100] * 1e6,
            "lateness_max_us": late[-1] * 1e6, "loop_cpu_pct": 100 * cpu / seconds,
            "loop_us_per_period": cpu * 1e6 / len(late)}


def real_time(seconds: float, key: str = "48k-s16x2", period_ms: float = 10.0,
              options: dict[str, str] | None = None) -> dict[str, float]:
    """One real-time playback stream."""
    _, rate, channels, fmt, width = FORMATS[key]
    rate_hz = spec.RATE_HZ[rate]
    period_frames = -(-round(period_ms * 1000) * rate_hz // 1_000_000)
    period_bytes = period_frames * channels * width
    period_s = period_frames / rate_hz
    loop = asyncio.new_event_loop()
    with make_driver(loop, "realtime", options or {"backend": "null"}, channels, fmt, rate, period_bytes) as d:
        device_cpu = count_device_cpu(d)
        elapsed, clock, kicks = loop.run_until_complete(
            play(d, period_bytes, seconds, period_s, min(0.002, period_s / 2)))
        stats = clock.stats.summary()
        xruns = d.device.dataplane.io[0].stats.xruns
    loop.close()
    periods = seconds / period_s
    return {"wall_ratio": elapsed / seconds, "kicks_per_period": kicks / periods, "lateness_p50_us": stats["p50_lateness_us"],
            "lateness_p99_us": stats["p99_lateness_us"], "lateness_max_us": stats["max_lateness_us"],
            "device_cpu_pct": 100 * device_cpu[0] / seconds,  # per second of audio: right even if a run ran late
            "device_us_per_period": device_cpu[0] * 1e6 / periods, "xruns": float(xruns)}


def fast(seconds: float, key: str, options: dict[str, str], trace: Path | None = None) -> dict[str, float]:
    """Playback on the fast clock: as fast as the driver model feeds it."""
    _, rate, channels, fmt, width = FORMATS[key]
    rate_hz = spec.RATE_HZ[rate]
    period_bytes = rate_hz // 100 * channels * width
    loop = asyncio.new_event_loop()
    with make_driver(loop, "fast", options, channels, fmt, rate, period_bytes, trace) as d:
        device_cpu = count_device_cpu(d)
        elapsed, _, _ = loop.run_until_complete(play(d, period_bytes, seconds, 0.010, 0))
    loop.close()
    return {"x_real_time": seconds / elapsed, "MB_per_s": seconds * rate_hz * channels * width / elapsed / 1e6,
            "device_us_per_period": device_cpu[0] * 1e6 / (seconds * 100)}


def guest(seconds: float, profile: bool) -> dict[str, float]:
    """The real driver under QEMU TCG + pyvmm's vhost-user back end, 48 kHz stereo S16, 10 ms periods."""
    import re

    sys.path.insert(0, str(ROOT / "tests"))
    sys.path.insert(0, str(ROOT / "tests" / "snd_dataplane"))
    from guest_helpers import image_with_files, noise, wav_data
    from qemu_harness import guest_and_qemu, qemu_sound_guest

    work = Path(tempfile.mkdtemp(prefix="bench-snd-"))
    image, qemu = guest_and_qemu()
    audio = noise(int(48000 * seconds) * 4, seed=1)
    image = image_with_files(image, {"/test/bench.raw": audio}, work)
    sampler = None
    with qemu_sound_guest({"backend.path": str(work / "out{stream}.wav"), "capture.backend": "null"},
                          image=image, qemu=qemu) as g:
        pid = g.backend.pid
        cpu0 = process_cpu_seconds(pid)
        if profile:
            sampler = _start_py_spy(pid, seconds * 3 + 60, work / "profile.txt")
        out = g.session.run("time aplay -q -D hw:0,0 -t raw -f S16_LE -c 2 -r 48000 --period-size=480 "
                            "--buffer-size=1920 /test/bench.raw", timeout=seconds * 3 + 60).output
        backend_cpu = process_cpu_seconds(pid) - cpu0
        if sampler is not None:
            sampler.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT, not on SIGTERM
            try:
                sampler.wait(timeout=60)
            except subprocess.TimeoutExpired:
                sampler.kill()
    match = re.search(r"real\s+(\d+)m\s*([\d.]+)s", out)
    wall = int(match.group(1)) * 60 + float(match.group(2)) if match else float("nan")
    _, data = wav_data(work / "out0.wav")
    figures = {"aplay_wall_ratio": wall / seconds, "wav_seconds": len(data) / 4 / 48000,
               "backend_cpu_pct": 100 * backend_cpu / wall}
    if sampler is not None:
        _print_profile(work / "profile.txt")
    shutil.rmtree(work, ignore_errors=True)
    return figures


def profile_device(args, top: int = 12) -> None:
    """One extra run of the real-time and the fast scenario with cProfile inside the device's
    entry points: the functions with the most own time, per period."""
    import cProfile
    import pstats

    global PROFILER
    for label, periods, job in (
            ("real time, 48 kHz stereo S16, 10 ms periods", args.seconds * 100, lambda: real_time(args.seconds)),
            ("fast clock, 48 kHz stereo S16, null", args.fast_seconds * 100,
             lambda: fast(args.fast_seconds, "48k-s16x2", {"backend": "null"}))):
        PROFILER = cProfile.Profile()
        try:
            job()
        finally:
            profiler, PROFILER = PROFILER, None
        stats = pstats.Stats(profiler)
        rows = sorted(stats.stats.items(), key=lambda item: item[1][2], reverse=True)[:top]
        calls = sum(v[1] for v in stats.stats.values())
        print(f"device profile (cProfile, {label}): {calls / periods:.0f} calls per period; own time per period "
              f"(cProfile's overhead included, compare the shares):")
        for (filename, line, name), (_cc, ncalls, tottime, _ct, _callers) in rows:
            where = f"{Path(filename).parent.name}/{Path(filename).name}:{line}" if line else filename
            print(f"  {tottime * 1e6 / periods:7.2f} us  {ncalls / periods:5.1f} calls  {name}  ({where})")


def _start_py_spy(pid: int, duration: float, out: Path) -> subprocess.Popen | None:
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(py_spy).exists():
        print("bench_snd: --profile needs py-spy (pip install py-spy): no profile", file=sys.stderr)
        return None
    return subprocess.Popen([py_spy, "record", "--pid", str(pid), "--rate", "1000", "--format", "raw", "--gil",
                             "--duration", str(int(duration)), "--output", str(out), "--nonblocking"],
                            stdout=subprocess.DEVNULL, stderr=open(out.with_suffix(".log"), "wb"))


def _print_profile(path: Path, top: int = 15) -> None:
    """py-spy's collapsed stacks as the functions that held the CPU (self) and their callers' share."""
    if not path.exists():
        log = path.with_suffix(".log")
        print(f"  (py-spy wrote no profile: {log.read_text().strip()[-300:] if log.exists() else ''})")
        return
    own: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        if any("idle" in f or "select (selectors.py" in f or "poll (" in f for f in frames[-1:]):
            continue
        own[frames[-1]] += int(count)
        total += int(count)
    print(f"  back end profile (py-spy --gil: samples holding the GIL, {total} at 1 kHz; own share of the top functions):")
    for name, count in own.most_common(top):
        print(f"    {100 * count / max(total, 1):5.1f} %  {name}")


# -- running, printing, comparing ---------------------------------------------------------------------


def collect(args) -> dict[str, dict[str, float]]:
    """``{scenario label: {figure: median}}``, printing each scenario as it finishes."""
    results: dict[str, dict[str, float]] = {}
    wav_dir = Path(tempfile.mkdtemp(prefix="bench-snd-wav-"))
    wav_runs = iter(range(1 << 30))

    def wav():  # a new file per run: the previous run's device may not be collected yet
        return {"backend": "wav", "backend.path": str(wav_dir / f"run{next(wav_runs)}-out{{stream}}.wav")}
    jobs = []
    if "machine" in args.only:
        jobs.append(("machine: an empty 10 ms timerfd on an asyncio loop (no device)",
                     lambda: machine_floor(args.seconds)))
    if "realtime" in args.only:
        jobs.append(("real time, 48 kHz stereo S16, 10 ms periods, null",
                     lambda: real_time(args.seconds)))
    if "minimum" in args.only:
        for key, (label, *_rest) in FORMATS.items():
            jobs.append((f"real time, {label}, {MIN_PERIOD_US / 1000:g} ms periods (the minimum), null",
                         lambda key=key: real_time(args.seconds, key, MIN_PERIOD_US / 1000)))
            if key != "48k-s16x2" or "realtime" not in args.only:
                jobs.append((f"real time, {label}, 10 ms periods, null", lambda key=key: real_time(args.seconds, key)))
    if "fast" in args.only:
        for key, (label, *_rest) in FORMATS.items():
            jobs.append((f"fast clock, {label}, null", lambda key=key: fast(args.fast_seconds, key, {"backend": "null"})))
            jobs.append((f"fast clock, {label}, wav", lambda key=key: fast(args.fast_seconds, key, wav())))
        null = {"backend": "null"}
        jobs.append(("fast clock, 48 kHz stereo S16, null, event bus without tracing (as pyvmm run)",
                     lambda: fast(args.fast_seconds, "48k-s16x2", null, trace=Path())))
        jobs.append(("fast clock, 48 kHz stereo S16, null, tracing io,queue,irq to a JSONL file",
                     lambda: fast(args.fast_seconds, "48k-s16x2", null, trace=wav_dir / "trace.jsonl")))
    if "guest" in args.only and args.guest_seconds:
        jobs.append((f"guest aplay {args.guest_seconds:g} s (QEMU TCG + vhost-user), 48 kHz stereo S16, 10 ms",
                     lambda: guest(args.guest_seconds, args.profile)))
    try:
        for label, job in jobs:
            if label.startswith("fast"):
                job()  # a warm-up run, not counted: the first fast run of a process is slower
            runs = [job() for _ in range(1 if label.startswith("guest") else args.runs)]
            medians = {name: statistics.median(r[name] for r in runs) for name in runs[0]}
            results[label] = medians
            print(label)
            for name, value in medians.items():
                values = [r[name] for r in runs]
                spread = f"  ({_fmt(min(values))} .. {_fmt(max(values))} over {len(runs)})" if len(runs) > 1 else ""
                print(f"  {name:<22} {_fmt(value):>10}{spread}", flush=True)
    finally:
        shutil.rmtree(wav_dir, ignore_errors=True)
    for key, (label, *_rest) in FORMATS.items():
        null, wav_run = results.get(f"fast clock, {label}, null"), results.get(f"fast clock, {label}, wav")
        if null and wav_run:
            print(f"fast clock, {label}: wav takes {null['x_real_time'] / wav_run['x_real_time']:.2f}x "
                  f"the time of null")
    return results


def _fmt(value: float) -> str:
    if value != value:
        return "nan"
    return f"{value:.4f}" if abs(value) < 10 else f"{value:.1f}" if abs(value) < 1000 else f"{value:.0f}"


def compare(results: dict[str, dict[str, float]], reference: dict) -> None:
    ref = reference["results"]
    print(f"\ncompared with {reference.get('label', 'the reference')} "
          f"(load average then {reference.get('load', '?')}):")
    print(f"  {'figure':<56} {'reference':>10} {'now':>10}  change")
    for label, figures in results.items():
        for name, value in figures.items():
            old = ref.get(label, {}).get(name)
            if old is None:
                continue
            change = f"x{value / old:.2f}" if old else ""
            if old and name not in NEITHER:
                worse = value < old / 1.1 if name in HIGHER_IS_BETTER else value > old * 1.1
                change += "  worse" if worse else ""
            print(f"  {(label[:40] + ': ' + name):<56} {_fmt(old):>10} {_fmt(value):>10}  {change}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="runs per scenario; medians are printed (default 3)")
    parser.add_argument("--seconds", type=float, default=5.0, help="audio played in each real-time run")
    parser.add_argument("--fast-seconds", type=float, default=20.0, help="audio played in each fast run")
    parser.add_argument("--guest-seconds", type=float, default=0.0,
                        help="also play this much audio with the real driver in a QEMU guest (0: skip)")
    parser.add_argument("--profile", action="store_true",
                        help="also profile the device (cProfile) and, with --guest-seconds, the back end (py-spy)")
    parser.add_argument("--only", default=",".join(SCENARIOS), help=f"comma-separated: {', '.join(SCENARIOS)}")
    parser.add_argument("--save", metavar="FILE", help="write the medians as JSON")
    parser.add_argument("--compare", metavar="FILE", help="print the medians next to a saved run")
    parser.add_argument("--label", default="", help="a name for --save (default: the git commit)")
    args = parser.parse_args()
    args.only = [s.strip() for s in args.only.split(",") if s.strip()]
    bad = [s for s in args.only if s not in SCENARIOS]
    if bad or args.runs < 1:
        parser.error(f"unknown scenario {bad[0]!r}" if bad else "--runs must be >= 1")
    reference = None
    if args.compare:
        try:
            reference = json.loads(Path(args.compare).read_text())
        except (OSError, ValueError) as exc:
            parser.error(f"--compare {args.compare}: {exc}")
    load = "%.2f %.2f %.2f" % os.getloadavg()
    print(f"bench_snd: {args.runs} runs per scenario, medians; load average {load} ({os.cpu_count()} CPUs)")
    results = collect(args)
    if args.profile:
        profile_device(args)
    load_after = "%.2f %.2f %.2f" % os.getloadavg()
    print(f"bench_snd: load average at the end {load_after}")
    if reference is not None:
        compare(results, reference)
    if args.save:
        label = args.label or subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty"],
                                             capture_output=True, text=True).stdout.strip()
        Path(args.save).write_text(json.dumps({"label": label, "load": f"{load} / {load_after}",
                                               "runs": args.runs, "results": results}, indent=1) + "\n")
        print(f"bench_snd: saved to {args.save}")


if __name__ == "__main__":
    main()
