"""Fixtures for the vhost-user tests: an echo device, a served socket and a connected front end."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from pyvmm.eventloop import DeviceEventLoop
from pyvmm.vhost_user.server import VhostUserServer

sys.path.insert(0, str(Path(__file__).parent))
from vhost_frontend import EchoDevice, connect  # noqa: E402


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


@pytest.fixture
def frontend(server):
    fe = connect(server.socket_path)
    yield fe
    fe.close()
