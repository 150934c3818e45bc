"""A driver-side model of split virtqueues and of the Linux virtio-mmio probe, for tests.

The rust-vmm ``virtio-queue`` ``mock.rs`` idea: tests build queues in a real
:class:`GuestMemory` the way a driver would (Linux's way, and the other ways the spec
allows: any split of a message across descriptors, indirect tables), kick the device and read
back the used ring, without booting a guest. It also builds every kind of malformed chain.

Importable by any test (``from pyvmm.virtio.testing import DriverQueue, MmioDriver``).
"""

from __future__ import annotations

import struct
import threading
from dataclasses import dataclass, field
from typing import Callable, Sequence

from pyvmm.memory import GuestMemory
from pyvmm.virtio import constants as C
from pyvmm.virtio.queue import SplitQueue

_DESC = struct.Struct("<QIHH")

F_NEXT = C.VIRTQ_DESC_F_NEXT
F_WRITE = C.VIRTQ_DESC_F_WRITE
F_INDIRECT = C.VIRTQ_DESC_F_INDIRECT


class GuestAllocator:
    """A bump allocator over a range of guest RAM (the test's 'kmalloc')."""

    def __init__(self, memory: GuestMemory, base: int, size: int):
        self.memory = memory
        self.base = base
        self.end = base + size
        self.next = base

    def alloc(self, size: int, align: int = 8) -> int:
        addr = -(-self.next // align) * align
        if addr + size > self.end:
            raise MemoryError(f"test allocator out of guest memory ({size} bytes wanted)")
        self.next = addr + max(size, 1)
        return addr


class FakeInterrupt:
    """An interrupt line for tests: counts triggers and lets a thread wait for one."""

    def __init__(self) -> None:
        self.count = 0
        self._cond = threading.Condition()
        self._sem = threading.Semaphore(0)

    def trigger(self) -> None:
        with self._cond:
            self.count += 1
            self._cond.notify_all()
        self._sem.release()

    def wait(self, timeout: float = 5.0) -> bool:
        """Consume one trigger (like an interrupt being delivered); False on timeout."""
        return self._sem.acquire(timeout=timeout)

    def wait_count(self, count: int, timeout: float = 5.0) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self.count >= count, timeout)


def split_bytes(data: bytes, cuts: Sequence[int]) -> list[bytes]:
    """Cut ``data`` at the given offsets (sorted, deduplicated, clipped to the data)."""
    points = [0] + sorted({c for c in cuts if 0 < c < len(data)}) + [len(data)]
    return [data[a:b] for a, b in zip(points, points[1:])]


@dataclass
class Pending:
    """A chain the driver made available: its descriptors and writable buffers."""

    head: int
    descriptors: list[int]
    writable: list[tuple[int, int]] = field(default_factory=list)
    indirect_table: int | None = None


@dataclass
class UsedEntry:
    id: int
    len: int
    written: bytes
    """The first ``len`` bytes of the chain's writable buffers (empty if unknown)."""
    writable: bytes = b""
    """The chain's whole writable area as the device left it (0xEE where it wrote nothing)."""


