#!/usr/bin/env python3
"""What hostile local clients cost the vhost-user back end and its monitor (issue 7, findings 7-11).

Serves the test echo device with ``pyvmm.vhost_user.serve(..., monitor_path=...)`` in a child
process, drives its rings from the tests' Python front end, and for each hostile client prints
the ring round trip (kick -> call, median / p99 / max) measured while it acts, and what the
back end spent (CPU seconds, peak RSS growth, threads, guest RAM still mapped):

    python scripts/bench_hostile_clients.py

Figures only; nothing here asserts a time. The tests in tests/vhost_user/test_vhost_user_limits.py
and tests/monitor/test_monitor_limits.py check the behaviour.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "vhost_user"))

from benchlib import process_cpu_seconds  # noqa: E402
from vhost_frontend import EchoDevice, connect, eventfd_fired, start_device, wait_for  # noqa: E402

from pyvmm.vhost_user import messages as m  # noqa: E402

SERVE = textwrap.dedent("""
    import logging, sys
    sys.path.insert(0, {tests!r})
    from vhost_frontend import EchoDevice
    from pyvmm.vhost_user import serve
    logging.basicConfig(level=logging.WARNING)
    serve(EchoDevice(), {sock!r}, monitor_path={mon!r}, device_name="virtio-echo")
""")


class Backend:
    def __init__(self, workdir: Path):
        self.sock = str(workdir / "vhost.sock")
        self.mon = str(workdir / "mon.sock")
        tests = str(Path(__file__).resolve().parent.parent / "tests" / "vhost_user")
        self.log = open(workdir / "backend.log", "w")
        self.proc = subprocess.Popen([sys.executable, "-c", SERVE.format(tests=tests, sock=self.sock, mon=self.mon)],
                                     stdout=self.log, stderr=subprocess.STDOUT)
        if not wait_for(lambda: os.path.exists(self.sock) and os.path.exists(self.mon), timeout=30):
            raise SystemExit("the back end did not start")

    def cpu(self) -> float:
        return process_cpu_seconds(self.proc.pid)

    def status(self, key: str) -> int:
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
        raise KeyError(key)

    def mapped_ram_kib(self) -> int:
        total = 0
        with open(f"/proc/{self.proc.pid}/maps") as f:
            for line in f:
                if "vhost-test-ram" in line:
                    start, end = (int(x, 16) for x in line.split()[0].split("-"))
                    total += (end - start) // 1024
        return total

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def round_trips(fe, seconds: float, stop: threading.Event | None = None) -> list[float]:
    """Echo requests on ring 0 for ``seconds`` (or until ``stop``): kick-to-call times."""
    ring = fe.rings[0]
    times = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not (stop is not None and stop.is_set()):
        t0 = time.perf_counter()
        ring.add([b"ping"], [4])
        fe.kick(0)
        if not eventfd_fired(fe.call_fds[0], timeout=30):
            times.append(float("inf"))
            break
        times.append(time.perf_counter() - t0)
        ring.collect()
    return times


def describe(times: list[float]) -> str:
    if not times:
        return "no round trips"
    ordered = sorted(times)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return (f"{len(times):5d} round trips, median {statistics.median(ordered) * 1e3:7.2f} ms, "
            f"p99 {p99 * 1e3:7.2f} ms, max {ordered[-1] * 1e3:8.2f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--line-mib", type=int, default=64, help="size of the overlong monitor line")
    parser.add_argument("--clients", type=int, default=300, help="monitor clients to open at once")
    parser.add_argument("--cycles", type=int, default=20, help="front ends that connect and hang up")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="pyvmm-bench-") as tmp:
        backend = Backend(Path(tmp))
        try:
            fe = connect(backend.sock)
            start_device(fe, EchoDevice(), wait=False)
            rows = []
            rows.append(("idle", describe(round_trips(fe, 2.0)), ""))

            # A huge monitor line, sent while the rings are busy.
            cpu0, hwm0 = backend.cpu(), backend.status("VmHWM")
            done = threading.Event()

            def flood() -> None:
                with socket.socket(socket.AF_UNIX) as s:
                    s.connect(backend.mon)
                    chunk = b"x" * (1 << 20)
                    for _ in range(args.line_mib):
                        s.sendall(chunk)
                    s.sendall(b"\n")
                    s.recv(4096)
                done.set()

            started = time.monotonic()
            threading.Thread(target=flood, daemon=True).start()
            times = round_trips(fe, 120.0, stop=done)
            done.wait(120)
            rows.append((f"monitor: one {args.line_mib} MiB line", describe(times),
                         f"{time.monotonic() - started:.2f} s to refuse it, back end CPU {backend.cpu() - cpu0:.2f} s, "
                         f"peak RSS +{(backend.status('VmHWM') - hwm0) / 1024:.1f} MiB"))

            # Many monitor clients at once.
            threads0 = backend.status("Threads")
            clients, refused = [], 0
            for _ in range(args.clients):
                s = socket.socket(socket.AF_UNIX)
                s.connect(backend.mon)  # blocking: waits for room in the listen backlog
                clients.append(s)
            time.sleep(0.5)
            times = round_trips(fe, 2.0)
            threads = backend.status("Threads")
            for s in clients:
                try:
                    s.setblocking(False)
                    if s.recv(4096).startswith(b"ERROR: too many"):
                        refused += 1
                except BlockingIOError:
                    pass
                s.close()
            rows.append((f"monitor: {args.clients} clients connected", describe(times),
                         f"back-end threads {threads0} -> {threads}, {refused} clients refused"))

            # Half a vhost-user message left pending.
            fe.conn.sock.sendall(bytes(m.Header(m.FrontendRequest.GET_FEATURES, m.HeaderFlags.VERSION_1, 0))[:6])
            times = round_trips(fe, 2.0)
            fe.conn.sock.sendall(bytes(m.Header(m.FrontendRequest.GET_FEATURES, m.HeaderFlags.VERSION_1, 0))[6:])
            fe.recv()
            rows.append(("vhost-user: half a message pending", describe(times), ""))

            # A kick fd at end of file.
            r, w = os.pipe()
            assert fe.acked(m.FrontendRequest.SET_VRING_KICK, m.U64(1), [r]) == 0
            os.close(w)
            os.close(r)
            cpu0 = backend.cpu()
            time.sleep(2.0)
            idle_cpu = backend.cpu() - cpu0
            times = round_trips(fe, 2.0)
            rows.append(("vhost-user: ring 1's kick fd at EOF", describe(times),
                         f"back end CPU {idle_cpu:.2f} s in 2 s with no requests"))
            fe.close()

            # Front ends that come and go.
            size = 64 << 20
            for _ in range(args.cycles):
                other = connect(backend.sock, ram_size=size)
                start_device(other, EchoDevice(), wait=False)
                round_trips(other, 0.05)
                other.close()
            wait_for(lambda: backend.mapped_ram_kib() == 0, timeout=5)
            rows.append((f"vhost-user: {args.cycles} front ends of {size >> 20} MiB came and went", "",
                         f"guest RAM still mapped: {backend.mapped_ram_kib()} KiB"))
        finally:
            backend.stop()

    for what, latency, cost in rows:
        print(f"{what}")
        if latency:
            print(f"    ring: {latency}")
        if cost:
            print(f"    cost: {cost}")


if __name__ == "__main__":
    main()
