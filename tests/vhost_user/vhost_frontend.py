"""A Python vhost-user front end for tests: what QEMU does, driven step by step; and the echo
device the tests serve.

Guest RAM is a memfd (shared with the back end by fd); "front-end user addresses" are the
guest-physical addresses plus ``USER_OFFSET``, so a back end that forgets to translate
ring addresses reads the wrong place. The guest driver's side of each ring is
:class:`pyvmm.virtio.testing.DriverQueue`.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import select
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from pyvmm.memory import GuestMemory, MemoryRegion
from pyvmm.vhost_user import messages as m
from pyvmm.vhost_user.connection import Connection, Message
from pyvmm.virtio import constants as vc
from pyvmm.virtio.testing import DriverQueue, GuestAllocator
from pyvmm.virtio.testing import EchoDevice as SharedEchoDevice
from pyvmm.virtio.testing.devices import ECHO_FEATURE_UPPERCASE

USER_OFFSET = 0x7F00_0000_0000


def shared_memfd(name: str, size: int, sealed: bool = True) -> int:
    """Guest RAM as QEMU's memory-backend-memfd makes it: a memfd sealed against shrinking and
    growing (``seal=on``, its default). ``sealed=False``: a file the front end may truncate."""
    fd = os.memfd_create(name, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    os.ftruncate(fd, size)
    if sealed:
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL)
    return fd


def wait_readable(fd: int, timeout: float = 5.0) -> bool:
    return bool(select.select([fd], [], [], timeout)[0])


def eventfd_fired(fd: int, timeout: float = 5.0) -> bool:
    """Wait for an eventfd and consume its count."""
    if not wait_readable(fd, timeout):
        return False
    os.read(fd, 8)
    return True


class FrontEnd:
    """Sends vhost-user requests the way QEMU does and reads the replies."""

    def __init__(self, sock: socket.socket, ram_size: int = 2 << 20, ram_base: int = 0, sealed: bool = True):
        self.conn = Connection(sock, timeout=5.0)
        self.region = MemoryRegion.from_fd(ram_base, ram_size, shared_memfd("vhost-test-ram", ram_size, sealed))
        self.memory = GuestMemory([self.region])
        self.kick_fds: dict[int, int] = {}
        self.call_fds: dict[int, int] = {}
        self.err_fds: dict[int, int] = {}
        self.alloc = GuestAllocator(self.memory, ram_base, ram_size)
        self.rings: dict[int, DriverQueue] = {}

    def close(self) -> None:
        self.conn.close()
        for fds in (self.kick_fds, self.call_fds, self.err_fds):
            for fd in fds.values():
                os.close(fd)
            fds.clear()
        self.memory.close()

    # -- raw messages -------------------------------------------------------------------

    def send(self, request: int, payload: bytes | ctypes.Structure = b"", fds=(), need_reply: bool = False) -> None:
        flags = m.HeaderFlags.NEED_REPLY if need_reply else 0
        self.conn.send(request, flags, bytes(payload), fds)

    def recv(self) -> Message:
        msg = self.conn.recv()
        assert msg is not None, "back end closed the connection"
        assert msg.flags == m.HeaderFlags.VERSION_1 | m.HeaderFlags.REPLY, f"reply flags {msg.flags:#x}"
        return msg

    def call(self, request: int, payload: bytes | ctypes.Structure = b"", fds=()) -> Message:
        """A request that has a reply body."""
        self.send(request, payload, fds)
        reply = self.recv()
        assert reply.request == request
        return reply

    def acked(self, request: int, payload: bytes | ctypes.Structure = b"", fds=()) -> int:
        """A request sent with NEED_REPLY: returns the back end's u64 status (0 = success)."""
        self.send(request, payload, fds, need_reply=True)
        reply = self.recv()
        assert reply.request == request
        return reply.parse(m.U64).value

    def get_u64(self, request: int) -> int:
        return self.call(request).parse(m.U64).value

    # -- set-up steps, in QEMU's order ---------------------------------------------------

    def negotiate(self, protocol_features: int | None = None, features: int | None = None) -> int:
        offered = self.get_u64(m.FrontendRequest.GET_FEATURES)
        assert offered & vc.bit(m.VHOST_USER_F_PROTOCOL_FEATURES)
        offered_protocol = self.get_u64(m.FrontendRequest.GET_PROTOCOL_FEATURES)
        chosen = offered_protocol if protocol_features is None else protocol_features
        self.send(m.FrontendRequest.SET_PROTOCOL_FEATURES, m.U64(chosen))
        self.send(m.FrontendRequest.SET_OWNER)
        acked = offered if features is None else features
        assert self.acked(m.FrontendRequest.SET_FEATURES, m.U64(acked)) == 0
        return acked

    def region_desc(self, start: int = 0, size: int | None = None) -> m.MemoryRegionDesc:
        """A region covering ``[start, start+size)`` of our RAM memfd (its fd offset is ``start``)."""
        size = self.region.size - start if size is None else size
        gpa = self.region.guest_addr + start
        return m.MemoryRegionDesc(gpa, size, gpa + USER_OFFSET, start)

    def set_mem_table(self, pieces: list[tuple[int, int]] | None = None) -> int:
        """SET_MEM_TABLE with one region per ``(start, size)`` piece of RAM (default: all of it),
        each carrying its own copy of the memfd, as QEMU sends them."""
        descs = [self.region_desc(start, size) for start, size in pieces] if pieces else [self.region_desc()]
        table = bytes(m.MemoryTableHeader(len(descs), 0)) + b"".join(bytes(d) for d in descs)
        return self.acked(m.FrontendRequest.SET_MEM_TABLE, table, [self.region.fd] * len(descs))

    def setup_ring(self, index: int, size: int, event_idx: bool = False, enable: bool = True) -> DriverQueue:
        ring = DriverQueue(self.memory, self.alloc, size, event_idx)
        self.rings[index] = ring
        self.send(m.FrontendRequest.SET_VRING_NUM, m.VringState(index, size))
        self.send(m.FrontendRequest.SET_VRING_BASE, m.VringState(index, 0))
        addr = m.VringAddr(index, 0, ring.desc_table + USER_OFFSET, ring.used_ring + USER_OFFSET,
                           ring.avail_ring + USER_OFFSET, 0)
        assert self.acked(m.FrontendRequest.SET_VRING_ADDR, addr) == 0
        self.kick_fds[index] = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.call_fds[index] = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.send(m.FrontendRequest.SET_VRING_KICK, m.U64(index), [self.kick_fds[index]])
        assert self.acked(m.FrontendRequest.SET_VRING_CALL, m.U64(index), [self.call_fds[index]]) == 0
        if enable:
            assert self.acked(m.FrontendRequest.SET_VRING_ENABLE, m.VringState(index, 1)) == 0
        return ring

    def kick(self, index: int) -> None:
        os.write(self.kick_fds[index], (1).to_bytes(8, "little"))

    def get_vring_base(self, index: int) -> int:
        reply = self.call(m.FrontendRequest.GET_VRING_BASE, m.VringState(index, 0))
        state = reply.parse(m.VringState)
        assert state.index == index
        return state.num


