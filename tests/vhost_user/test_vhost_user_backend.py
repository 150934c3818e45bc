"""The vhost-user back end against a Python front end: negotiation, rings, kicks, calls, config."""

from __future__ import annotations

import os
import socket
import time

import pytest

from pyvmm.vhost_user import messages as m
from pyvmm.vhost_user.backend import PROTOCOL_FEATURES
from pyvmm.virtio import constants as vc
from pyvmm.virtio.testing import ECHO_CONFIG, ECHO_CONFIG_MAGIC, GuestAllocator

from vhost_frontend import (ECHO_FEATURE, USER_OFFSET, connect, eventfd_fired, shared_memfd, start_device,
                            wait_for)


def test_features_and_limits(frontend, device):
    features = frontend.get_u64(m.FrontendRequest.GET_FEATURES)
    for bit in (vc.VERSION_1, vc.RING_EVENT_IDX, vc.RING_INDIRECT_DESC, m.VHOST_USER_F_PROTOCOL_FEATURES):
        assert features & vc.bit(bit), bit
    assert features & ECHO_FEATURE
    protocol = frontend.get_u64(m.FrontendRequest.GET_PROTOCOL_FEATURES)
    for feature in (m.ProtocolFeature.MQ, m.ProtocolFeature.REPLY_ACK, m.ProtocolFeature.CONFIG):
        assert protocol & (1 << feature), feature.name
    assert not protocol & (1 << m.ProtocolFeature.LOG_SHMFD)  # not implemented, so not offered
    frontend.send(m.FrontendRequest.SET_PROTOCOL_FEATURES, m.U64(protocol))
    assert frontend.get_u64(m.FrontendRequest.GET_QUEUE_NUM) == len(device.queue_max_sizes)
    assert frontend.get_u64(m.FrontendRequest.GET_MAX_MEM_SLOTS) == m.MAX_MEM_SLOTS


def test_unoffered_features_are_refused(frontend):
    frontend.send(m.FrontendRequest.SET_PROTOCOL_FEATURES, m.U64(PROTOCOL_FEATURES))
    assert frontend.acked(m.FrontendRequest.SET_FEATURES, m.U64(1 << 60)) != 0
    assert frontend.acked(m.FrontendRequest.SET_PROTOCOL_FEATURES, m.U64(1 << 40)) != 0


def test_echo_round_trip(frontend, device):
    start_device(frontend, device)
    ctx = device.ctx
    assert not ctx.features & vc.bit(m.VHOST_USER_F_PROTOCOL_FEATURES)
    assert ctx.features & ECHO_FEATURE
    # ring addresses were given as front-end user addresses; the queues must use guest-physical ones
    assert ctx.queues[0].desc_table == frontend.rings[0].desc_table
    assert ctx.queues[0].desc_table != frontend.rings[0].desc_table + USER_OFFSET

    ring = frontend.rings[1]
    head = ring.add([b"hello ", b"vhost"], [4, 16])
    frontend.kick(1)
    assert eventfd_fired(frontend.call_fds[1]), "no interrupt through the call fd"
    [entry] = ring.collect()
    assert entry.id == head
    assert entry.len == 11
    assert entry.written == b"HELLO VHOST"
    assert device.notifies == [1]


def test_event_idx_suppresses_interrupts(frontend, device):
    start_device(frontend, device, event_idx=True)
    assert device.ctx.queues[0].event_idx
    ring = frontend.rings[0]
    ring.add([b"one"], [8])
    frontend.kick(0)
    assert eventfd_fired(frontend.call_fds[0])
    ring.collect()
    ring.set_used_event(ring.last_used + 5)  # driver: interrupt me only after 6 more
    ring.add([b"two"], [8])
    frontend.kick(0)
    assert wait_for(lambda: ring.used_idx() == 2)
    assert not eventfd_fired(frontend.call_fds[0], timeout=0.3)