class DriverQueue:
    """The driver half of one split virtqueue laid out in guest memory."""

    def __init__(self, memory: GuestMemory, allocator: GuestAllocator, size: int,
                 event_idx: bool = False):
        self.memory = memory
        self.alloc = allocator
        self.size = size
        self.event_idx = event_idx
        self.desc_table = allocator.alloc(C.desc_table_size(size), C.DESC_TABLE_ALIGN)
        self.avail_ring = allocator.alloc(C.avail_ring_size(size, True), C.AVAIL_RING_ALIGN)
        self.used_ring = allocator.alloc(C.used_ring_size(size, True), 4096)
        memory.fill(self.desc_table, C.desc_table_size(size))
        memory.fill(self.avail_ring, C.avail_ring_size(size, True))
        memory.fill(self.used_ring, C.used_ring_size(size, True))
        self.free = list(range(size))
        self.avail_idx = 0
        self.last_used = 0
        self.pending: dict[int, Pending] = {}

    # -- wiring to the device side ---------------------------------------------------------

    def configure(self, queue: SplitQueue, indirect: bool = True) -> SplitQueue:
        """Program a device-side queue the way a transport would, and enable it."""
        queue.size = self.size
        queue.desc_table = self.desc_table
        queue.avail_ring = self.avail_ring
        queue.used_ring = self.used_ring
        queue.event_idx = self.event_idx
        queue.indirect = indirect
        queue.enable()
        return queue

    def device_queue(self, index: int = 0, indirect: bool = True, max_size: int | None = None) -> SplitQueue:
        return self.configure(SplitQueue(self.memory, max_size or self.size, index), indirect)

    # -- descriptors ------------------------------------------------------------------------

    def write_desc(self, index: int, addr: int, length: int, flags: int = 0, next: int = 0,
                   table: int | None = None) -> None:
        base = self.desc_table if table is None else table
        self.memory.write(base + index * C.DESC_SIZE, _DESC.pack(addr, length, flags, next))

    def buffer(self, data: bytes | int) -> int:
        """Allocate a guest buffer holding ``data`` (or ``data`` zero bytes) and return its address."""
        size = data if isinstance(data, int) else len(data)
        addr = self.alloc.alloc(size)
        if isinstance(data, int):
            self.memory.fill(addr, size, 0xEE)  # poison: tests can see what the device did not write
        else:
            self.memory.write(addr, data)
        return addr

    def add(self, readable: Sequence[bytes] = (), writable: Sequence[int] = (), *,
            indirect: bool = False, publish: bool = True) -> int:
        """Add one chain: each element of ``readable`` is one device-readable descriptor's
        contents, each element of ``writable`` one device-writable descriptor's size."""
        bufs = [(self.buffer(r), len(r), 0) for r in readable]
        bufs += [(self.buffer(n), n, F_WRITE) for n in writable]
        if not bufs:
            raise ValueError("a chain needs at least one descriptor")
        if indirect:
            table = self.alloc.alloc(C.DESC_SIZE * len(bufs), 16)
            for i, (addr, n, flags) in enumerate(bufs):
                more = F_NEXT if i + 1 < len(bufs) else 0
                self.write_desc(i, addr, n, flags | more, i + 1, table=table)
            head = self._take(1)[0]
            self.write_desc(head, table, C.DESC_SIZE * len(bufs), F_INDIRECT)
            pending = Pending(head, [head], indirect_table=table)
        else:
            ids = self._take(len(bufs))
            for i, (addr, n, flags) in enumerate(bufs):
                more = F_NEXT if i + 1 < len(bufs) else 0
                self.write_desc(ids[i], addr, n, flags | more, ids[i + 1] if more else 0)
            head = ids[0]
            pending = Pending(head, ids)
        pending.writable = [(a, n) for a, n, f in bufs if f & F_WRITE]
        self.pending[head] = pending
        if publish:
            self.publish(head)
        return head

    def add_message(self, out: bytes = b"", in_size: int = 0, out_cuts: Sequence[int] = (),
                    in_cuts: Sequence[int] = (), *, indirect: bool = False, publish: bool = True) -> int:
        """A request of ``out`` bytes and a ``in_size``-byte reply area, cut into descriptors at the given offsets."""
        readable = split_bytes(out, out_cuts) if out else []
        points = [0] + sorted({c for c in in_cuts if 0 < c < in_size}) + [in_size]
        writable = [b - a for a, b in zip(points, points[1:])] if in_size else []
        return self.add(readable, writable, indirect=indirect, publish=publish)

    def _take(self, n: int) -> list[int]:
        if n > len(self.free):
            raise RuntimeError(f"driver queue full ({len(self.free)} free descriptors, {n} wanted)")
        ids, self.free = self.free[:n], self.free[n:]
        return ids

    # -- avail ring -------------------------------------------------------------------------

    def publish(self, head: int) -> None:
        """Put ``head`` in the avail ring and advance avail idx (entry first, then idx)."""
        self.memory.write_u16(self.avail_ring + 4 + 2 * (self.avail_idx % self.size), head)
        self.avail_idx = (self.avail_idx + 1) & 0xFFFF
        self.memory.write_u16(self.avail_ring + 2, self.avail_idx)

    def set_avail_idx(self, value: int) -> None:
        self.avail_idx = value & 0xFFFF
        self.memory.write_u16(self.avail_ring + 2, self.avail_idx)

    def set_no_interrupt(self, on: bool) -> None:
        self.memory.write_u16(self.avail_ring, C.VIRTQ_AVAIL_F_NO_INTERRUPT if on else 0)

    def set_used_event(self, idx: int) -> None:
        self.memory.write_u16(self.avail_ring + 4 + 2 * self.size, idx & 0xFFFF)

    # -- used ring --------------------------------------------------------------------------

    def used_idx(self) -> int:
        return self.memory.read_u16(self.used_ring + 2)

    def avail_event(self) -> int:
        return self.memory.read_u16(self.used_ring + 4 + 8 * self.size)

    def used_flags(self) -> int:
        return self.memory.read_u16(self.used_ring)

    def needs_kick(self, old_avail: int) -> bool:
        """Linux's virtqueue_kick_prepare: should we notify after moving avail from ``old_avail``?"""
        from pyvmm.virtio.queue import need_event
        if self.event_idx:
            return need_event(self.avail_event(), self.avail_idx, old_avail)
        return not self.used_flags() & C.VIRTQ_USED_F_NO_NOTIFY

    def collect(self) -> list[UsedEntry]:
        """Take every new used entry, read back the bytes written and free the descriptors."""
        entries = []
        end = self.used_idx()
        while self.last_used != end:
            slot = self.last_used % self.size
            id_, n = struct.unpack("<II", self.memory.read(self.used_ring + 4 + 8 * slot, 8))
            self.last_used = (self.last_used + 1) & 0xFFFF
            pending = self.pending.pop(id_, None)
            written = whole = b""
            if pending is not None:
                written = self._read_writable(pending.writable, n)
                whole = self._read_writable(pending.writable, sum(size for _, size in pending.writable))
                self.free.extend(pending.descriptors)
            entries.append(UsedEntry(id_, n, written, whole))
        if self.event_idx:
            self.set_used_event(self.last_used)
        return entries

    def _read_writable(self, buffers: list[tuple[int, int]], n: int) -> bytes:
        out = []
        for addr, size in buffers:
            take = min(size, n)
            out.append(self.memory.read(addr, take))
            n -= take
        return b"".join(out)

    def writable_bytes(self, head: int) -> bytes:
        """The whole writable area of a pending chain, as the device left it."""
        p = self.pending[head]
        return self._read_writable(p.writable, sum(n for _, n in p.writable))


