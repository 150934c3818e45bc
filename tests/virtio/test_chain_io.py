"""ChainReader / ChainWriter over descriptor chains split in every way the spec allows."""

import ctypes

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyvmm.virtio.queue import ShortChainError
from pyvmm.virtio.testing import DriverQueue

QUEUE_SIZE = 64
fixture_ok = settings(suppress_health_check=[HealthCheck.function_scoped_fixture], max_examples=60,
                      deadline=None)


def _cuts(max_len):
    return st.lists(st.integers(min_value=1, max_value=max(1, max_len)), max_size=12)


@fixture_ok
@given(data=st.binary(min_size=1, max_size=3000), cuts=st.data(), indirect=st.booleans(),
       reads=st.lists(st.integers(min_value=0, max_value=700), max_size=8))
def test_any_split_reads_back_the_same_bytes(memory, allocator, data, cuts, indirect, reads):
    dq = DriverQueue(memory, allocator, QUEUE_SIZE)
    q = dq.device_queue()
    dq.add_message(data, 0, out_cuts=cuts.draw(_cuts(len(data) - 1)), indirect=indirect)
    chain = q.pop()
    assert chain.readable_len == len(data) and chain.writable_len == 0
    reader = chain.reader()
    got = []
    for n in reads:  # arbitrary read sizes, then the rest
        n = min(n, reader.remaining)
        got.append(reader.read(n))
    got.append(reader.read())
    assert b"".join(got) == data
    assert reader.remaining == 0


@fixture_ok
@given(payload=st.binary(min_size=0, max_size=2000), status=st.binary(min_size=8, max_size=8),
       cuts=st.data(), indirect=st.booleans())
def test_any_split_writes_payload_and_tail_status(memory, allocator, payload, status, cuts, indirect):
    size = len(payload) + 8 + 5  # 5 bytes the device leaves unwritten in the middle
    dq = DriverQueue(memory, allocator, QUEUE_SIZE)
    q = dq.device_queue()
    head = dq.add_message(b"hdr!", size, in_cuts=cuts.draw(_cuts(size - 1)), indirect=indirect)
    chain = q.pop()
    w = chain.writer()
    w.write(payload)
    w.write_at_end(status)
    assert w.remaining == 5
    assert w.written == len(payload) + 8
    q.add_used(chain, w.written)
    [entry] = dq.collect()
    assert (entry.id, entry.len) == (head, len(payload) + 8)
    assert entry.writable == payload + b"\xee" * 5 + status


def test_read_into_numpy_and_read_struct_across_boundaries(memory, allocator):
    class Hdr(ctypes.LittleEndianStructure):
        _pack_ = 1
        _fields_ = [("code", ctypes.c_uint32), ("stream", ctypes.c_uint32)]

    frames = np.arange(1000, dtype=np.int16)
    msg = bytes(Hdr(0x105, 7)) + frames.tobytes()
    dq = DriverQueue(memory, allocator, 16)
    q = dq.device_queue()
    dq.add_message(msg, 8, out_cuts=[3, 5, 8, 9, 1001])
    chain = q.pop()
    r = chain.reader()
    hdr = r.read_struct(Hdr)
    assert (hdr.code, hdr.stream) == (0x105, 7)
    out = np.empty(1000, dtype=np.int16)
    assert r.read_into(out) == 2000
    assert np.array_equal(out, frames)
    w = chain.writer()
    w.write_struct(Hdr(1, 2))
    assert w.remaining == 0


def test_short_reads_and_writes_raise_without_moving(memory, allocator):
    dq = DriverQueue(memory, allocator, 16)
    q = dq.device_queue()
    dq.add_message(b"abcdef", 4, out_cuts=[2], in_cuts=[1])
    chain = q.pop()
    r = chain.reader()
    with pytest.raises(ShortChainError):
        r.read(7)
    assert r.read(6) == b"abcdef"
    w = chain.writer()
    with pytest.raises(ShortChainError):
        w.write(b"12345")
    with pytest.raises(ShortChainError):
        w.write_at_end(b"12345")
    w.write(b"12")
    with pytest.raises(ShortChainError):
        w.write_at_end(b"xyz")
    w.write_at_end(b"yz")
    assert w.remaining == 0 and w.written == 4


def test_fill_and_read_array(memory, allocator):
    dq = DriverQueue(memory, allocator, 16)
    q = dq.device_queue()
    dq.add_message(b"\x01\x02\x03\x04", 10, out_cuts=[1], in_cuts=[3, 4])
    chain = q.pop()
    arr = chain.reader().read_array()
    assert arr.tolist() == [1, 2, 3, 4]
    w = chain.writer()
    w.fill(6, 0x11)
    w.write_at_end(b"\x22" * 4)
    q.add_used(chain, w.written)
    [e] = dq.collect()
    assert e.writable == b"\x11" * 6 + b"\x22" * 4


def test_zero_length_descriptors_are_skipped(memory, allocator):
    dq = DriverQueue(memory, allocator, 16)
    q = dq.device_queue()
    dq.add([b"ab", b"", b"cd"], [0, 4, 0])
    chain = q.pop()
    assert chain.reader().read() == b"abcd"
    assert chain.writable_len == 4 and len(chain.writable) == 1


def test_buffer_spanning_two_ram_regions():
    from pyvmm.memory import GuestMemory
    from pyvmm.virtio.testing import GuestAllocator
    mem = GuestMemory.create([(0, 0x10000), (0x10000, 0x10000)])
    try:
        dq = DriverQueue(mem, GuestAllocator(mem, 0x1000, 0x8000), 8)
        q = dq.device_queue()
        data = bytes(range(256)) * 2
        mem.write(0x10000 - 100, data)
        dq.write_desc(0, 0x10000 - 100, len(data), 0)
        dq.publish(0)
        chain = q.pop()
        assert len(chain.readable) == 2
        assert chain.reader().read() == data
    finally:
        mem.close()
