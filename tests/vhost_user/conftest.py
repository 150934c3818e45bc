"""Fixtures for the vhost-user tests: an echo device, a served socket and a connected front end."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from pyvmm.eventloop import DeviceEventLoop
from pyvmm.vhost_user.server import VhostUserServer

sys.path.insert(0, str(Path(__file__).parent))
from vhost_frontend import EchoDevice, connect  # noqa: E402


@pytest.fixture(autouse=True)
def no_unexpected_exceptions(caplog):
    """Refused requests are logged as warnings; a traceback from the back end is always a bug."""
    yield
    records = caplog.get_records("setup") + caplog.get_records("call")
    crashes = [r for r in records if r.name.startswith("pyvmm.vhost_user") and r.exc_info]
    assert not crashes, "back end raised:\n" + "\n".join(caplog.text.splitlines()[-40:])


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
