"""SplitQueue: used ring, notification suppression, validation of everything the driver wrote."""

import logging

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pyvmm.virtio.faults import QueueFault
from pyvmm.virtio.queue import InvalidQueueError, SplitQueue, need_event
from pyvmm.virtio.testing import BROKEN_RING, MALFORMED, MALFORMED_NEEDS_NO_INDIRECT, DriverQueue


def test_pop_add_used_in_order_and_out_of_order(memory, allocator):
    dq = DriverQueue(memory, allocator, 16)
    q = dq.device_queue()
    heads = [dq.add_message(bytes([i]) * 3, 4) for i in range(5)]
    chains = [q.pop() for _ in range(5)]
    assert q.pop() is None
    assert [c.head for c in chains] == heads
    for c in reversed(chains):  # complete out of order: ids must follow
        w = c.writer()
        w.write(c.reader().read())
        q.add_used(c, w.written)
    used = dq.collect()
    assert [(e.id, e.len) for e in used] == [(h, 3) for h in reversed(heads)]
    assert [e.written for e in used] == [bytes([i]) * 3 for i in reversed(range(5))]
    assert dq.used_idx() == 5 == q.next_used


def test_indices_wrap_at_2_16(memory, allocator):
    dq = DriverQueue(memory, allocator, 4)
    q = dq.device_queue()
    start = 0xFFFE
    q.next_avail = q.next_used = start
    dq.avail_idx = dq.last_used = start
    memory.write_u16(dq.used_ring + 2, start)
    for i in range(10):
        h = dq.add_message(b"x", 1)
        c = q.pop()
        assert c.head == h
        q.add_used(c, 1)
        assert [e.id for e in dq.collect()] == [h]
    assert q.next_avail == (start + 10) & 0xFFFF == dq.used_idx()


def test_add_used_clamps_an_overlong_length(memory, allocator, caplog):
    dq = DriverQueue(memory, allocator, 4)
    q = dq.device_queue()
    dq.add_message(b"", 16)
    c = q.pop()
    q.add_used(c, 1000)
    assert dq.collect()[0].len == 16
    assert "clamped" in caplog.text


@given(st.integers(0, 0xFFFF), st.integers(0, 0xFFFF), st.integers(0, 0xFFFF))
def test_need_event_matches_the_spec_formula(event, old, delta):
    new = (old + delta) & 0xFFFF
    # the driver asked to be told when entry `event` is used: i.e. event in [old, new)
    crossed = delta != 0 and ((event - old) & 0xFFFF) < delta
    assert need_event(event, new, old) == crossed


def test_event_idx_suppresses_until_used_event_is_passed(memory, allocator):
    dq = DriverQueue(memory, allocator, 16, event_idx=True)
    q = dq.device_queue()
    assert q.needs_notification() is False  # nothing added yet
    dq.set_used_event(2)  # driver: interrupt me when entry #2 is used
    for i in range(4):
        dq.add_message(b"", 1)
    results = []
    for _ in range(4):
        q.add_used(q.pop(), 0)
        results.append(q.needs_notification())
    # only when used idx moves past used_event (entry #2 used: idx 2 -> 3)
    assert results == [False, False, True, False]


def test_event_idx_first_signal_after_enable_always_notifies(memory, allocator):
    dq = DriverQueue(memory, allocator, 16, event_idx=True)
    q = dq.device_queue()
    dq.set_used_event(5)
    dq.add_message(b"", 1)
    q.add_used(q.pop(), 0)
    assert q.needs_notification() is True  # no earlier signal to compare with
    dq.add_message(b"", 1)
    q.add_used(q.pop(), 0)
    assert q.needs_notification() is False


def test_event_idx_wraparound(memory, allocator):
    dq = DriverQueue(memory, allocator, 8, event_idx=True)
    q = dq.device_queue()
    start = 0xFFFD
    q.next_avail = q.next_used = dq.avail_idx = dq.last_used = start
    memory.write_u16(dq.used_ring + 2, start)
    dq.add_message(b"", 1)
    q.add_used(q.pop(), 0)
    q.needs_notification()  # establishes the last signalled index (0xFFFE)
    dq.set_used_event(0x0001)  # across the wrap
    hits = []
    for _ in range(5):
        dq.add_message(b"", 1)
        q.add_used(q.pop(), 0)
        hits.append((q.next_used, q.needs_notification()))
    assert hits == [(0xFFFF, False), (0x0000, False), (0x0001, False), (0x0002, True), (0x0003, False)]


def test_no_interrupt_flag_without_event_idx(memory, allocator):
    dq = DriverQueue(memory, allocator, 8)
    q = dq.device_queue()
    dq.add_message(b"", 1)
    q.add_used(q.pop(), 0)
    assert q.needs_notification() is True
    dq.set_no_interrupt(True)
    dq.add_message(b"", 1)
    q.add_used(q.pop(), 0)
    assert q.needs_notification() is False
    dq.set_no_interrupt(False)
    assert q.needs_notification() is False  # nothing new since the last call
    dq.add_message(b"", 1)
    q.add_used(q.pop(), 0)
    assert q.needs_notification() is True


