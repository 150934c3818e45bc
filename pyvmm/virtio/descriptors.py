"""Walking and validating a descriptor chain (virtio spec 2.7.5 and 2.7.5.3).

Descriptors are copied out of guest memory once (``struct.unpack_from``), checked, and turned
into zero-copy memoryviews of the buffers they describe, so a driver rewriting its descriptors
afterwards cannot change what the device was given. Rules enforced:

* every ``next`` index is inside the table (queue size, or indirect table length);
* no descriptor is visited twice, and the chain has at most ``queue_size`` descriptors
  (spec 2.7.5.3.1: indirect descriptors count, the one pointing to the table does not);
* device-readable descriptors come before device-writable ones;
* an indirect descriptor is allowed only when RING_INDIRECT_DESC was negotiated, has no
  NEXT flag, is not inside an indirect table, and its length is a non-zero multiple of 16;
  it may follow direct descriptors (spec 2.7.5.3.2); its WRITE flag is ignored;
* every buffer lies in guest RAM, without 64-bit overflow; each direction totals < 2^32;
* zero-length buffers are accepted and contribute nothing.
"""

from __future__ import annotations

import struct

from pyvmm.errors import GuestMemoryError
from pyvmm.memory import GuestMemory
from pyvmm.virtio import constants as C
from pyvmm.virtio.chain import DescriptorChain
from pyvmm.virtio.faults import QueueFault as F

_DESC = struct.Struct("<QIHH")
_U64 = 1 << 64
_MAX_CHAIN_BYTES = (1 << 32) - 1


class ChainError(ValueError):
    """A malformed descriptor chain (:meth:`SplitQueue.pop` logs it and returns the chain unused).

    ``kind`` names the rule broken (:class:`~pyvmm.virtio.faults.QueueFault`); the message
    says where and with which values."""

    def __init__(self, kind: F, message: str):
        super().__init__(message)
        self.kind = kind


def guest_views(memory: GuestMemory, addr: int, length: int) -> list[memoryview]:
    """Zero-copy memoryviews of ``[addr, addr+length)``, one per memory region it crosses."""
    if addr + length > _U64:
        raise GuestMemoryError(f"guest buffer {addr:#x}+{length:#x} overflows 64 bits")
    view = memory.single_buffer(addr, length)
    if view is not None:
        return [view]
    views = []
    end = addr + length
    while addr < end:
        for region in memory.regions:
            if region.guest_addr <= addr < region.end:
                n = min(end, region.end) - addr
                off = addr - region.guest_addr
                views.append(region.buffer[off:off + n])
                addr += n
                break
        else:
            raise GuestMemoryError(f"guest buffer {addr:#x}..{end:#x} is outside guest RAM")
    return views


def parse_chain(memory: GuestMemory, desc_table: memoryview | bytes, queue_size: int, head: int,
                indirect_ok: bool, epoch: int = 0) -> DescriptorChain:
    """Walk the chain starting at ``head`` and check every descriptor (see the module doc);
    raises :class:`ChainError` naming the first problem."""
    readable: list[memoryview] = []
    writable: list[memoryview] = []
    descriptors: list[tuple[int, int, int]] = []
    readable_len = writable_len = 0
    table = desc_table
    table_len = queue_size
    index = head
    visited: set[int] = set()
    in_indirect = False
    seen_writable = False
    where = "descriptor"
    while True:
        if index in visited:
            raise ChainError(F.DESCRIPTOR_LOOP, f"{where} {index} visited twice (loop)")
        visited.add(index)
        # No count of descriptors is kept: indices stay below the table's length and none
        # repeats, so a table of n entries gives at most n; an indirect table must fit in what
        # the direct descriptors before it left of the queue size (checked below).
        addr, length, flags, nxt = _DESC.unpack_from(table, index * C.DESC_SIZE)
        if flags & C.VIRTQ_DESC_F_INDIRECT:
            if in_indirect:
                raise ChainError(F.INDIRECT_NESTED, f"{where} {index} is a nested indirect descriptor")
            if not indirect_ok:
                raise ChainError(F.INDIRECT_NOT_NEGOTIATED,
                                 f"{where} {index} is indirect but RING_INDIRECT_DESC was not negotiated")
            if flags & C.VIRTQ_DESC_F_NEXT:
                raise ChainError(F.INDIRECT_WITH_NEXT, f"indirect descriptor {index} also has the NEXT flag")
            if length == 0 or length % C.DESC_SIZE:
                raise ChainError(F.INDIRECT_BAD_LENGTH,
                                 f"indirect table length {length} is not a non-zero multiple of 16")
            table_len = length // C.DESC_SIZE
            if table_len > queue_size - (len(visited) - 1):  # the indirect descriptor does not count
                raise ChainError(F.CHAIN_TOO_LONG, f"indirect table of {table_len} descriptors makes the "
                                                   f"chain longer than the queue size {queue_size}")
            try:
                table = memory.read(addr, length) if addr + length <= _U64 else None
            except GuestMemoryError:
                table = None
            if table is None:
                raise ChainError(F.INDIRECT_OUTSIDE_RAM,
                                 f"indirect table {addr:#x}+{length:#x} is outside guest RAM")
            in_indirect = True
            where = "indirect descriptor"
            visited = set()
            index = 0
            continue
        writable_desc = flags & C.VIRTQ_DESC_F_WRITE
        if writable_desc:
            seen_writable = True
        elif seen_writable:
            raise ChainError(F.READABLE_AFTER_WRITABLE, f"readable {where} {index} follows a writable one")
        if length:
            view = memory.single_buffer(addr, length)  # one region holds it: the usual case
            if view is None:
                try:
                    views = guest_views(memory, addr, length)
                except GuestMemoryError as e:
                    raise ChainError(F.BUFFER_OUTSIDE_RAM,
                                     f"{where} {index}: buffer {addr:#x}+{length:#x}: {e}") from None
            if writable_desc:
                writable_len += length
                buffers = writable
            else:
                readable_len += length
                buffers = readable
            if view is not None:
                buffers.append(view)
            else:
                buffers.extend(views)
            if readable_len > _MAX_CHAIN_BYTES or writable_len > _MAX_CHAIN_BYTES:
                raise ChainError(F.CHAIN_TOO_BIG, "total buffer length exceeds 2^32-1 bytes")
            descriptors.append((addr, length, flags))
        if not flags & C.VIRTQ_DESC_F_NEXT:
            break
        if nxt >= table_len:
            raise ChainError(F.NEXT_OUT_OF_RANGE, f"{where} {index}: next index {nxt} >= "
                             f"{'table length' if in_indirect else 'queue size'} {table_len}")
        index = nxt
    return DescriptorChain(head, readable, writable, descriptors, epoch, readable_len, writable_len)
