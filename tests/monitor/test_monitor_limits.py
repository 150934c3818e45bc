"""What a local client of the monitor socket can do is bounded (issue 7, finding 11): the line
length (QEMU's 4 KiB), the number of clients (each costs a thread), who may connect (the
socket is 0600 whatever the umask) and which device an index names (no negative indexes)."""

from __future__ import annotations

import os
import socket
import stat
import threading
import time

import pytest

from pyvmm.monitor import MAX_CLIENTS, MAX_LINE, Monitor, MonitorClient, MonitoredDevice, MonitorServer


class Transport:
    def __init__(self):
        self.resets = []

    def request_reset(self, reason):
        self.resets.append(reason)


class Device:
    def monitor_commands(self):
        return {"echo": lambda args: " ".join(args)}


@pytest.fixture
def monitor():
    devices = [MonitoredDevice(f"snd{i}", Device(), Transport()) for i in range(2)]
    return Monitor(devices, lambda fn, *a, timeout=None: fn(*a), None, quit=lambda: None)


@pytest.fixture
def served(monitor, tmp_path):
    path = tmp_path / "mon.sock"
    server = MonitorServer(monitor, path).start()
    yield str(path)
    server.close()


def raw(path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(10)
    sock.connect(path)
    return sock


def read_reply(sock: socket.socket) -> list[str]:
    lines = []
    with sock.makefile("rb") as f:
        for raw_line in f:
            line = raw_line.decode().rstrip("\n")
            lines.append(line)
            if line == "OK" or line.startswith("ERROR: "):
                return lines
    return lines


def test_negative_device_index_is_refused(monitor):
    ok, text = monitor.execute("device -1 reset")
    assert not ok and "no device '-1'" in text
    assert not any(dev.transport.resets for dev in monitor.devices)
    assert monitor.execute("device 1 reset")[0]
    assert monitor.devices[1].transport.resets


def test_overlong_line_is_refused_and_the_connection_stays_usable(served):
    with raw(served) as sock:
        sock.sendall(b"snd0 echo " + b"x" * (8 << 20) + b"\n")  # 8 MiB, one line
        reply = read_reply(sock)
        assert reply == [f"ERROR: line longer than {MAX_LINE} bytes (ignored)"]
        sock.sendall(b"snd0 echo still here\n")
        assert read_reply(sock) == ["still here", "OK"]


def test_overlong_line_is_refused_whoever_passes_it(monitor):
    """QMP's human-monitor-command calls ``execute`` directly."""
    ok, text = monitor.execute("snd0 echo " + "z" * MAX_LINE)
    assert (ok, text) == (False, f"line longer than {MAX_LINE} bytes (ignored)")


def test_line_at_the_limit_is_accepted(served):
    word = "y" * (MAX_LINE - len("snd0 echo "))
    with MonitorClient(served, timeout=10) as client:
        assert client.command(f"snd0 echo {word}") == (True, word)


def test_client_count_is_capped(served):
    threads_before = threading.active_count()
    clients = [raw(served) for _ in range(MAX_CLIENTS)]
    try:
        for sock in clients:  # every one of them is served
            sock.sendall(b"snd0 echo hi\n")
            assert read_reply(sock) == ["hi", "OK"]
        extra = [raw(served) for _ in range(5)]
        for sock in extra:
            assert read_reply(sock) == [f"ERROR: too many monitor clients (at most {MAX_CLIENTS})"]
            assert sock.recv(1) == b""  # and closed
            sock.close()
        assert threading.active_count() <= threads_before + MAX_CLIENTS
    finally:
        for sock in clients:
            sock.close()
    # Slots come back once clients leave.
    deadline = time.monotonic() + 5
    while True:
        with MonitorClient(served, timeout=5) as client:
            try:
                assert client.command("snd0 echo back") == (True, "back")
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
        time.sleep(0.05)


def test_socket_is_private_whatever_the_umask(monitor, tmp_path):
    old = os.umask(0)
    try:
        server = MonitorServer(monitor, tmp_path / "mon.sock")
    finally:
        os.umask(old)
    try:
        assert stat.S_IMODE(os.stat(tmp_path / "mon.sock").st_mode) == 0o600
        assert os.listdir(tmp_path) == ["mon.sock"]  # no staging leftovers
    finally:
        server.close()


def test_socket_path_longer_than_sun_path(monitor, tmp_path):
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    server = MonitorServer(monitor, deep / "mon.sock").start()
    try:
        assert stat.S_IMODE(os.stat(deep / "mon.sock").st_mode) == 0o600
    finally:
        server.close()
