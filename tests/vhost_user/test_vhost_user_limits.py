"""What a hostile or broken front end can do to the back end is bounded (issue 7, findings 7–11):
it cannot kill it by shrinking guest RAM, spin it on a dead kick fd, stall ring service with a
partial message, keep its RAM mapped after hanging up, or reach a socket it does not own."""

from __future__ import annotations

import logging
import os
import stat
import time

import pytest

from pyvmm.eventloop import DeviceEventLoop
from pyvmm.vhost_user import connection
from pyvmm.vhost_user import messages as m
from pyvmm.vhost_user.server import VhostUserServer

from vhost_frontend import (ECHO_FEATURE, EchoDevice, connect, eventfd_fired, run_serve, start_device,
                            wait_for)

R = m.FrontendRequest


def still_serving(fe) -> bool:
    return bool(fe.get_u64(R.GET_FEATURES) & ECHO_FEATURE)


def echo(fe, index: int = 0, text: bytes = b"ping") -> bool:
    """One request through ring ``index``, answered and signalled."""
    ring = fe.rings[index]
    before = ring.used_idx()
    ring.add([text], [len(text)])
    fe.kick(index)
    served = eventfd_fired(fe.call_fds[index], timeout=5) and wait_for(lambda: ring.used_idx() == before + 1)
    ring.collect()
    return served


def stop(proc) -> tuple[str, str]:
    if proc.poll() is None:
        proc.terminate()
    try:
        return proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()


# -- finding 7: guest RAM that shrinks under the back end ---------------------------------------


def test_ram_the_front_end_could_shrink_is_refused(tmp_path):
    """A memfd without F_SEAL_SHRINK, truncated to 0 after SET_MEM_TABLE, then a kick: before,
    the back end died of SIGBUS without a word; now the table is refused with a reason."""
    proc, path = run_serve(tmp_path, once=False)
    try:
        fe = connect(path, sealed=False)
        fe.negotiate()
        status = fe.set_mem_table()
        if status == 0:  # the back end took the table: start the rings and pull the rug
            for index, size in enumerate(EchoDevice().queue_max_sizes):
                fe.setup_ring(index, size)
            fe.rings[0].add([b"boom"], [4])
        os.ftruncate(fe.region.fd, 0)
        if status == 0:
            fe.kick(0)
            time.sleep(0.5)
        assert proc.poll() is None, f"back end died (status {proc.returncode})"
        assert status != 0
        assert still_serving(fe)
        fe.close()
    finally:
        out, err = stop(proc)
    assert "can shrink" in err and "F_SEAL_SHRINK" in err, err


def test_sealed_ram_is_served_and_cannot_shrink(tmp_path):
    proc, path = run_serve(tmp_path, once=False)
    try:
        fe = connect(path)
        start_device(fe, EchoDevice(), wait=False)
        assert echo(fe)
        with pytest.raises(PermissionError):
            os.ftruncate(fe.region.fd, 0)
        assert echo(fe, 1) and proc.poll() is None
        fe.close()
    finally:
        stop(proc)


# -- finding 8: a kick fd at end of file ---------------------------------------------------------


def test_kick_fd_at_eof_is_disarmed_and_logged(frontend, device, caplog):
    start_device(frontend, device)
    r, w = os.pipe()
    try:
        assert frontend.acked(R.SET_VRING_KICK, m.U64(0), [r]) == 0
        os.close(w)  # the kick fd now reads end of file for ever
        w = -1
        cpu = time.process_time()
        time.sleep(1.0)
        cpu = time.process_time() - cpu
        assert cpu < 0.3, f"the back end spun on the dead kick fd: {cpu:.2f} s of CPU in 1 s"
        warnings = [r for r in caplog.records if "end of file" in r.getMessage()]
        assert len(warnings) == 1, caplog.text
        assert still_serving(frontend)
        # A new kick fd re-arms the ring.
        kick = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        assert frontend.acked(R.SET_VRING_KICK, m.U64(0), [kick]) == 0
        os.close(frontend.kick_fds[0])
        frontend.kick_fds[0] = kick
        assert echo(frontend)
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)


# -- finding 9: partial messages ------------------------------------------------------------------


def test_half_a_message_does_not_stop_the_rings(frontend, device):
    start_device(frontend, device)
    request = bytes(m.Header(R.GET_FEATURES, m.HeaderFlags.VERSION_1, 0))
    frontend.conn.sock.sendall(request[:6])
    assert echo(frontend), "the ring was not served while half a message was pending"
    assert echo(frontend, 1)
    frontend.conn.sock.sendall(request[6:])
    reply = frontend.recv()  # the message, completed, is answered
    assert reply.request == R.GET_FEATURES and reply.parse(m.U64).value & ECHO_FEATURE
    assert still_serving(frontend)


