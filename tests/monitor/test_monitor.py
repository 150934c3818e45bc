"""The monitor core with a fake VM: parsing, replies and terminators, core commands, device
command hooks run through the "event loop", errors reported without killing anything, and the
socket server + client (several clients, stale socket replaced)."""

from __future__ import annotations

import socket
import threading

import pytest

from pyvmm.errors import VmmError
from pyvmm.eventloop import DeviceEventLoop
from pyvmm.monitor import (Monitor, MonitorClient, MonitoredDevice, MonitorServer, device_names,
                           format_reply)
from pyvmm.virtio.queue import SplitQueue


class FakeTransport:
    name = "fake@0xd0000000"

    def __init__(self):
        self.status = 0xF
        self.offered_features = 0x1_0000_0001
        self.driver_features = 0x1_0000_0000
        self.queues = [SplitQueue(None, 64, 0), SplitQueue(None, 16, 1)]
        self.queues[0].ready = True
        self.queues[0].next_avail, self.queues[0].next_used = 7, 5
        self.resets: list[str] = []

    def request_reset(self, reason: str) -> None:
        self.resets.append(reason)
        self.status |= 0x40


class FakeDevice:
    def __init__(self):
        self.calls: list[tuple[list[str], str]] = []

    def monitor_commands(self):
        def poke(args):
            """poke N   poke the device"""
            self.calls.append((args, threading.current_thread().name))
            return f"poked {' '.join(args)}"

        def boom(args):
            raise RuntimeError("device exploded")

        def bad(args):
            raise ValueError("bad argument")

        return {"poke": poke, "boom": boom, "bad": bad}


class PlainDevice:
    """A device without the hook (only VirtioDevice's default would apply)."""


@pytest.fixture
def vm():
    loop = DeviceEventLoop("fake-devices").start()
    devices = [MonitoredDevice("snd0", FakeDevice(), FakeTransport()),
               MonitoredDevice("blk0", PlainDevice(), FakeTransport())]
    quits = []
    counts = {"IO": 10, "MMIO": 3}
    monitor = Monitor(devices, loop.call, lambda: dict(counts), quit=lambda: quits.append(1))
    monitor.quits = quits
    yield monitor
    loop.stop()


def test_device_names_number_per_type():
    assert device_names(["virtio-snd", "virtio-snd", "virtio-net"]) == ["snd0", "snd1", "net0"]


def test_help_lists_core_and_device_commands(vm):
    ok, text = vm.execute("help")
    assert ok
    for word in ("info devices", "device N reset", "quit", "snd0 CMD"):
        assert word in text
    assert "blk0" not in text  # no device commands


def test_info_devices_shows_status_features_and_queues(vm):
    ok, text = vm.execute("info devices")
    assert ok
    lines = text.splitlines()
    assert lines[0].startswith("0: snd0 (FakeDevice, fake@0xd0000000)")
    assert "status 0xf (ACKNOWLEDGE DRIVER DRIVER_OK FEATURES_OK)" in text
    assert "features offered 0x100000001, negotiated 0x100000000" in text
    assert "queue 0: size 64, next_avail 7, next_used 5" in text
    assert "queue 1: not ready" in text
    assert any(line.startswith("1: blk0") for line in lines)


def test_info_stats_totals_exits(vm):
    ok, text = vm.execute("info stats")
    assert ok
    assert text.splitlines()[0] == "VM exits: 13"
    assert text.splitlines()[1].split() == ["IO", "10"]


def test_device_reset_goes_to_the_transport(vm):
    ok, text = vm.execute("device 1 reset")
    assert ok and "blk0" in text
    assert vm.devices[1].transport.resets == ["requested from the monitor"]
    assert vm.devices[1].transport.status & 0x40
    ok, _ = vm.execute("device snd0 reset")
    assert ok and vm.devices[0].transport.resets
    for line in ("device 7 reset", "device x reset", "device 0", "device 0 explode"):
        ok, text = vm.execute(line)
        assert not ok, line


def test_device_command_runs_on_the_event_loop(vm):
    ok, text = vm.execute("snd0 poke 1 2")
    assert (ok, text) == (True, "poked 1 2")
    assert vm.devices[0].device.calls == [(["1", "2"], "fake-devices")]


