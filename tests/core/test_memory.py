"""GuestMemory: bounds checks, region splits, views shared with the backing fd."""

import ctypes
import mmap
import os

import numpy as np
import pytest
from hypothesis import given, strategies as st

from pyvmm.errors import GuestMemoryError
from pyvmm.memory import GuestMemory, MemoryRegion

MiB = 1 << 20


@pytest.fixture
def memory():
    mem = GuestMemory.create([(0, 2 * MiB), (4 * MiB, 1 * MiB)])
    yield mem
    mem.close()


def test_read_write_round_trip(memory):
    memory.write(0x1000, b"hello")
    assert memory.read(0x1000, 5) == b"hello"
    memory.write_u32(0x2000, 0xDEADBEEF)
    assert memory.read_u32(0x2000) == 0xDEADBEEF
    assert memory.read(0x2000, 4) == bytes.fromhex("efbeadde")


@pytest.mark.parametrize(
    "addr,length",
    [(2 * MiB, 1), (2 * MiB - 2, 4), (3 * MiB, 8), (5 * MiB, 1), (5 * MiB - 1, 2), (-1, 1), (1 << 64, 1)],
)
def test_out_of_range_is_an_error(memory, addr, length):
    with pytest.raises(GuestMemoryError, match="outside guest RAM|bad guest access"):
        memory.read(addr, length)
    with pytest.raises(GuestMemoryError):
        memory.write(addr, b"\0" * length)
    assert not memory.contains(addr, length)


def test_view_is_zero_copy(memory):
    view = memory.view(4 * MiB + 16, 4)
    view[:] = [1, 2, 3, 4]
    assert memory.read(4 * MiB + 16, 4) == b"\x01\x02\x03\x04"


def test_struct_round_trip(memory):
    class Pair(ctypes.LittleEndianStructure):
        _pack_ = 1
        _fields_ = [("a", ctypes.c_uint16), ("b", ctypes.c_uint64)]

    memory.write_struct(0x100, Pair(7, 1 << 40))
    got = memory.read_struct(0x100, Pair)
    assert (got.a, got.b) == (7, 1 << 40)


def test_fd_shares_pages_with_another_mapping(memory):
    """What a vhost-user peer sees: the same pages through the region's fd."""
    region = memory.regions[1]
    other = MemoryRegion.from_fd(region.guest_addr, region.size, os.dup(region.fd))
    try:
        memory.write(region.guest_addr + 8, b"shared")
        assert other.array[8:14].tobytes() == b"shared"
    finally:
        other.close()


def test_from_fd_with_unaligned_offset():
    fd = os.memfd_create("t")
    os.ftruncate(fd, 8192)
    with mmap.mmap(fd, 8192) as m:
        m[100:104] = b"abcd"
    mem = GuestMemory([MemoryRegion.from_fd(0x10000, 4096, fd, fd_offset=100)])
    assert mem.read(0x10000, 4) == b"abcd"
    mem.close()


def test_adjacent_regions_can_be_crossed_but_not_viewed():
    mem = GuestMemory.create([(0, 4096), (4096, 4096)])
    mem.write(4090, b"0123456789ab")
    assert mem.read(4090, 12) == b"0123456789ab"
    with pytest.raises(GuestMemoryError, match="spans"):
        mem.view(4090, 12)
    mem.close()


def test_overlapping_regions_rejected():
    with pytest.raises(GuestMemoryError, match="overlap"):
        GuestMemory.create([(0, 8192), (4096, 4096)])


@given(st.integers(0, 3 * MiB), st.integers(0, 64))
def test_contains_matches_layout(addr, length):
    mem = _shared_mem()
    inside = (addr + length <= 2 * MiB) or (length == 0 and addr <= 2 * MiB)
    if length == 0:
        assert mem.contains(addr, 0)
    else:
        assert mem.contains(addr, length) == inside


_cached = []


def _shared_mem():
    if not _cached:
        _cached.append(GuestMemory.create([(0, 2 * MiB)]))
    return _cached[0]


def test_read_into_numpy(memory):
    memory.write(0x3000, bytes(range(16)))
    out = np.zeros(16, dtype=np.uint8)
    memory.read_into(0x3000, out)
    assert out.tolist() == list(range(16))


def test_fast_path_follows_regions_swapped_in_place():
    """vhost-user swaps ``regions`` of a long-lived GuestMemory: accesses find the new ones."""
    from pyvmm.memory import GuestMemory as _GM

    memory = _GM([])
    fresh = _GM.create([(0x1000, 0x1000), (0x4000, 0x2000)])
    memory.regions = fresh.regions
    memory.write_u32(0x4ffc, 0xDEADBEEF)
    assert memory.read_u32(0x4ffc) == 0xDEADBEEF and memory.read(0x1000, 2) == b"\0\0"
    assert memory.single_view(0x4000, 0x2000) is not None and memory.single_view(0x1f00, 0x200) is None
    assert memory._within(0x4ffc, 4) is not None  # the fast path, not the segment walk
    fresh.close()


def test_single_buffer_is_a_zero_copy_memoryview_and_gone_after_close():
    """Descriptor chains slice these (see MemoryRegion.buffer); a closed region matches nothing."""
    memory = GuestMemory.create([(0x1000, 0x1000), (0x4000, 0x2000)])
    buf = memory.single_buffer(0x4010, 4)
    assert isinstance(buf, memoryview) and len(buf) == 4
    buf[:] = b"\x01\x02\x03\x04"
    assert memory.read(0x4010, 4) == b"\x01\x02\x03\x04"
    assert memory.single_buffer(0x1f00, 0x200) is None  # crosses the hole between the regions
    assert memory.single_buffer(0x4000, -1) is None
    del buf
    memory.close()
    assert memory.single_buffer(0x4010, 4) is None and memory.single_view(0x4010, 4) is None