def test_a_trickled_message_is_bounded_in_total(tmp_path, device, monkeypatch, caplog):
    """One byte at a time, each in time for a per-read timeout: the message as a whole must
    still complete within the bound, and the rings are served meanwhile."""
    monkeypatch.setattr(connection, "MESSAGE_TIMEOUT", 1.0, raising=False)
    events = DeviceEventLoop("vhost-user-test").start()
    server = VhostUserServer(device, str(tmp_path / "vhost.sock"), events)
    server.start()
    try:
        fe = connect(server.socket_path)
        start_device(fe, device)
        request = bytes(m.Header(R.SET_FEATURES, m.HeaderFlags.VERSION_1, 8)) + bytes(8)
        started = time.monotonic()
        closed = False
        for byte in request:
            try:
                fe.conn.sock.sendall(bytes([byte]))
            except OSError:
                closed = True
                break
            assert echo(fe), "the ring was not served while the message trickled in"
            if wait_for(lambda: server.backend.conn is None, timeout=0.25):  # one byte every 0.25 s
                closed = True
                break
        assert closed, "the back end waited for the whole trickled message"
        assert time.monotonic() - started < 5
        assert any("1 s" in r.getMessage() and "message" in r.getMessage() for r in caplog.records), caplog.text
        fe.close()
        fe = connect(server.socket_path)  # the server takes the next front end
        assert still_serving(fe)
        fe.close()
    finally:
        server.stop()
        events.stop()


# -- finding 10: guest RAM of front ends that hung up -----------------------------------------------


def mapped_guest_ram(pid: int) -> list[str]:
    with open(f"/proc/{pid}/maps") as maps:
        return [line.strip() for line in maps if "vhost-test-ram" in line]


def test_ram_is_unmapped_when_front_ends_hang_up(tmp_path):
    proc, path = run_serve(tmp_path, once=False)
    try:
        for cycle in range(20):
            fe = connect(path, ram_size=8 << 20)
            start_device(fe, EchoDevice(), wait=False)
            assert echo(fe, cycle % 2)
            assert mapped_guest_ram(proc.pid), "the back end never mapped the RAM"
            fe.close()  # hang up without stopping the rings, as a crashed front end would
            assert wait_for(lambda: not mapped_guest_ram(proc.pid), timeout=5), (
                f"cycle {cycle}: guest RAM still mapped after the front end left:\n"
                + "\n".join(mapped_guest_ram(proc.pid)))
        assert proc.poll() is None
    finally:
        stop(proc)


class ViewKeepingDevice(EchoDevice):
    """A device bug: it keeps a numpy view of guest RAM after its reset."""

    kept = None

    def activate(self, ctx) -> None:
        super().activate(ctx)
        self.kept = ctx.memory.view(0, 4096)


def test_ram_is_unmapped_even_if_a_device_keeps_a_view(tmp_path, events, caplog):
    device = ViewKeepingDevice()
    server = VhostUserServer(device, str(tmp_path / "vhost.sock"), events)
    server.start()
    try:
        fe = connect(server.socket_path, ram_size=8 << 20)
        start_device(fe, device)
        assert echo(fe)
        fe.close()  # the test front end's own mapping goes too (its rings' views notwithstanding)
        assert wait_for(lambda: not mapped_guest_ram(os.getpid()), timeout=5), "\n".join(
            mapped_guest_ram(os.getpid()))
        assert "still in use when the front end let go" in caplog.text
        assert not device.kept.any()  # the stale view reads zero pages instead of faulting
    finally:
        server.stop()


def test_ram_table_change_on_a_running_device_keeps_serving(frontend, device, caplog):
    start_device(frontend, device)
    assert echo(frontend)
    assert frontend.set_mem_table() == 0  # the same RAM again, as a new mapping
    assert echo(frontend) and echo(frontend, 1)
    assert "still in use" not in caplog.text


# -- finding 11: who may connect -------------------------------------------------------------------


def test_socket_is_private_whatever_the_umask(tmp_path, device, events):
    old = os.umask(0)
    try:
        server = VhostUserServer(device, str(tmp_path / "vhost.sock"), events)
        server.start()
    finally:
        os.umask(old)
    try:
        assert stat.S_IMODE(os.stat(server.socket_path).st_mode) == 0o600
        assert os.listdir(tmp_path) == ["vhost.sock"]
        fe = connect(server.socket_path)
        assert still_serving(fe)
        fe.close()
    finally:
        server.stop()