def test_device_help_uses_docstrings(vm):
    ok, text = vm.execute("snd0 help")
    assert ok and "snd0 poke N   poke the device" in text
    ok, text = vm.execute("blk0 help")
    assert ok and "no device commands" in text


@pytest.mark.parametrize("line, message", [
    ("snd0 boom", "RuntimeError: device exploded"),
    ("snd0 bad", "snd0 bad: bad argument"),
    ("snd0 nothing", "unknown command 'nothing'"),
    ("frobnicate", "unknown command 'frobnicate'"),
    ("info", "usage: info devices|stats"),
    ("snd0 'unclosed", "cannot parse"),
])
def test_errors_are_reported_and_the_monitor_keeps_working(vm, line, message):
    ok, text = vm.execute(line)
    assert not ok and message in text
    assert vm.execute("snd0 poke again") == (True, "poked again")


def test_quit_asks_the_vm_to_stop(vm):
    assert vm.execute("quit")[0] and vm.quits == [1]


def test_empty_line_is_a_no_op(vm):
    assert vm.execute("   ") == (True, "")


def test_reply_format_escapes_terminator_lookalikes():
    assert format_reply(True, "a\nOK\nERROR: x") == "a\n OK\n ERROR: x\nOK\n"
    assert format_reply(False, "two\nlines") == "ERROR: two lines\n"
    assert format_reply(True, "") == "OK\n"


def test_server_and_client_round_trip(vm, tmp_path):
    path = tmp_path / "mon.sock"
    server = MonitorServer(vm, path).start()
    try:
        with MonitorClient(path, timeout=5) as a, MonitorClient(path, timeout=5) as b:
            assert a.command("snd0 poke a") == (True, "poked a")
            assert b.command("info stats")[1].startswith("VM exits: 13")
            assert a.command("nope")[0] is False
            assert a.command("snd0 poke still-alive") == (True, "poked still-alive")
        with socket.socket(socket.AF_UNIX) as raw:  # the wire format, as socat would see it
            raw.connect(str(path))
            raw.sendall(b"bogus\n")
            assert raw.makefile("rb").readline() == b"ERROR: unknown command 'bogus' (try 'help')\n"
    finally:
        server.close()
    assert not path.exists()


def test_server_refuses_a_live_socket_and_replaces_a_stale_one(vm, tmp_path):
    path = tmp_path / "mon.sock"
    server = MonitorServer(vm, path).start()
    try:
        with pytest.raises(VmmError, match="in use"):
            MonitorServer(vm, path)
    finally:
        server.close()
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))
    stale.close()  # the file stays, nobody listens
    MonitorServer(vm, path).start().close()
    (tmp_path / "file").write_text("x")
    with pytest.raises(VmmError, match="not a socket"):
        MonitorServer(vm, tmp_path / "file")


def test_client_on_a_missing_socket_is_a_one_line_error(tmp_path):
    with pytest.raises(VmmError, match="cannot connect to monitor"):
        MonitorClient(tmp_path / "absent.sock")


def test_vhost_user_monitor_before_a_front_end_starts_the_device():
    from pyvmm.vhost_user.backend import VhostUserBackend
    from pyvmm.monitor import vhost_user_monitor

    loop = DeviceEventLoop("vhost-user-test").start()
    try:
        device = FakeDevice()
        device.queue_max_sizes = (8, 8)
        device.device_features = lambda: 0
        quits = []
        monitor = vhost_user_monitor(device, "virtio-snd", VhostUserBackend(device, loop.loop), loop.call,
                                     lambda: quits.append(1))
        ok, text = monitor.execute("info devices")
        assert ok and text.startswith("0: snd0 (FakeDevice, vhost-user)") and "status 0x0 (reset)" in text
        ok, text = monitor.execute("device 0 reset")
        assert not ok and "not running" in text
        ok, text = monitor.execute("info stats")
        assert not ok and "front end" in text
        assert monitor.execute("snd0 poke 3") == (True, "poked 3")
        assert monitor.execute("quit")[0] and quits == [1]
    finally:
        loop.stop()
