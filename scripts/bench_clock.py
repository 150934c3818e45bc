#!/usr/bin/env python3
"""Period-clock benchmark: how precisely a RealTimeClock paces 10 ms periods on this host.

Runs one or more RealTimeClocks on an asyncio loop (optionally a device event loop thread
with background load) for N seconds and prints the mean period error (drift: mean tick
interval minus the period) and the lateness of ticks after their deadlines (p50/p99/max).

    python3 scripts/bench_clock.py [--seconds 10] [--period-ms 10] [--clocks 1] [--busy-ms 0] [--max-catchup K]

``--busy-ms`` makes every tick callback spin that long (a slow data plane); ``--clocks``
runs that many streams' clocks on the same loop.
"""

from __future__ import annotations

import argparse
import asyncio
import time

from pyvmm_snd.clock import RealTimeClock


async def run(seconds: float, period: float, clocks: int, busy: float,
              max_catchup: int | None) -> list[RealTimeClock]:
    loop = asyncio.get_running_loop()

    def work(n: int) -> None:
        if busy:
            end = time.perf_counter() + busy
            while time.perf_counter() < end:
                pass

    running = [RealTimeClock(loop, period, work, name=f"clock{i}", max_catchup=max_catchup) for i in range(clocks)]
    for clock in running:
        clock.start()
    await asyncio.sleep(seconds)
    for clock in running:
        clock.stop()
    return running


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--period-ms", type=float, default=10.0)
    parser.add_argument("--clocks", type=int, default=1)
    parser.add_argument("--busy-ms", type=float, default=0.0)
    parser.add_argument("--max-catchup", type=int, default=None, help="periods of catch-up before re-basing")
    args = parser.parse_args()
    period = args.period_ms / 1000
    clocks = asyncio.run(run(args.seconds, period, args.clocks, args.busy_ms / 1000, args.max_catchup))
    print(f"RealTimeClock: {args.clocks} clock(s), period {args.period_ms:g} ms, {args.seconds:g} s, "
          f"callback busy {args.busy_ms:g} ms")
    print(f"{'clock':<8} {'ticks':>6} {'expected':>8} {'late':>5} {'skipped':>7} {'mean err us':>12} "
          f"{'p50 us':>8} {'p99 us':>8} {'max us':>8}")
    for clock in clocks:
        s = clock.stats.summary()
        expected = int(args.seconds / period)
        print(f"{clock.name:<8} {int(s['ticks']):>6} {expected:>8} {int(s['late_ticks']):>5} "
              f"{int(s['skipped_ticks']):>7} "
              f"{s['mean_period_error_us']:>12.3f} {s['p50_lateness_us']:>8.1f} {s['p99_lateness_us']:>8.1f} "
              f"{s['max_lateness_us']:>8.1f}")


if __name__ == "__main__":
    main()
