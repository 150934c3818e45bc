"""Bad input from the front end: refused with a failure status, or the connection closed; never a crash."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyvmm.errors import VmmError
from pyvmm.vhost_user import messages as m
from pyvmm.vhost_user.connection import ProtocolError
from pyvmm.vhost_user.server import bind_unix_listener

from vhost_frontend import (ECHO_FEATURE, USER_OFFSET, connect, eventfd_fired, run_serve, shared_memfd, start_device,
                            wait_for)

R = m.FrontendRequest


def still_serving(fe) -> bool:
    return bool(fe.get_u64(R.GET_FEATURES) & ECHO_FEATURE)


@pytest.mark.parametrize("request_code, payload", [
    (99, b""),                                          # unknown request
    (R.SET_LOG_BASE, bytes(16)),                        # not offered
    (R.SET_FEATURES, b"\x01\x02"),                      # short payload
    (R.SET_VRING_NUM, bytes(m.VringState(7, 16))),      # no such ring
    (R.SET_VRING_NUM, bytes(m.VringState(0, 3))),       # not a power of two
    (R.SET_VRING_NUM, bytes(m.VringState(0, 65536))),   # above the split ring's maximum
    (R.SET_VRING_BASE, bytes(m.VringState(0, 1 << 20))),
    (R.SET_VRING_ENABLE, bytes(m.VringState(0, 5))),
    (R.SET_VRING_ADDR, bytes(m.VringAddr(0, 0, 0x1000, 0x2000, 0x3000, 0))),  # no memory table yet
    (R.SET_VRING_ADDR, bytes(m.VringAddr(0, 1, USER_OFFSET, USER_OFFSET, USER_OFFSET, 0))),  # dirty log
    (R.SET_VRING_KICK, bytes(m.U64(0))),                # fd announced but not attached
    (R.SET_MEM_TABLE, bytes(m.MemoryTableHeader(9, 0))),
    (R.SET_MEM_TABLE, bytes(m.MemoryTableHeader(1, 0)) + bytes(m.MemoryRegionDesc(0, 4096, 0, 0))),  # no fd
    (R.ADD_MEM_REG, bytes(m.SingleMemoryRegion())),     # no fd
    (R.SET_STATUS, bytes(m.U64(0x1FF))),
    (R.SET_CONFIG, bytes(m.ConfigHeader(0, 300, 0))),
    (R.SET_BACKEND_REQ_FD, b""),                        # no fd
])
def test_refused_requests_get_a_failure_status(frontend, request_code, payload):
    frontend.negotiate()
    assert frontend.acked(request_code, payload) != 0
    assert still_serving(frontend)


def test_region_fd_that_cannot_be_mapped(frontend):
    frontend.negotiate()
    r, w = os.pipe()
    try:
        table = bytes(m.MemoryTableHeader(1, 0)) + bytes(m.MemoryRegionDesc(0, 4096, USER_OFFSET, 0))
        assert frontend.acked(R.SET_MEM_TABLE, table, [r]) != 0
    finally:
        os.close(r)
        os.close(w)
    assert still_serving(frontend)


def test_unusable_fds_are_refused(frontend, tmp_path):
    frontend.negotiate()
    with open(tmp_path / "regular", "w") as regular:
        assert frontend.acked(R.SET_VRING_KICK, m.U64(0), [regular.fileno()]) != 0
    r, w = os.pipe()
    try:
        assert frontend.acked(R.SET_BACKEND_REQ_FD, b"", [r]) != 0
    finally:
        os.close(r)
        os.close(w)
    assert still_serving(frontend)


def test_table_with_an_unmappable_region(frontend):
    """The first region maps, the second lies past the end of the fd: all of it is refused."""
    frontend.negotiate()
    size = frontend.region.size
    assert frontend.set_mem_table([(0, size // 2), (size // 2, size)]) != 0
    assert still_serving(frontend)
    assert frontend.set_mem_table() == 0  # a good table still works afterwards


def test_overlapping_regions_are_refused(frontend):
    frontend.negotiate()
    desc = frontend.region_desc()
    table = bytes(m.MemoryTableHeader(2, 0)) + bytes(desc) + bytes(desc)
    assert frontend.acked(R.SET_MEM_TABLE, table, [frontend.region.fd, frontend.region.fd]) != 0
    assert still_serving(frontend)


def test_broken_ring_does_not_crash(frontend, device):
    """avail idx far ahead of the ring: the queue reports it, the server carries on."""
    start_device(frontend, device)
    ring = frontend.rings[0]
    ring.set_avail_idx(1000)
    frontend.kick(0)
    time.sleep(0.2)
    assert still_serving(frontend)


def raw(path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(path)
    sock.settimeout(5)
    return sock


def closed_by_peer(sock: socket.socket) -> bool:
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


@pytest.mark.parametrize("data", [
    bytes(m.Header(R.GET_FEATURES, 0x2, 0)),                       # wrong version
    bytes(m.Header(R.SET_FEATURES, 0x1, m.MAX_PAYLOAD_SIZE + 1)),  # oversized payload
    bytes(m.Header(R.GET_VRING_BASE, 0x1, 8)) + bytes(m.VringState(9, 0)),  # unanswerable GET
])
def test_framing_errors_close_the_connection_and_the_server_recovers(server, data):
    sock = raw(server.socket_path)
    with sock:
        sock.sendall(data)
        assert closed_by_peer(sock)
    fe = connect(server.socket_path)
    try:
        assert still_serving(fe)
    finally:
        fe.close()


def test_truncated_message_then_hang_up(server):
    sock = raw(server.socket_path)
    sock.sendall(bytes(m.Header(R.SET_FEATURES, 0x1, 8)) + b"\x01\x02")
    sock.close()
    fe = connect(server.socket_path)
    try:
        assert still_serving(fe)
    finally:
        fe.close()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(request_code=st.integers(0, 50), flags=st.sampled_from([0x1, 0x9]), payload=st.binary(max_size=64))
def test_random_requests_never_kill_the_server(server, request_code, flags, payload):
    sock = raw(server.socket_path)
    with sock:
        sock.sendall(bytes(m.Header(request_code, flags, len(payload))) + payload)
        sock.shutdown(socket.SHUT_WR)
        sock.settimeout(2)
        try:
            while sock.recv(4096):
                pass
        except (ConnectionResetError, socket.timeout):
            pass
    fe = connect(server.socket_path)
    try:
        assert still_serving(fe)
    finally:
        fe.close()


_u32s = st.one_of(st.integers(0, 4), st.sampled_from([16, 64, 1024, 0xFFFF, 0x10000]), st.integers(0, 2**32 - 1))
_u64s = st.one_of(st.integers(0, 4), st.integers(0, 4).map(lambda v: v | m.VRING_NOFD_MASK),
                  st.sampled_from([0xF, 0xFF, 0x10F]), st.integers(0, 2**64 - 1))
_user_addrs = st.one_of(st.integers(0, 2 << 20).map(lambda a: USER_OFFSET + a), st.integers(0, 2**64 - 1))
_regions = st.builds(m.MemoryRegionDesc, st.one_of(st.integers(0, 4 << 20), st.integers(0, 2**64 - 1)),
                     st.sampled_from([0, 4096, 1 << 16, 2 << 20, 2**63]), _user_addrs,
                     st.one_of(st.sampled_from([0, 4096, 1 << 20]), st.integers(0, 2**64 - 1)))
_config = st.tuples(st.integers(0, 300), st.integers(0, 300), st.integers(0, 1)).flatmap(
    lambda h: st.binary(min_size=h[1], max_size=h[1]).map(lambda data: bytes(m.ConfigHeader(*h)) + data))
# For each request, payloads shaped like its struct (to get past the size checks) with hostile values.
_SHAPED = {
    **dict.fromkeys([R.SET_FEATURES, R.SET_PROTOCOL_FEATURES, R.SET_STATUS, R.SET_LOG_BASE],
                    _u64s.map(lambda v: bytes(m.U64(v)))),
    **dict.fromkeys([R.SET_VRING_KICK, R.SET_VRING_CALL, R.SET_VRING_ERR],
                    st.tuples(st.integers(0, 2), st.booleans()).map(
                        lambda v: bytes(m.U64(v[0] | (m.VRING_NOFD_MASK if v[1] else 0))))),
    **dict.fromkeys([R.SET_VRING_NUM, R.SET_VRING_BASE, R.GET_VRING_BASE, R.SET_VRING_ENABLE],
                    st.builds(m.VringState, _u32s, _u32s).map(bytes)),
    R.SET_VRING_ADDR: st.builds(m.VringAddr, st.integers(0, 2), st.integers(0, 1), _user_addrs, _user_addrs,
                                _user_addrs, st.just(0)).map(bytes),
    R.ADD_MEM_REG: _regions.map(lambda d: bytes(m.SingleMemoryRegion(0, d))),
    R.REM_MEM_REG: _regions.map(lambda d: bytes(m.SingleMemoryRegion(0, d))),
    R.SET_MEM_TABLE: _regions.map(lambda d: bytes(m.MemoryTableHeader(1, 0)) + bytes(d)),
    R.GET_CONFIG: _config,
    R.SET_CONFIG: _config,
}
_HANDLED = sorted(set(_SHAPED) | {R.GET_FEATURES, R.GET_PROTOCOL_FEATURES, R.SET_OWNER, R.RESET_OWNER,
                                   R.RESET_DEVICE, R.GET_QUEUE_NUM, R.GET_MAX_MEM_SLOTS, R.SET_BACKEND_REQ_FD,
                                   R.GET_STATUS, R.SET_VRING_ENDIAN, R.GET_INFLIGHT_FD})
requests = st.sampled_from(_HANDLED).flatmap(lambda request: st.tuples(
    st.just(request),
    st.one_of(_SHAPED[request], st.binary(max_size=80)) if request in _SHAPED else st.binary(max_size=80),
    st.sampled_from(["none", "eventfd", "memfd"])))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sequence=st.lists(requests, min_size=1, max_size=8))
def test_random_requests_against_a_running_device(server, device, sequence):
    """Well-framed requests with random contents (and fds) on a live device: refused or obeyed,
    never a crash; the server serves the next front end."""
    fe = connect(server.socket_path)
    try:
        start_device(fe, device)
        for request, payload, fd_kind in sequence:
            fds = []
            if fd_kind == "eventfd":
                fds.append(os.eventfd(0, os.EFD_NONBLOCK))
            elif fd_kind == "memfd":
                fds.append(shared_memfd("fuzz", 1 << 16))
            try:
                fe.send(request, payload, fds, need_reply=True)
            finally:
                for fd in fds:
                    os.close(fd)
            fe.conn.timeout = 2
            try:
                if fe.conn.recv() is None:
                    break  # the back end hung up on a request it could not answer
            except ProtocolError:
                break
    finally:
        fe.close()
    fe = connect(server.socket_path)
    try:
        assert still_serving(fe)
    finally:
        fe.close()


def test_bind_refuses_a_live_socket_and_replaces_a_stale_one(tmp_path):
    path = str(tmp_path / "s.sock")
    live = bind_unix_listener(path)
    with pytest.raises(VmmError, match="in use"):
        bind_unix_listener(path)
    live.close()  # the file stays behind, nobody listens: stale
    bind_unix_listener(path).close()
    other = tmp_path / "file"
    other.write_text("x")
    with pytest.raises(VmmError, match="not a socket"):
        bind_unix_listener(str(other))


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_serve_stops_cleanly_on_signal(tmp_path, device, sig):
    proc, path = run_serve(tmp_path, once=False)
    try:
        fe = connect(path)
        start_device(fe, device, wait=False)  # a local twin of the served device sizes the rings
        fe.rings[0].add([b"xy"], [2])
        fe.kick(0)
        assert eventfd_fired(fe.call_fds[0])
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=20)
        fe.close()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "device closed" in out and "serve returned" in out
    assert not os.path.exists(path)


def test_serve_once_exits_after_the_front_end_leaves(tmp_path, device):
    proc, path = run_serve(tmp_path, once=True)
    try:
        fe = connect(path)
        assert still_serving(fe)
        fe.close()
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "device closed" in out


def test_a_full_call_pipe_does_not_block_the_server(frontend, device):
    """A front end that passes a blocking pipe as call fd and never drains it."""
    start_device(frontend, device)
    r, w = os.pipe()
    try:
        os.set_blocking(w, False)
        with contextlib.suppress(BlockingIOError):
            while True:
                os.write(w, bytes(65536))
        os.set_blocking(w, True)
        assert frontend.acked(R.SET_VRING_CALL, m.U64(0), [w]) == 0
        ring = frontend.rings[0]
        for _ in range(3):
            ring.add([b"ping"], [4])
            frontend.kick(0)
        assert wait_for(lambda: ring.used_idx() == 3)
        assert still_serving(frontend)
    finally:
        os.close(r)
        os.close(w)
