"""The QMP server on a tiny VM-less machine, driven by the qemu.qmp client library.

Real parts: the virtio-mmio transport with devices probed by the Python driver model, the
device event loop, the line monitor, the command table, the socket server. The "machine" is
:class:`BackendMachine` (what a vhost-user back end uses): stop/cont pause the devices.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import threading
import time

import pytest
from qemu.qmp import ExecuteError
from qemu.qmp.legacy import QEMUMonitorProtocol

from pyvmm.errors import VmmError
from pyvmm.eventloop import DeviceEventLoop
from pyvmm.events import EventBus
from pyvmm.memory import GuestMemory
from pyvmm.monitor import Monitor, MonitoredDevice
from pyvmm.qmp import BackendMachine, CommandTable, QmpServer
from pyvmm.qmp.protocol import MAX_MESSAGE_BYTES
from pyvmm.qmp.server import MAX_CLIENTS
from pyvmm.virtio import constants as C
from pyvmm.virtio.device import DeviceContext, VirtioDevice
from pyvmm.virtio.mmio import MmioTransport
from pyvmm.virtio.testing import EchoDevice, FakeInterrupt, GuestAllocator, MmioDriver


class HoldingDevice(VirtioDevice):
    """Takes chains and holds them (in flight) until told to complete; records pause/resume
    and on which thread; offers two vendor QMP commands; emits an event on request."""

    device_type = 0xFFF1
    queue_max_sizes = (8,)

    def __init__(self):
        self.ctx: DeviceContext | None = None
        self.held = []
        self.calls: list[tuple[str, str]] = []

    def device_features(self) -> int:
        return 0

    def read_config(self, offset, size):
        return bytes(size)

    def activate(self, ctx):
        self.ctx = ctx

    def queue_notify(self, index):
        while (chain := self.ctx.queues[index].pop()) is not None:
            self.held.append(chain)

    def reset(self):
        self.ctx, self.held = None, []

    def pause(self):
        self.calls.append(("pause", threading.current_thread().name))

    def resume(self):
        self.calls.append(("resume", threading.current_thread().name))

    def qmp_commands(self):
        def query(arguments):
            """x-pyvmm-hold-query: chains held"""
            return {"held": [c.head for c in self.held], "thread": threading.current_thread().name}

        def emit(arguments):
            """x-pyvmm-hold-emit: publish an event"""
            if "value" not in arguments:
                raise ValueError("'value' is missing")
            self.event_sink.emit("HOLD_POKED", value=arguments["value"])
            return {}

        return {"x-pyvmm-hold-query": query, "x-pyvmm-hold-emit": emit}


class Rig:
    """Two devices behind MMIO transports, the monitor, a back-end machine and a QMP server."""

    def __init__(self, tmp_path, memory, allocator, loop):
        self.loop = loop
        self.bus = EventBus()
        self.echo, self.hold = EchoDevice(), HoldingDevice()
        self.transports, self.drivers = [], []
        for name, device in (("echo0", self.echo), ("hold0", self.hold)):
            device.event_sink = self.bus.sink(name)
            transport = MmioTransport(device, memory, loop, FakeInterrupt(), name=f"{name}@mmio")
            self.transports.append(transport)
            self.drivers.append(MmioDriver(transport, memory, allocator))
        devices = [MonitoredDevice("echo0", self.echo, self.transports[0]),
                   MonitoredDevice("hold0", self.hold, self.transports[1])]
        self.quits = []
        self.monitor = Monitor(devices, loop.call, None, quit=lambda: self.quits.append("hmp"))
        self.stopped = threading.Event()
        self.machine = BackendMachine(_AllDevices([self.echo, self.hold]), loop.call, self.bus, self.stopped.set)
        self.path = str(tmp_path / "qmp.sock")
        self.server = QmpServer(CommandTable(self.machine, self.monitor), self.bus, self.path).start()

    def client(self) -> QEMUMonitorProtocol:
        qmp = QEMUMonitorProtocol(self.path)
        qmp.connect(negotiate=True)
        qmp.settimeout(10)
        return qmp

    def close(self):
        self.server.close()
        for t in self.transports:
            t.close()


class _AllDevices:
    """Several devices paused as one (the back end's machine serves one device)."""

    def __init__(self, devices):
        self.devices = devices

    def pause(self):
        for device in self.devices:
            device.pause()

    def resume(self):
        for device in self.devices:
            device.resume()


@pytest.fixture
def memory():
    mem = GuestMemory.create([(0, 256 << 20)])
    yield mem
    mem.close()


@pytest.fixture
def rig(tmp_path, memory):
    loop = DeviceEventLoop("test-devices").start()
    r = Rig(tmp_path, memory, GuestAllocator(memory, 0x10_0000, 64 << 20), loop)
    yield r
    r.close()
    loop.stop()


def raw_client(path, negotiate=False):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(10)
    sock.connect(path)
    f = sock.makefile("rwb")
    greeting = json.loads(f.readline())
    if negotiate:
        f.write(b'{"execute": "qmp_capabilities"}\n')
        f.flush()
        assert json.loads(f.readline()) == {"return": {}}
    return sock, f, greeting


def no_event(qmp, seconds: float = 0.3) -> bool:
    """True if no event arrives within ``seconds`` (qemu.qmp raises on an empty wait)."""
    try:
        event = qmp.pull_event(wait=seconds)
    except TimeoutError:
        return True
    raise AssertionError(f"unexpected event {event}")


def send(f, data: bytes):
    f.write(data)
    f.flush()
    return json.loads(f.readline())


# -- protocol -----------------------------------------------------------------------------------


def test_greeting_negotiation_and_run_state(rig):
    sock, f, greeting = raw_client(rig.path)
    assert greeting["QMP"]["capabilities"] == []
    assert greeting["QMP"]["version"]["package"].startswith("pyvmm-")
    reply = send(f, b'{"execute": "query-status", "id": 1}')
    assert reply == {"error": {"class": "CommandNotFound",
                               "desc": "Expecting capabilities negotiation with 'qmp_capabilities'"}, "id": 1}
    assert send(f, b'{"execute": "qmp_capabilities", "id": "a"}') == {"return": {}, "id": "a"}
    assert send(f, b'{"execute": "qmp_capabilities"}')["error"]["class"] == "CommandNotFound"
    sock.close()

    with rig.client() as qmp:
        assert qmp.cmd("query-status") == {"running": True, "status": "running"}
        version = qmp.cmd("query-version")
        assert set(version["qemu"]) == {"major", "minor", "micro"}
        names = {c["name"] for c in qmp.cmd("query-commands")}
        assert {"stop", "cont", "quit", "system_reset", "human-monitor-command", "x-query-virtio",
                "x-query-virtio-queue-element", "x-pyvmm-hold-query"} <= names


def test_stop_and_cont_pause_devices_on_their_loop_and_send_events(rig):
    with rig.client() as qmp:
        assert qmp.cmd("stop") == {}
        assert qmp.cmd("query-status") == {"running": False, "status": "paused"}
        event = qmp.pull_event(wait=5.0)
        assert event["event"] == "STOP" and set(event["timestamp"]) == {"seconds", "microseconds"}
        assert abs(event["timestamp"]["seconds"] - time.time()) < 60
        assert qmp.cmd("stop") == {}  # already paused: nothing happens, no event
        assert qmp.cmd("cont") == {}
        assert qmp.pull_event(wait=5.0)["event"] == "RESUME"
        assert qmp.cmd("query-status")["status"] == "running"
        assert no_event(qmp)
    assert [c for c, _ in rig.hold.calls] == ["pause", "resume"]
    assert {thread for _, thread in rig.hold.calls} == {"test-devices"}


def test_events_go_to_every_negotiated_client(rig):
    with rig.client() as a, rig.client() as b:
        sock, f, _ = raw_client(rig.path)  # not negotiated: gets no event
        a.cmd("x-pyvmm-hold-emit", value=7)
        for client in (a, b):
            event = client.pull_event(wait=5.0)
            assert event["event"] == "HOLD_POKED" and event["data"] == {"device": "hold0", "value": 7}
        assert send(f, b'{"execute": "qmp_capabilities"}') == {"return": {}}  # the next line is the reply, not an event
        sock.close()


def test_human_monitor_command_runs_monitor_commands(rig):
    with rig.client() as qmp:
        text = qmp.cmd("human-monitor-command", **{"command-line": "info devices"})
        assert "0: echo0 (EchoDevice, echo0@mmio)" in text and "1: hold0" in text
        with pytest.raises(ExecuteError) as err:
            qmp.cmd("human-monitor-command", **{"command-line": "no-such-command"})
        assert err.value.error_class == "GenericError" and "unknown command" in str(err.value)
        with pytest.raises(ExecuteError, match="missing"):
            qmp.cmd("human-monitor-command")
        assert qmp.cmd("human-monitor-command", **{"command-line": "quit"}) == "stopping the VM\n"
    assert rig.quits == ["hmp"]


@pytest.mark.parametrize("message, desc", [
    (b'{"execute": "query-status", "arguments": {"x": 1}}', "Parameter 'x' is unexpected"),
    (b'{"execute": "human-monitor-command", "arguments": {"command-line": 5}}',
     "Invalid parameter type for 'command-line', expected: string"),
    (b'{"execute": "x-query-virtio-queue-status", "arguments": {"path": "echo0", "queue": true}}',
     "Invalid parameter type for 'queue', expected: int"),
    (b'{"execute": "query-status", "arguments": []}', "QMP input member 'arguments' must be an object"),
    (b'{"execute": 3}', "QMP input member 'execute' must be a string"),
    (b'{"arguments": {}}', "QMP input lacks member 'execute'"),
    (b'{"execute": "query-status", "foo": 1}', "QMP input member 'foo' is unexpected"),
    (b'{"exec-oob": "query-status"}', "QMP input member 'exec-oob' is not supported (no out-of-band capability)"),
    (b'[1, 2]', "QMP input must be a JSON object"),
    (b'{"execute": "query-status",}', None),
])
def test_malformed_input_gets_an_error_and_the_session_goes_on(rig, message, desc):
    sock, f, _ = raw_client(rig.path, negotiate=True)
    reply = send(f, message)
    assert reply["error"]["class"] == "GenericError"
    if desc:
        assert reply["error"]["desc"] == desc
    assert send(f, b'{"execute": "query-status", "id": 2}') == {"return": {"running": True, "status": "running"},
                                                                 "id": 2}
    sock.close()


def test_unknown_command_and_split_and_batched_messages(rig):
    sock, f, _ = raw_client(rig.path, negotiate=True)
    assert send(f, b'{"execute": "nope"}')["error"] == {"class": "CommandNotFound",
                                                       "desc": "The command nope has not been found"}
    # One message in pieces, then two messages (with a string holding braces) in one write.
    sock.sendall(b'{"execute": "query-')
    time.sleep(0.05)
    sock.sendall(b'status", "id": "}{"}{"execute": "query-status", "id": [1, {"a": "\\"}"}]}')
    assert json.loads(f.readline())["id"] == "}{"
    assert json.loads(f.readline())["id"] == [1, {"a": '"}'}]
    sock.close()


def test_oversized_or_too_deep_message_is_refused_and_the_client_closed(rig):
    for payload in (b'{"execute": "' + b"x" * MAX_MESSAGE_BYTES + b'"}', b"[" * 100):
        sock, f, _ = raw_client(rig.path, negotiate=True)
        sock.sendall(payload)
        reply = json.loads(f.readline())
        assert reply["error"]["class"] == "GenericError" and "closing" in reply["error"]["desc"]
        assert f.readline() == b""  # closed
        sock.close()
    with rig.client() as qmp:  # the server is fine
        assert qmp.cmd("query-status")["running"]


def test_socket_is_private_and_clients_are_bounded(rig):
    assert stat.S_IMODE(os.stat(rig.path).st_mode) == 0o600
    clients = [raw_client(rig.path) for _ in range(MAX_CLIENTS)]
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(10)
    sock.connect(rig.path)
    f = sock.makefile("rb")
    reply = json.loads(f.readline())
    assert "too many QMP clients" in reply["error"]["desc"]
    assert f.readline() == b""
    sock.close()
    for s, f, _ in clients:
        f.close()
        s.close()
    time.sleep(0.2)
    with rig.client() as qmp:  # slots are given back
        assert qmp.cmd("query-status")["running"]


def test_socket_path_rules(tmp_path, rig):
    with pytest.raises(VmmError, match="in use"):
        QmpServer(rig.server.table, EventBus(), rig.path).start()
    regular = tmp_path / "file"
    regular.write_text("x")
    with pytest.raises(VmmError, match="is not a socket"):
        QmpServer(rig.server.table, EventBus(), str(regular)).start()
    stale = tmp_path / "stale.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(stale))
    s.close()  # a socket file nobody listens on
    server = QmpServer(rig.server.table, EventBus(), str(stale)).start()
    try:
        with QEMUMonitorProtocol(str(stale)) as qmp:
            qmp.connect()
            assert qmp.cmd("query-status")["running"]
    finally:
        server.close()
    assert not stale.exists()


def test_quit_and_shutdown_event_is_delivered_before_close(rig):
    qmp = rig.client()
    assert qmp.cmd("quit") == {}
    assert rig.stopped.is_set()
    rig.machine.shut_down()
    rig.server.close()
    event = qmp.pull_event(wait=5.0)
    assert event["event"] == "SHUTDOWN" and event["data"] == {"guest": False, "reason": "host-qmp-quit"}
    with pytest.raises(EOFError):  # the server has closed the connection
        qmp.close()


def test_system_reset_is_an_error_on_a_back_end(rig):
    with rig.client() as qmp:
        with pytest.raises(ExecuteError, match="no machine to reset"):
            qmp.cmd("system_reset")


# -- virtio introspection -------------------------------------------------------------------------


def test_virtio_device_and_queue_status(rig):
    echo_drv, hold_drv = rig.drivers
    echo_drv.probe()
    [hq] = hold_drv.probe(queue_sizes=[8])
    heads = [hq.add_message(b"abc", 16) for _ in range(3)]
    hold_drv.kick(0)
    deadline = time.monotonic() + 5
    while len(rig.hold.held) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    with rig.client() as qmp:
        assert qmp.cmd("x-query-virtio") == [{"path": "echo0", "name": "virtio-echo"},
                                             {"path": "hold0", "name": "virtio-hold"}]
        status = qmp.cmd("x-query-virtio-status", path="echo0")
        assert status["status"]["statuses"] == ["VIRTIO_CONFIG_S_ACKNOWLEDGE", "VIRTIO_CONFIG_S_DRIVER",
                                                "VIRTIO_CONFIG_S_FEATURES_OK", "VIRTIO_CONFIG_S_DRIVER_OK"]
        assert "VIRTIO_F_VERSION_1" in status["guest-features"]["transports"]
        assert status["guest-features"]["unknown-dev-features"] == 1  # echo's bit 0, no name given
        assert status["num-vqs"] == 2 and status["started"] and not status["broken"]
        q = qmp.cmd("x-query-virtio-queue-status", path="hold0", queue=0)
        assert q["vring-num"] == 8 and q["last-avail-idx"] == 3 and q["used-idx"] == 0
        assert q["shadow-avail-idx"] == 3 and q["inuse"] == 3 and q["ready"]
        assert q["vring-desc"] == hq.desc_table
        element = qmp.cmd("x-query-virtio-queue-element", path="hold0", queue=0, index=1)
        assert element["index"] == heads[1] and "error" not in element
        assert [d["flags"] for d in element["descs"]] == [["next"], ["write"]]
        assert [d["len"] for d in element["descs"]] == [3, 16]
        assert element["avail"]["idx"] == 3 and element["used"]["idx"] == 0
        assert qmp.cmd("x-query-virtio-queue-element", path="hold0", queue=0, head=heads[2])["index"] == heads[2]
        with pytest.raises(ExecuteError) as err:
            qmp.cmd("x-query-virtio-status", path="nope")
        assert err.value.error_class == "DeviceNotFound"
        with pytest.raises(ExecuteError, match="no queue 5"):
            qmp.cmd("x-query-virtio-queue-status", path="hold0", queue=5)


def test_queue_element_decodes_indirect_and_reports_malformed_chains(rig):
    _, hold_drv = rig.drivers
    [hq] = hold_drv.probe(queue_sizes=[8])
    indirect_head = hq.add([b"x" * 4, b"y" * 2], [32], indirect=True, publish=False)
    hq.reserve(5, 6)
    hq.write_desc(5, 0x20_0000, 8, C.VIRTQ_DESC_F_NEXT, 6)
    hq.write_desc(6, 0x20_1000, 8, C.VIRTQ_DESC_F_NEXT, 5)  # a loop
    with rig.client() as qmp:
        element = qmp.cmd("x-query-virtio-queue-element", path="hold0", queue=0, head=indirect_head)
        assert element["descs"][0]["flags"] == ["indirect"]
        assert [(d["len"], d["flags"], d.get("in-indirect")) for d in element["descs"][1:]] == [
            (4, ["next"], True), (2, ["next"], True), (32, ["write"], True)]
        looped = qmp.cmd("x-query-virtio-queue-element", path="hold0", queue=0, head=5)
        assert looped["error"] == "descriptor 5 visited twice (loop)" and len(looped["descs"]) == 2
        with pytest.raises(ExecuteError, match="16-bit"):
            qmp.cmd("x-query-virtio-queue-element", path="hold0", queue=0, head=-1)


def test_queue_commands_before_the_driver_set_up_queues(rig):
    with rig.client() as qmp:
        q = qmp.cmd("x-query-virtio-queue-status", path="hold0", queue=0)
        assert not q["ready"] and "shadow-avail-idx" not in q
        with pytest.raises(ExecuteError) as err:
            qmp.cmd("x-query-virtio-queue-element", path="hold0", queue=0)
        assert err.value.error_class == "DeviceNotActive"


# -- device vendor commands -------------------------------------------------------------------------


def test_device_commands_run_on_the_device_loop_and_report_errors(rig):
    with rig.client() as qmp:
        result = qmp.cmd("x-pyvmm-hold-query")
        assert result == {"held": [], "thread": "test-devices"}
        assert qmp.cmd("x-pyvmm-hold-query", device="hold0")["held"] == []
        with pytest.raises(ExecuteError) as err:
            qmp.cmd("x-pyvmm-hold-query", device="echo0")
        assert err.value.error_class == "DeviceNotFound"
        with pytest.raises(ExecuteError, match="'value' is missing"):
            qmp.cmd("x-pyvmm-hold-emit")


def test_a_command_offered_by_two_devices_needs_device(tmp_path, memory):
    loop = DeviceEventLoop("test-devices").start()
    try:
        a, b = HoldingDevice(), HoldingDevice()
        devices = [MonitoredDevice("hold0", a, object()), MonitoredDevice("hold1", b, object())]
        monitor = Monitor(devices, loop.call, None, quit=lambda: None)
        bus = EventBus()
        server = QmpServer(CommandTable(BackendMachine(a, loop.call, bus, lambda: None), monitor), bus,
                           str(tmp_path / "q.sock")).start()
        try:
            with QEMUMonitorProtocol(str(tmp_path / "q.sock")) as qmp:
                qmp.connect()
                with pytest.raises(ExecuteError, match="several devices offer it"):
                    qmp.cmd("x-pyvmm-hold-query")
                b.held = ["fake"]
                with pytest.raises(ExecuteError):  # 'fake' has no head: a device error is a reply, not a crash
                    qmp.cmd("x-pyvmm-hold-query", device="hold1")
                assert qmp.cmd("x-pyvmm-hold-query", device="hold0")["held"] == []
        finally:
            server.close()
    finally:
        loop.stop()


def test_the_reply_to_quit_goes_out_even_when_the_server_closes_at_once(tmp_path):
    """The VMM closes the server as soon as quit stops it: the reply must not be lost."""
    loop = DeviceEventLoop("test-devices").start()
    bus = EventBus()
    server = None

    def quit_now():
        threading.Thread(target=lambda: (machine.shut_down(), server.close())).start()

    try:
        monitor = Monitor([], loop.call, None, quit=lambda: None)
        machine = BackendMachine(_AllDevices([]), loop.call, bus, quit_now)
        server = QmpServer(CommandTable(machine, monitor), bus, str(tmp_path / "q.sock")).start()
        sock, f, _ = raw_client(str(tmp_path / "q.sock"), negotiate=True)
        f.write(b'{"execute": "quit", "id": 9}\n')
        f.flush()
        lines = [json.loads(line) for line in f.readlines()]  # until the server closes
        assert {"return": {}, "id": 9} in lines
        assert any(m.get("event") == "SHUTDOWN" for m in lines)
        sock.close()
    finally:
        loop.stop()
