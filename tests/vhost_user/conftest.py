"""Fixtures for the vhost-user tests: an echo device, a served socket and a connected front end."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import pytest

from pyvmm.eventloop import DeviceEventLoop
from pyvmm.vhost_user.server import VhostUserServer
from pyvmm.virtio.testing import EchoDevice as SharedEchoDevice
from pyvmm.virtio.testing.devices import ECHO_FEATURE_UPPERCASE

sys.path.insert(0, str(Path(__file__).parent))
from vhost_frontend import FrontEnd  # noqa: E402

ECHO_FEATURE = 1 << ECHO_FEATURE_UPPERCASE


class EchoDevice(SharedEchoDevice):
    """The shared test echo device (upper-cases each chain's readable bytes into its writable
    part), plus a record of config writes and of ``close`` for the server tests."""

    def __init__(self) -> None:
        super().__init__(queues=2, queue_size=16)
        self.config_writes: list[tuple[int, bytes]] = []
        self.closed = False

    @property
    def notifies(self) -> list[int]:
        return [int(event.split()[1]) for event in self.events if event.startswith("notify")]

    @property
    def activations(self) -> int:
        return self.events.count("activate")

    @property
    def resets(self) -> int:
        return self.events.count("reset")

    def write_config(self, offset: int, data: bytes) -> None:
        self.config_writes.append((offset, bytes(data)))

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def events():
    loop = DeviceEventLoop("vhost-user-test").start()
    yield loop
    loop.stop()


@pytest.fixture
def device():
    return EchoDevice()


@pytest.fixture
def server(tmp_path, device, events):
    srv = VhostUserServer(device, str(tmp_path / "vhost.sock"), events)
    srv.start()
    yield srv
    srv.stop()


def connect(path: str) -> FrontEnd:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(path)
    return FrontEnd(sock)


@pytest.fixture
def frontend(server):
    fe = connect(server.socket_path)
    yield fe
    fe.close()
