"""The driver half of a split virtqueue, laid out in real guest memory (rust-vmm's mock.rs idea)."""

from __future__ import annotations

import struct
import threading
from dataclasses import dataclass, field
from typing import Sequence

from pyvmm.memory import GuestMemory
from pyvmm.virtio import constants as C
from pyvmm.virtio.queue import SplitQueue, need_event

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

    def reserve(self, *indices: int) -> None:
        """Take specific descriptors out of the free list (for hand-built chains)."""
        for i in indices:
            if i in self.free:
                self.free.remove(i)

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