def connect(path: str, **options) -> FrontEnd:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(path)
    return FrontEnd(sock, **options)


def wait_for(condition, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return condition()


def start_device(fe: FrontEnd, device, event_idx: bool = False, wait: bool = True) -> None:
    """Set the device up the way QEMU's vhost_dev_start does (``device`` gives the ring sizes)."""
    features = None
    if not event_idx:
        offered = fe.get_u64(m.FrontendRequest.GET_FEATURES)
        features = offered & ~vc.bit(vc.RING_EVENT_IDX)
    fe.negotiate(features=features)
    assert fe.set_mem_table() == 0
    for index, size in enumerate(device.queue_max_sizes):
        fe.setup_ring(index, size, event_idx=event_idx)
    if wait:
        assert wait_for(lambda: device.ctx is not None), "device was not activated"


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


SERVE_SCRIPT = textwrap.dedent("""
    import logging, sys
    sys.path.insert(0, {tests!r})
    from vhost_frontend import EchoDevice
    from pyvmm.vhost_user import serve

    class Device(EchoDevice):
        def close(self):
            print("device closed", flush=True)

    logging.basicConfig(level=logging.INFO)
    serve(Device(), {path!r}, once={once!r})
    print("serve returned", flush=True)
""")


def run_serve(tmp_path: Path, once: bool) -> tuple[subprocess.Popen, str]:
    """``serve()`` the echo device in a child process (for what would kill or leak in this one)."""
    path = str(tmp_path / "serve.sock")
    script = SERVE_SCRIPT.format(tests=str(Path(__file__).parent), path=path, once=once)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    if not wait_for(lambda: os.path.exists(path) or proc.poll() is not None, timeout=20):
        proc.kill()
        raise AssertionError("serve() did not create its socket")
    return proc, path
