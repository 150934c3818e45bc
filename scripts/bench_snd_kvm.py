#!/usr/bin/env python3
"""What the default guest sustains under pyvmm's own KVM VMM: one boot, then for each
period size a real-time ``aplay`` of N seconds of 48 kHz stereo S16 silence from
/dev/zero through the virtio-sound device (null back end). Prints, per period size:
the guest's wall time for N seconds of audio (ratio), the guest CPU that stream cost
(from the guest's /proc/stat), and the xruns the device counted (its INFO log lines).

On kvm_pvm the guest kernel runs in an emulator, so the guest side is the bottleneck;
on hardware KVM the ratios should all be 1.00.

    .venv/bin/python scripts/bench_snd_kvm.py [--seconds 30] [--periods-ms 10,20,40]
"""

from __future__ import annotations

import argparse
import re
import sys
import time

from pyvmm.guest.session import GuestSession

RATE, CHANNELS, FRAME_BYTES = 48000, 2, 4
XRUN_LINE = re.compile(r"stream 0: underrun: (\d+) periods")


def cpu_ticks(guest: GuestSession) -> tuple[int, int]:
    """(busy, total) jiffies of all guest CPUs."""
    fields = [int(v) for v in guest.check("head -1 /proc/stat", timeout=120).split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--periods-ms", default="10,20,40")
    parser.add_argument("--smp", type=int, default=1)
    args = parser.parse_args()
    argv = [sys.executable, "-m", "pyvmm", "run", "-v", "--smp", str(args.smp),
            "--device", "virtio-snd,backend=null", "--append-extra", "pyvmm.session"]
    started = time.monotonic()
    with GuestSession.start(argv, timeout=600) as guest:
        print(f"boot to session: {time.monotonic() - started:.1f} s", flush=True)
        print(f"{'period':>8} {'buffer':>8} {'audio s':>8} {'wall s':>8} {'ratio':>6} {'guest CPU':>10} {'xruns':>6}")
        for period_ms in [int(p) for p in args.periods_ms.split(",")]:
            buffer_ms = period_ms * 4
            before_log = len(guest.stderr_lines)
            busy0, total0 = cpu_ticks(guest)
            cmd = (f"time aplay -q -D hw:0,0 -t raw -f S16_LE -c {CHANNELS} -r {RATE} "
                   f"--period-time={period_ms * 1000} --buffer-time={buffer_ms * 1000} "
                   f"-d {int(args.seconds)} /dev/zero")
            t0 = time.monotonic()
            result = guest.run(cmd + " 2>&1", timeout=args.seconds * 10 + 120)
            wall = time.monotonic() - t0
            busy1, total1 = cpu_ticks(guest)
            match = re.search(r"real\s+(?:(\d+)m\s*)?([\d.]+)s", result.output)
            guest_wall = (int(match.group(1) or 0) * 60 + float(match.group(2))) if match else wall
            time.sleep(0.5)  # let the device's log lines for this run arrive
            xruns = sum(int(m.group(1)) > 0 for line in guest.stderr_lines[before_log:]
                        for m in [XRUN_LINE.search(line)] if m)
            cpu = 100.0 * (busy1 - busy0) / max(1, total1 - total0)
            status = "" if result.status == 0 else f"  (aplay exit {result.status}: {result.output.strip()[-200:]})"
            print(f"{period_ms:>6}ms {buffer_ms:>6}ms {args.seconds:>8.0f} {guest_wall:>8.2f} "
                  f"{guest_wall / args.seconds:>6.3f} {cpu:>9.0f}% {xruns:>6}{status}", flush=True)


if __name__ == "__main__":
    main()
