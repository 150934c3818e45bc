#!/usr/bin/env python3
"""QMP round-trip benchmark: how long a command takes from a qemu.qmp client to pyvmm and back.

Starts ``pyvmm vhost-user snd --qmp unix:...`` (no front end needed), connects with qemu.qmp's
``QEMUMonitorProtocol`` and times N calls of each command (median, p90, max), side by side:
a command answered on the QMP thread (``query-status``), one run on the device event loop
(``x-pyvmm-snd-query-streams``) and one through the line monitor (``human-monitor-command``).

    python3 scripts/bench_qmp.py [--calls 500]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

from qemu.qmp.legacy import QEMUMonitorProtocol

COMMANDS = [("query-status", {}), ("x-pyvmm-snd-query-streams", {}),
            ("human-monitor-command", {"command-line": "info devices"})]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=500)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="pyvmm-bench-qmp-") as tmp:
        qmp_path = os.path.join(tmp, "qmp.sock")
        backend = subprocess.Popen([sys.executable, "-m", "pyvmm", "vhost-user", "snd", "--socket",
                                    os.path.join(tmp, "snd.sock"), "--qmp", f"unix:{qmp_path}", "backend=null"],
                                   cwd=tmp, stdin=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 30
            while not os.path.exists(qmp_path):
                if backend.poll() is not None or time.monotonic() > deadline:
                    sys.exit("pyvmm vhost-user did not start")
                time.sleep(0.05)
            qmp = QEMUMonitorProtocol(qmp_path)
            qmp.connect()
            print(f"{'command':<28} {'median':>9} {'p90':>9} {'max':>9}   ({args.calls} calls each)")
            for name, arguments in COMMANDS:
                times = []
                for _ in range(args.calls):
                    start = time.perf_counter()
                    qmp.cmd(name, **arguments)
                    times.append((time.perf_counter() - start) * 1e3)
                times.sort()
                print(f"{name:<28} {statistics.median(times):>7.3f}ms {times[int(len(times) * 0.9)]:>7.3f}ms "
                      f"{times[-1]:>7.3f}ms")
            qmp.cmd("quit")
            try:
                qmp.close()
            except EOFError:
                pass  # the back end has gone: that is what quit does
            backend.wait(30)
        finally:
            if backend.poll() is None:
                backend.terminate()
                backend.wait(10)


if __name__ == "__main__":
    main()