def test_get_vring_base_stops_and_restart_resumes(frontend, device):
    start_device(frontend, device)
    ring = frontend.rings[0]
    for i in range(3):
        ring.add([bytes([i])], [1])
    frontend.kick(0)
    assert wait_for(lambda: ring.used_idx() == 3)
    assert frontend.get_vring_base(0) == 3
    assert device.ctx is None and device.resets == 1
    assert frontend.get_vring_base(1) == 0
    assert device.resets == 1

    ring.add([b"late"], [4])
    frontend.kick(0)  # the ring is stopped: nobody may look at it
    time.sleep(0.2)
    assert ring.used_idx() == 3

    # QEMU's restart: base, fresh kick/call fds, enable
    for index in (0, 1):
        frontend.send(m.FrontendRequest.SET_VRING_BASE, m.VringState(index, 3 if index == 0 else 0))
        kick, call = os.eventfd(0, os.EFD_NONBLOCK), os.eventfd(0, os.EFD_NONBLOCK)
        for old in (frontend.kick_fds[index], frontend.call_fds[index]):
            os.close(old)
        frontend.kick_fds[index], frontend.call_fds[index] = kick, call
        frontend.send(m.FrontendRequest.SET_VRING_KICK, m.U64(index), [kick])
        assert frontend.acked(m.FrontendRequest.SET_VRING_CALL, m.U64(index), [call]) == 0
    assert wait_for(lambda: device.ctx is not None)
    assert device.activations == 2
    frontend.kick(0)
    assert eventfd_fired(frontend.call_fds[0])
    entries = ring.collect()
    assert [e.written for e in entries][-1] == b"LATE"
    assert ring.used_idx() == 4


def test_kick_before_activation_is_not_lost(frontend, device):
    frontend.negotiate()
    frontend.set_mem_table()
    ring = frontend.setup_ring(0, 16)
    frontend.setup_ring(1, 32, enable=False)
    ring.add([b"early"], [8])
    frontend.kick(0)
    time.sleep(0.1)
    assert device.ctx is None  # ring 1 is still disabled
    assert frontend.acked(m.FrontendRequest.SET_VRING_ENABLE, m.VringState(1, 1)) == 0
    assert eventfd_fired(frontend.call_fds[0])
    assert ring.collect()[0].written == b"EARLY"


def test_config_space(frontend, device):
    frontend.negotiate()
    reply = frontend.call(m.FrontendRequest.GET_CONFIG, bytes(m.ConfigHeader(0, 8, 0)) + bytes(8))
    header, data = reply.parse_prefix(m.ConfigHeader)
    assert (header.offset, header.size) == (0, 8)
    assert data == ECHO_CONFIG.pack(ECHO_CONFIG_MAGIC, 0)
    reply = frontend.call(m.FrontendRequest.GET_CONFIG, bytes(m.ConfigHeader(2, 4, 0)) + bytes(4))
    assert reply.parse_prefix(m.ConfigHeader)[1] == ECHO_CONFIG.pack(ECHO_CONFIG_MAGIC, 0)[2:6]
    assert frontend.acked(m.FrontendRequest.SET_CONFIG, bytes(m.ConfigHeader(2, 2, 0)) + b"\xaa\xbb") == 0
    assert device.config_writes == [(2, b"\xaa\xbb")]
    # a size the payload does not carry: the spec's error answer is an empty payload
    reply = frontend.call(m.FrontendRequest.GET_CONFIG, bytes(m.ConfigHeader(0, 8, 0)) + bytes(2))
    assert reply.payload == b""


def test_status(frontend, device):
    start_device(frontend, device)
    assert frontend.acked(m.FrontendRequest.SET_STATUS, m.U64(0xF)) == 0
    assert frontend.get_u64(m.FrontendRequest.GET_STATUS) == 0xF
    assert frontend.acked(m.FrontendRequest.SET_STATUS, m.U64(0)) == 0
    assert device.ctx is None and device.resets == 1


def test_memory_slots_add_and_remove(frontend, device):
    frontend.negotiate()
    region = bytes(m.SingleMemoryRegion(0, frontend.region_desc()))
    assert frontend.acked(m.FrontendRequest.ADD_MEM_REG, region, [frontend.region.fd]) == 0
    frontend.setup_ring(0, 16)
    ring1 = frontend.setup_ring(1, 32)
    assert wait_for(lambda: device.ctx is not None)
    assert frontend.acked(m.FrontendRequest.REM_MEM_REG, region) == 0
    # no memory now: ring addresses cannot be translated
    addr = m.VringAddr(1, 0, ring1.desc_table + USER_OFFSET, ring1.used_ring + USER_OFFSET,
                       ring1.avail_ring + USER_OFFSET, 0)
    assert frontend.acked(m.FrontendRequest.SET_VRING_ADDR, addr) != 0
    assert frontend.acked(m.FrontendRequest.REM_MEM_REG, region) != 0  # already gone