# -- malformed chains ----------------------------------------------------------------------
# Each builder publishes one bad chain (or breaks the ring) on ``dq`` and returns the phrase
# the device's warning must contain. ``fatal`` kinds break the ring (device needs reset).

def _ok_buf(dq: DriverQueue, n: int = 16) -> int:
    return dq.buffer(n)


def _bad_next(dq: DriverQueue) -> str:
    dq.write_desc(0, _ok_buf(dq), 16, F_NEXT, dq.size + 3)
    dq.publish(0)
    return "next index"


def _loop(dq: DriverQueue) -> str:
    dq.write_desc(0, _ok_buf(dq), 16, F_NEXT, 1)
    dq.write_desc(1, _ok_buf(dq), 16, F_NEXT, 0)
    dq.publish(0)
    return "visited twice"


def _readable_after_writable(dq: DriverQueue) -> str:
    dq.write_desc(0, _ok_buf(dq), 16, F_WRITE | F_NEXT, 1)
    dq.write_desc(1, _ok_buf(dq), 16, 0)
    dq.publish(0)
    return "follows a writable"


def _indirect_table(dq: DriverQueue, entries: list[tuple[int, int, int, int]], length: int | None = None,
                    flags: int = 0) -> None:
    table = dq.alloc.alloc(max(1, len(entries)) * 16, 16)
    for i, (addr, n, f, nxt) in enumerate(entries):
        dq.write_desc(i, addr, n, f, nxt, table=table)
    dq.write_desc(0, table, 16 * len(entries) if length is None else length, F_INDIRECT | flags, 1)
    dq.publish(0)


def _indirect_with_next(dq: DriverQueue) -> str:
    dq.write_desc(1, _ok_buf(dq), 16, 0)
    _indirect_table(dq, [(_ok_buf(dq), 16, 0, 0)], flags=F_NEXT)
    return "NEXT flag"


def _nested_indirect(dq: DriverQueue) -> str:
    _indirect_table(dq, [(_ok_buf(dq), 16, F_NEXT, 1), (dq.alloc.alloc(32, 16), 32, F_INDIRECT, 0)])
    return "nested indirect"