def test_empty_pop_rearms_avail_event_and_driver_kick_maths(memory, allocator):
    dq = DriverQueue(memory, allocator, 8, event_idx=True)
    q = dq.device_queue()
    for _ in range(3):
        dq.add_message(b"a", 0)
    while q.pop() is not None:
        pass
    assert dq.avail_event() == 3 == q.next_avail
    old = dq.avail_idx
    dq.add_message(b"b", 0)
    assert dq.needs_kick(old) is True  # device asked for a kick at entry 3
    old = dq.avail_idx
    dq.add_message(b"c", 0)
    assert dq.needs_kick(old) is False  # device has not caught up, no second kick needed


def test_enable_notification_reports_a_race(memory, allocator):
    dq = DriverQueue(memory, allocator, 8)
    q = dq.device_queue()
    assert q.enable_notification() is False
    dq.add_message(b"late", 0)
    assert q.enable_notification() is True
    q.set_no_notify(True)
    assert dq.used_flags() == 1 and dq.needs_kick(0) is False


@pytest.mark.parametrize("kind", sorted(MALFORMED))
@pytest.mark.parametrize("event_idx", [False, True])
def test_malformed_chain_is_returned_with_length_zero(memory, allocator, caplog, kind, event_idx):
    dq = DriverQueue(memory, allocator, 16, event_idx=event_idx)
    q = dq.device_queue()
    signals = []
    q.signal_used = lambda: signals.append(1)
    phrase = MALFORMED[kind](dq)
    good = dq.add_message(b"good", 4)
    with caplog.at_level(logging.WARNING, logger="pyvmm.virtio.queue"):
        chain = q.pop()
    assert chain is not None and chain.head == good  # the bad chain was skipped
    assert chain.reader().read() == b"good"
    [rec] = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert phrase in rec.getMessage() and "queue0" in rec.getMessage() and "head 0" in rec.getMessage()
    used = dq.collect()
    assert [(e.id, e.len) for e in used] == [(0, 0)]
    assert signals == [1]
    assert not q.broken


def test_indirect_without_negotiation_is_malformed(memory, allocator, caplog):
    dq = DriverQueue(memory, allocator, 16)
    q = dq.device_queue(indirect=False)
    [build] = MALFORMED_NEEDS_NO_INDIRECT.values()
    phrase = build(dq)
    assert q.pop() is None
    assert phrase in caplog.text
    assert [(e.id, e.len) for e in dq.collect()] == [(0, 0)]


@pytest.mark.parametrize("kind", sorted(BROKEN_RING))
def test_broken_ring_stops_the_queue_and_requests_reset(memory, allocator, caplog, kind):
    dq = DriverQueue(memory, allocator, 16)
    q = dq.device_queue()
    resets = []
    q.request_reset = resets.append
    phrase = BROKEN_RING[kind](dq)
    assert q.pop() is None
    assert q.broken and len(resets) == 1 and phrase in resets[0]
    assert phrase in caplog.text and "queue0" in caplog.text
    assert q.pop() is None and len(resets) == 1  # stays stopped, asks once
    q.reset()
    assert not q.broken and not q.ready


def test_malformed_chain_warnings_are_rate_limited_across_resets(memory, allocator, caplog):
    """A queue reset does not restart the limit (the limiter is per VM lifetime: pyvmm.guest_log)."""
    caplog.set_level(logging.DEBUG, logger="pyvmm.virtio.queue")
    dq = DriverQueue(memory, allocator, 4)
    q = dq.device_queue()
    for cycle in range(10):
        for _ in range(50):
            dq.write_desc(0, 0x7FFF_0000_0000, 4, 0)
            dq.publish(0)
            assert q.pop() is None
            dq.collect()
        q.reset()
        dq = DriverQueue(memory, allocator, 4)
        dq.configure(q)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 5 and "rate-limited from now on" in warnings[-1].getMessage()
    assert sum("BUFFER_OUTSIDE_RAM" in r.getMessage() for r in caplog.records) == 500  # the rest at DEBUG


@pytest.mark.parametrize("change, phrase", [
    (dict(size=12), "power of two"),
    (dict(size=32), "power of two"),  # above max
    (dict(size=0), "power of two"),
    (dict(desc_table=0x10008), "16-byte aligned"),
    (dict(avail_ring=0x20001), "2-byte aligned"),
    (dict(used_ring=0x30002), "4-byte aligned"),
    (dict(used_ring=(1 << 30) - 64), "not inside one guest RAM region"),
    (dict(desc_table=1 << 40), "not inside one guest RAM region"),
])
def test_ring_layout_is_checked_on_enable(memory, change, phrase):
    q = SplitQueue(memory, 16)
    q.desc_table, q.avail_ring, q.used_ring = 0x10000, 0x20000, 0x30000
    q.size = 16
    for k, v in change.items():
        setattr(q, k, v)
    with pytest.raises(InvalidQueueError, match=phrase):
        q.enable()
    assert not q.ready and q.pop() is None