def test_mem_table_change_while_running(frontend, device):
    """QEMU re-sends the table when the guest's memory map changes: running rings keep working."""
    start_device(frontend, device)
    assert frontend.set_mem_table() == 0
    ring = frontend.rings[0]
    ring.add([b"abc"], [3])
    frontend.kick(0)
    assert eventfd_fired(frontend.call_fds[0])
    assert ring.collect()[0].written == b"ABC"


def test_regions_with_fd_offsets_and_a_hole(frontend, device):
    """QEMU's layout: RAM below 0xf0000 and from 1 MiB up, both from one memfd at their own offsets."""
    frontend.negotiate()
    assert frontend.set_mem_table([(0, 0xF0000), (0x100000, 0x100000)]) == 0
    frontend.alloc = GuestAllocator(frontend.memory, 0x100000, 0x100000)  # rings and buffers above 1 MiB
    for index, size in enumerate(device.queue_max_sizes):
        frontend.setup_ring(index, size)
    assert wait_for(lambda: device.ctx is not None)
    assert [(r.guest_addr, r.size) for r in device.ctx.memory.regions] == [(0, 0xF0000), (0x100000, 0x100000)]
    ring = frontend.rings[0]
    ring.add([b"offset"], [6])
    frontend.kick(0)
    assert eventfd_fired(frontend.call_fds[0])
    assert ring.collect()[0].written == b"OFFSET"


def test_memory_slot_limit(frontend):
    frontend.negotiate()
    fds = []
    try:
        for slot in range(m.MAX_MEM_SLOTS + 1):
            fd = shared_memfd("slot", 4096)
            fds.append(fd)
            gpa = slot * 0x10000
            region = bytes(m.SingleMemoryRegion(0, m.MemoryRegionDesc(gpa, 4096, gpa + USER_OFFSET, 0)))
            status = frontend.acked(m.FrontendRequest.ADD_MEM_REG, region, [fd])
            assert (status == 0) == (slot < m.MAX_MEM_SLOTS), slot
    finally:
        for fd in fds:
            os.close(fd)


def test_config_change_goes_through_the_backend_channel(frontend, device, events):
    start_device(frontend, device)
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with ours:
        assert frontend.acked(m.FrontendRequest.SET_BACKEND_REQ_FD, b"", [theirs.fileno()]) == 0
        theirs.close()
        events.call(device.ctx.signal_config)
        ours.settimeout(5)
        header = m.Header.from_buffer_copy(ours.recv(m.HEADER_SIZE))
    assert header.request == m.BackendRequest.CONFIG_CHANGE_MSG
    assert header.flags & m.VERSION_MASK == 1


def test_request_reset_signals_err_fd(frontend, device, events):
    start_device(frontend, device)
    err = os.eventfd(0, os.EFD_NONBLOCK)
    frontend.err_fds[0] = err
    assert frontend.acked(m.FrontendRequest.SET_VRING_ERR, m.U64(0), [err]) == 0
    events.call(device.ctx.request_reset, "test")
    assert eventfd_fired(err)
    assert frontend.get_u64(m.FrontendRequest.GET_STATUS) & vc.Status.DEVICE_NEEDS_RESET


def test_reset_device(frontend, device):
    start_device(frontend, device)
    assert frontend.acked(m.FrontendRequest.RESET_DEVICE) == 0
    assert device.ctx is None
    # everything must be set up again before the device runs
    frontend.kick(0)
    time.sleep(0.1)
    assert device.ctx is None


def test_reconnect_resets_and_serves_again(server, device):
    first = connect(server.socket_path)
    start_device(first, device)
    first.close()
    assert wait_for(lambda: device.resets == 1)
    second = connect(server.socket_path)
    try:
        start_device(second, device)
        ring = second.rings[0]
        ring.add([b"again"], [5])
        second.kick(0)
        assert eventfd_fired(second.call_fds[0])
        assert ring.collect()[0].written == b"AGAIN"
        assert device.activations == 2
    finally:
        second.close()


def test_one_front_end_at_a_time(server, device):
    first = connect(server.socket_path)
    second = connect(server.socket_path)  # queued in the backlog
    try:
        first.get_u64(m.FrontendRequest.GET_FEATURES)
        second.send(m.FrontendRequest.GET_FEATURES)
        second.conn.sock.settimeout(0.3)
        with pytest.raises(Exception):
            second.conn.sock.recv(1)
        first.close()
        second.conn.sock.settimeout(5)
        assert second.recv().parse(m.U64).value & ECHO_FEATURE
    finally:
        second.close()