def _indirect_bad_len(dq: DriverQueue) -> str:
    _indirect_table(dq, [(_ok_buf(dq), 16, 0, 0)], length=20)
    return "multiple of 16"


def _indirect_zero_len(dq: DriverQueue) -> str:
    _indirect_table(dq, [(_ok_buf(dq), 16, 0, 0)], length=0)
    return "multiple of 16"


def _indirect_too_long(dq: DriverQueue) -> str:
    n = dq.size + 1
    _indirect_table(dq, [(_ok_buf(dq, 1), 1, F_NEXT if i + 1 < n else 0, i + 1) for i in range(n)])
    return "longer than the queue size"


def _indirect_next_out_of_table(dq: DriverQueue) -> str:
    _indirect_table(dq, [(_ok_buf(dq), 16, F_NEXT, 5), (_ok_buf(dq), 16, 0, 0)])
    return "table length"


def _indirect_loop(dq: DriverQueue) -> str:
    _indirect_table(dq, [(_ok_buf(dq), 16, F_NEXT, 1), (_ok_buf(dq), 16, F_NEXT, 0)])
    return "visited twice"


def _indirect_table_outside_ram(dq: DriverQueue) -> str:
    dq.write_desc(0, 0xFFFF_FFFF_0000, 32, F_INDIRECT)
    dq.publish(0)
    return "outside guest RAM"


def _buffer_outside_ram(dq: DriverQueue) -> str:
    dq.write_desc(0, 0x7FFF_0000_0000, 64, 0)
    dq.publish(0)
    return "outside guest RAM"


def _buffer_overflows_64(dq: DriverQueue) -> str:
    dq.write_desc(0, 0xFFFF_FFFF_FFFF_FFF0, 0x100, 0)
    dq.publish(0)
    return "overflows 64 bits"


def _total_len_overflow(dq: DriverQueue) -> str:
    """Several huge (but in-RAM) descriptors over the first region; needs a region of >= 1 GiB
    (memfd RAM is sparse, so this costs nothing) and a queue of >= 8 entries."""
    region = dq.memory.regions[0]
    length = min(region.size, 0xFFFF_FFFF)
    n = (1 << 32) // length + 1
    for i in range(n):
        dq.write_desc(i, region.guest_addr, length, F_NEXT if i + 1 < n else 0, i + 1)
    dq.publish(0)
    return "exceeds 2^32-1"


def _indirect_not_negotiated(dq: DriverQueue) -> str:
    _indirect_table(dq, [(_ok_buf(dq), 16, 0, 0)])
    return "not negotiated"


def _avail_idx_jump(dq: DriverQueue) -> str:
    dq.set_avail_idx(dq.avail_idx + dq.size + 1)
    return "more than the queue size"


def _head_out_of_range(dq: DriverQueue) -> str:
    dq.publish(dq.size + 7)
    return ">= queue size"


MALFORMED: dict[str, Callable[[DriverQueue], str]] = {
    "next_out_of_range": _bad_next,
    "loop": _loop,
    "readable_after_writable": _readable_after_writable,
    "indirect_with_next": _indirect_with_next,
    "nested_indirect": _nested_indirect,
    "indirect_len_not_multiple_of_16": _indirect_bad_len,
    "indirect_len_zero": _indirect_zero_len,
    "indirect_too_long": _indirect_too_long,
    "indirect_next_out_of_table": _indirect_next_out_of_table,
    "indirect_loop": _indirect_loop,
    "indirect_table_outside_ram": _indirect_table_outside_ram,
    "buffer_outside_ram": _buffer_outside_ram,
    "buffer_overflows_64_bits": _buffer_overflows_64,
    "total_length_overflow": _total_len_overflow,
}
"""Malformed chains: returned to the driver with length 0, the queue keeps working."""

MALFORMED_NEEDS_NO_INDIRECT = {"indirect_not_negotiated": _indirect_not_negotiated}
"""Malformed only when the queue did not negotiate RING_INDIRECT_DESC."""

BROKEN_RING: dict[str, Callable[[DriverQueue], str]] = {
    "avail_idx_jump": _avail_idx_jump,
    "head_out_of_range": _head_out_of_range,
}
"""Ring corruption: the queue stops and asks for a device reset."""