def test_event_idx_makes_rings_longer(memory):
    q = SplitQueue(memory, 16)
    q.desc_table, q.avail_ring = 0x10000, 0x20000
    q.used_ring = (1 << 30) - (4 + 8 * 16)  # fits exactly without avail_event
    q.enable()
    q.reset()
    q.desc_table, q.avail_ring = 0x10000, 0x20000
    q.used_ring = (1 << 30) - (4 + 8 * 16)
    q.event_idx = True
    with pytest.raises(InvalidQueueError):
        q.enable()


def test_reset_forgets_everything(memory, allocator):
    dq = DriverQueue(memory, allocator, 8, event_idx=True)
    q = dq.device_queue()
    dq.add_message(b"x", 1)
    c = q.pop()
    q.reset()
    assert (q.ready, q.next_avail, q.next_used, q.size, q.event_idx) == (False, 0, 0, 8, False)
    q.add_used(c, 1)  # a chain from before the reset is dropped, not written
    assert dq.used_idx() == 0


def test_undo_pop(memory, allocator):
    dq = DriverQueue(memory, allocator, 8)
    q = dq.device_queue()
    h = dq.add_message(b"x", 0)
    chain = q.pop()
    assert chain.head == h and q.in_flight == 1
    q.undo_pop(chain)
    assert q.pending() == 1 and q.in_flight == 0
    with pytest.raises(ValueError):
        q.undo_pop(chain)
    assert q.pop().head == h and q.in_flight == 1


def test_chain_popped_before_reset_cannot_complete_into_new_rings(memory, allocator):
    dq = DriverQueue(memory, allocator, 8)
    q = dq.device_queue()
    dq.add_message(b"old", 4)
    stale = q.pop()
    q.reset()
    dq2 = DriverQueue(memory, allocator, 8)
    dq2.configure(q)
    q.add_used(stale, 3)
    assert dq2.used_idx() == 0 and q.next_used == 0
    h = dq2.add_message(b"new", 4)
    q.add_used(q.pop(), 3)
    assert [(e.id, e.written) for e in dq2.collect()] == [(h, b"\xee" * 3)]


def test_load_used_idx_takes_over_a_live_ring(memory, allocator):
    dq = DriverQueue(memory, allocator, 8)
    q = dq.device_queue()
    for _ in range(3):
        dq.add_message(b"x", 1)
        q.add_used(q.pop(), 1)
    dq.collect()
    q2 = SplitQueue(memory, 8)  # a new back end: told next_avail, finds used idx in the ring
    q2.next_avail = q.next_avail
    dq.configure(q2)
    q2.load_used_idx()
    h = dq.add_message(b"y", 1)
    q2.add_used(q2.pop(), 1)
    assert [e.id for e in dq.collect()] == [h] and q2.next_used == 4


def test_direct_descriptors_followed_by_an_indirect_one(memory, allocator):
    """Spec 2.7.5.3.2: the device must handle normal descriptors followed by one indirect."""
    from pyvmm.virtio.testing.driver import F_INDIRECT, F_NEXT, F_WRITE
    dq = DriverQueue(memory, allocator, 8)
    q = dq.device_queue()
    dq.reserve(0, 1)
    table = allocator.alloc(32, 16)
    dq.write_desc(0, dq.buffer(b"head"), 4, F_NEXT, 1)
    dq.write_desc(0, dq.buffer(b"-tail"), 5, F_NEXT, 1, table=table)
    dq.write_desc(1, dq.buffer(6), 6, F_WRITE, 0, table=table)
    dq.write_desc(1, table, 32, F_INDIRECT | F_WRITE)  # WRITE on an indirect descriptor is ignored
    dq.publish(0)
    chain = q.pop()
    assert chain.reader().read() == b"head-tail"
    assert chain.writable_len == 6


@pytest.mark.parametrize("direct", [0, 1, 5])
def test_a_chain_may_hold_exactly_the_queue_size_in_descriptors_with_an_indirect_table(memory, allocator,
                                                                                      direct):
    """``direct`` descriptors, then an indirect table: queue size - direct entries fit, one more
    is CHAIN_TOO_LONG (spec 2.7.5.3.1; the indirect descriptor itself does not count)."""
    from pyvmm.virtio.testing.driver import F_INDIRECT, F_NEXT

    size = 16
    for entries, fits in ((size - direct, True), (size - direct + 1, False)):
        dq = DriverQueue(memory, allocator, size)
        q = dq.device_queue()
        faults = []
        q.on_fault = lambda _q, kind, _detail: faults.append(kind)
        dq.reserve(*range(direct + 1))
        for i in range(direct):
            dq.write_desc(i, dq.buffer(1), 1, F_NEXT, i + 1)
        table = dq.alloc.alloc(16 * entries, 16)
        for i in range(entries):
            dq.write_desc(i, dq.buffer(1), 1, F_NEXT if i + 1 < entries else 0, i + 1, table=table)
        dq.write_desc(direct, table, 16 * entries, F_INDIRECT, 0)
        dq.publish(0)
        chain = q.pop()
        if fits:
            assert chain is not None and chain.readable_len == direct + entries and not faults
        else:
            assert chain is None and faults == [QueueFault.CHAIN_TOO_LONG]
