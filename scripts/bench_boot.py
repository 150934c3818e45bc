#!/usr/bin/env python3
"""Boot benchmark: median over N runs of the default guest's boot milestones, and VM exits.

Milestones are wall-clock seconds from starting ``pyvmm run`` (the process, so Python's
start-up counts) to: the first console line, the kernel's ``Run /init``, the first
user-space line (``pyvmm-init: start``) and the VMM's exit after ``-- true``. VM exits
by reason come from ``pyvmm run --stats``.

    .venv/bin/python scripts/bench_boot.py [--runs 3] [--smp 1] [-- extra pyvmm run options]
"""

from __future__ import annotations

import argparse
import os
import re
import selectors
import statistics
import subprocess
import sys
import time

MILESTONES = [
    ("first console line", re.compile(r".")),
    ("Run /init", re.compile(r"Run /init as init process")),
    ("first user-space line", re.compile(r"pyvmm-init: start")),
]


def one_run(extra: list[str], timeout: float) -> tuple[dict[str, float], str]:
    argv = [sys.executable, "-m", "pyvmm", "run", "--stats", "--append-extra", "loglevel=7", *extra, "--", "true"]
    start = time.monotonic()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    seen: dict[str, float] = {}
    stderr = b""
    buffers = {proc.stdout: b"", proc.stderr: b""}
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    sel.register(proc.stderr, selectors.EVENT_READ)
    open_streams = 2
    while open_streams and time.monotonic() - start < timeout:
        for key, _ in sel.select(timeout=1):
            data = os.read(key.fd, 65536)
            now = time.monotonic() - start
            if not data:
                sel.unregister(key.fileobj)
                open_streams -= 1
                continue
            if key.fileobj is proc.stderr:
                stderr += data
                continue
            buffers[proc.stdout] += data
            *lines, buffers[proc.stdout] = buffers[proc.stdout].split(b"\n")
            for line in lines:
                text = line.decode(errors="replace")
                for name, pattern in MILESTONES:
                    if name not in seen and pattern.search(text):
                        seen[name] = now
    try:
        status = proc.wait(timeout=max(1.0, timeout - (time.monotonic() - start)))
    except subprocess.TimeoutExpired:
        proc.kill()
        raise SystemExit(f"run timed out after {timeout} s")
    seen["VMM exit"] = time.monotonic() - start
    if status != 0:
        raise SystemExit(f"pyvmm exited {status}:\n{stderr.decode(errors='replace')}")
    stats = next((line for line in stderr.decode(errors="replace").splitlines() if "VM exits" in line), "")
    return seen, stats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("extra", nargs="*", help="extra 'pyvmm run' options (after --)")
    args = parser.parse_args()
    results = []
    for i in range(args.runs):
        seen, stats = one_run(args.extra, args.timeout)
        results.append(seen)
        print(f"run {i + 1}: " + ", ".join(f"{k} {v:.2f} s" for k, v in seen.items()), flush=True)
        print(f"       {stats}", flush=True)
    print(f"\nmedian of {args.runs} runs (seconds from starting pyvmm):")
    for name in [m[0] for m in MILESTONES] + ["VMM exit"]:
        values = [r[name] for r in results if name in r]
        if values:
            print(f"  {name:24s} {statistics.median(values):7.2f}  (min {min(values):.2f}, max {max(values):.2f})")
        else:
            print(f"  {name:24s}     not seen")


if __name__ == "__main__":
    main()
