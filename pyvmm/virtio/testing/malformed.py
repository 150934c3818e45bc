"""Builders of malformed descriptor chains and broken rings, one per kind of driver mistake.

Each builder publishes one bad chain (or breaks the ring) on a :class:`DriverQueue` and
returns the phrase the device's warning must contain. Chains use head 0 (the descriptors they
use are taken out of the driver's free list, so good chains added afterwards do not clash).
"""

from __future__ import annotations

from typing import Callable

from pyvmm.virtio.testing.driver import F_INDIRECT, F_NEXT, F_WRITE, DriverQueue

def _ok_buf(dq: DriverQueue, n: int = 16) -> int:
    return dq.buffer(n)


def _bad_next(dq: DriverQueue) -> str:
    dq.reserve(0, 1)
    dq.write_desc(0, _ok_buf(dq), 16, F_NEXT, dq.size + 3)
    dq.publish(0)
    return "next index"


def _loop(dq: DriverQueue) -> str:
    dq.reserve(0, 1)
    dq.write_desc(0, _ok_buf(dq), 16, F_NEXT, 1)
    dq.write_desc(1, _ok_buf(dq), 16, F_NEXT, 0)
    dq.publish(0)
    return "visited twice"


def _readable_after_writable(dq: DriverQueue) -> str:
    dq.reserve(0, 1)
    dq.write_desc(0, _ok_buf(dq), 16, F_WRITE | F_NEXT, 1)
    dq.write_desc(1, _ok_buf(dq), 16, 0)
    dq.publish(0)
    return "follows a writable"


def _indirect_table(dq: DriverQueue, entries: list[tuple[int, int, int, int]], length: int | None = None,
                    flags: int = 0) -> None:
    dq.reserve(0)
    table = dq.alloc.alloc(max(1, len(entries)) * 16, 16)
    for i, (addr, n, f, nxt) in enumerate(entries):
        dq.write_desc(i, addr, n, f, nxt, table=table)
    dq.write_desc(0, table, 16 * len(entries) if length is None else length, F_INDIRECT | flags, 1)
    dq.publish(0)


def _indirect_with_next(dq: DriverQueue) -> str:
    dq.reserve(1)
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
    dq.reserve(0)
    dq.write_desc(0, 0xFFFF_FFFF_0000, 32, F_INDIRECT)
    dq.publish(0)
    return "outside guest RAM"


def _buffer_outside_ram(dq: DriverQueue) -> str:
    dq.reserve(0)
    dq.write_desc(0, 0x7FFF_0000_0000, 64, 0)
    dq.publish(0)
    return "outside guest RAM"


def _buffer_overflows_64(dq: DriverQueue) -> str:
    dq.reserve(0)
    dq.write_desc(0, 0xFFFF_FFFF_FFFF_FFF0, 0x100, 0)
    dq.publish(0)
    return "overflows 64 bits"


def _total_len_overflow(dq: DriverQueue) -> str:
    """Several huge (but in-RAM) descriptors over the first region; needs a region of >= 1 GiB
    (memfd RAM is sparse, so this costs nothing) and a queue of >= 8 entries."""
    region = dq.memory.regions[0]
    length = min(region.size, 0xFFFF_FFFF)
    n = (1 << 32) // length + 1
    dq.reserve(*range(n))
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
