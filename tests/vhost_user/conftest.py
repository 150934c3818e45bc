"""Fixtures for the vhost-user tests: a small echo device, a served socket and a connected front end."""

from __future__ import annotations

import socket
import sys
import threading
from pathlib import Path

import pytest

from pyvmm.eventloop import DeviceEventLoop
from pyvmm.vhost_user.server import VhostUserServer
from pyvmm.virtio.device import DeviceContext, VirtioDevice

sys.path.insert(0, str(Path(__file__).parent))
from vhost_frontend import FrontEnd  # noqa: E402

ECHO_FEATURE = 1 << 3


class EchoDevice(VirtioDevice):
    """Replies to every chain with its readable bytes reversed; records what happened to it."""

    device_type = 0x7E
    queue_max_sizes = (16, 32)

    def __init__(self) -> None:
        self.ctx: DeviceContext | None = None
        self.activations: list[DeviceContext] = []
        self.notifies: list[int] = []
        self.resets = 0
        self.closed = False
        self.config = bytearray(range(16))
        self.changed = threading.Event()

    def device_features(self) -> int:
        return ECHO_FEATURE

    def read_config(self, offset: int, size: int) -> bytes:
        return bytes(self.config[offset:offset + size]).ljust(size, b"\0")

    def write_config(self, offset: int, data: bytes) -> None:
        self.config[offset:offset + len(data)] = data

    def activate(self, ctx: DeviceContext) -> None:
        self.ctx = ctx
        self.activations.append(ctx)
        self.changed.set()

    def queue_notify(self, queue_index: int) -> None:
        self.notifies.append(queue_index)
        assert self.ctx is not None
        queue = self.ctx.queues[queue_index]
        while (chain := queue.pop()) is not None:
            data = chain.reader().read()
            written = chain.writer().write(data[::-1])
            self.ctx.complete(queue_index, chain, written)
        self.changed.set()

    def reset(self) -> None:
        self.ctx = None
        self.resets += 1
        self.changed.set()

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
