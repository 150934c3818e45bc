"""Bounds on what a driver can make a split queue do (issue 7): chains in flight (finding 4),
chains served per notification, notifications queued for the device loop."""

import logging
import threading

import pytest

from pyvmm.virtio import constants as C
from pyvmm.virtio.constants import MmioReg as R
from pyvmm.virtio.constants import Status
from pyvmm.virtio.faults import QueueFault
from pyvmm.virtio.mmio import MmioTransport
from pyvmm.virtio.testing import DriverQueue, EchoDevice, FakeInterrupt, MmioDriver


def republish_held_head(dq: DriverQueue, q, times: int) -> list:
    """What a buggy or hostile driver does: publish the same head again while the device holds it."""
    head = dq.add_message(b"x" * 8, 8)
    held = []
    for _ in range(times):
        chain = q.pop()
        if chain is None:
            break
        held.append(chain)
        dq.publish(head)
    return held


def test_in_flight_counts_popped_chains_until_used(memory, allocator):
    dq = DriverQueue(memory, allocator, 8)
    q = dq.device_queue()
    for _ in range(3):
        dq.add_message(b"a", 1)
    chains = [q.pop() for _ in range(3)]
    assert q.in_flight == 3
    q.add_used(chains[1], 0)
    assert q.in_flight == 2
    for c in (chains[0], chains[2]):
        q.add_used(c, 0)
    assert q.in_flight == 0 and "in_flight=0" in repr(q)


def test_a_full_queue_held_by_the_device_is_fine(memory, allocator):
    """A correct driver can make every descriptor available and the device may hold them all."""
    dq = DriverQueue(memory, allocator, 8)
    q = dq.device_queue()
    for _ in range(8):
        dq.add_message(b"", 4)
    held = [q.pop() for _ in range(8)]
    assert all(held) and q.in_flight == 8 and q.pop() is None and not q.broken
    for c in held:
        q.add_used(c, 0)
    dq.collect()
    dq.add_message(b"", 4)
    assert q.pop() is not None


def test_republished_heads_cannot_grow_the_held_set_past_the_queue_size(memory, allocator, caplog):
    dq = DriverQueue(memory, allocator, 64)
    q = dq.device_queue()
    resets, faults = [], []
    q.request_reset = resets.append
    q.on_fault = lambda queue, kind, detail: faults.append(kind)
    held = republish_held_head(dq, q, 10_000)
    assert len(held) == 64 == q.in_flight  # was 10,000 (128,000 in the run)
    assert q.broken and q.pop() is None
    assert faults == [QueueFault.IN_FLIGHT_EXCEEDED] and len(resets) == 1
    assert "virtqueue size exceeded" in resets[0]
    assert sum("IN_FLIGHT_EXCEEDED" in r.getMessage() for r in caplog.records) == 1
    q.reset()  # the driver resets the device: the queue works again
    dq2 = DriverQueue(memory, allocator, 64)
    dq2.configure(q)
    assert q.in_flight == 0
    dq2.add_message(b"ok", 2)
    assert q.pop() is not None


def test_completing_a_chain_twice_is_ignored(memory, allocator, caplog):
    dq = DriverQueue(memory, allocator, 8)
    q = dq.device_queue()
    dq.add_message(b"a", 1)
    dq.add_message(b"b", 1)
    first, second = q.pop(), q.pop()
    q.add_used(first, 0)
    q.add_used(first, 0)
    assert q.in_flight == 1 and "completed twice" in caplog.text
    assert [e.id for e in dq.collect()] == [first.head]
    q.add_used(second, 0)
    assert q.in_flight == 0


def test_chains_from_before_a_reset_do_not_count(memory, allocator):
    dq = DriverQueue(memory, allocator, 8)
    q = dq.device_queue()
    dq.add_message(b"a", 1)
    stale = q.pop()
    q.reset()
    DriverQueue(memory, allocator, 8).configure(q)
    q.add_used(stale, 0)
    assert q.in_flight == 0


def test_disabled_queue_still_counts_completions(memory, allocator):
    dq = DriverQueue(memory, allocator, 8)
    q = dq.device_queue()
    dq.add_message(b"a", 1)
    chain = q.pop()
    q.disable()
    q.add_used(chain, 0)
    assert q.in_flight == 0


@pytest.mark.parametrize("event_idx", [False, True])
def test_a_turn_takes_at_most_queue_size_chains(memory, allocator, event_idx):
    """A driver that refills as fast as the device answers cannot keep pop() going forever."""
    dq = DriverQueue(memory, allocator, 8, event_idx=event_idx)
    q = dq.device_queue()
    dq.add_message(b"x", 1)
    q.begin_turn()
    served = 0
    while (chain := q.pop()) is not None:
        q.add_used(chain, 0)
        dq.collect()
        dq.add_message(b"x", 1)  # the driver refills at once
        served += 1
        assert served <= 1000, "pop never stopped"
    assert served == 8
    assert q.end_turn() is True  # work left: the front end comes back later
    q.begin_turn()
    assert q.pop() is not None
    assert q.end_turn() is False  # nothing left


def test_malformed_chains_count_against_the_turn(memory, allocator):
    from pyvmm.virtio.testing import MALFORMED

    dq = DriverQueue(memory, allocator, 4)
    q = dq.device_queue()
    q.begin_turn()
    for _ in range(3):
        MALFORMED["loop"](dq)
    assert q.pop() is None  # three malformed chains returned to the driver, then empty
    dq.collect()
    for _ in range(4):
        MALFORMED["loop"](dq)
    assert q.pop() is None and q.end_turn() is True  # the fourth waits for the next turn


def test_outside_a_turn_pop_is_not_budgeted(memory, allocator):
    dq = DriverQueue(memory, allocator, 4)
    q = dq.device_queue()
    served = 0
    for _ in range(20):
        dq.add_message(b"x", 1)
        c = q.pop()
        q.add_used(c, 0)
        dq.collect()
        served += 1
    assert served == 20


class Refiller(EchoDevice):
    """Answers like the echo device, and plays the driver refilling the ring after each answer
    (a guest vCPU doing so in parallel), ``refills`` times in all."""

    def __init__(self, refills):
        super().__init__(queues=2, queue_size=8)
        self.refills = refills
        self.dq = None
        self.answered_at_marker = None

    def queue_notify(self, queue_index):
        queue = self.ctx.queues[queue_index]
        while (chain := queue.pop()) is not None:
            queue.add_used(chain, 0)
            self.answered += 1
            if self.refills:
                self.refills -= 1
                self.dq.collect()
                self.dq.add_message(b"x", 1)
        self.ctx.signal_used(queue_index)


def test_transport_serves_a_refilling_driver_in_turns(memory, allocator, device_loop):
    dev = Refiller(refills=200)
    irq = FakeInterrupt()
    t = MmioTransport(dev, memory, device_loop, irq, name="refill")
    drv = MmioDriver(t, memory, allocator)
    try:
        drv.probe()
        dev.dq = drv.queues[0]
        done = threading.Event()

        def marker():
            dev.answered_at_marker = dev.answered
            done.set()

        def kick_then_marker():
            drv.queues[0].add_message(b"x", 1)
            t._on_notify(0)  # one notification, served on this loop turn
            device_loop.loop.call_soon(marker)  # other work waiting on the loop

        device_loop.call_soon(kick_then_marker)
        assert done.wait(10)
        device_loop.call(lambda: None)
        for _ in range(100):
            if dev.answered == 201:
                break
            device_loop.call(lambda: None)
        assert dev.answered == 201  # everything is served in the end ...
        assert dev.answered_at_marker <= 16  # ... but other work ran after the first turn
    finally:
        t.close()


def test_queue_notify_writes_are_coalesced(memory, allocator, device_loop):
    """A vCPU writing QueueNotify faster than the loop runs cannot grow the loop's queue."""
    blocked = threading.Event()
    release = threading.Event()
    dev = EchoDevice()
    irq = FakeInterrupt()
    t = MmioTransport(dev, memory, device_loop, irq, name="coalesce")
    drv = MmioDriver(t, memory, allocator)
    try:
        drv.probe()

        def block():
            blocked.set()
            release.wait(10)

        device_loop.call_soon(block)
        assert blocked.wait(5)
        ready_before = len(device_loop.loop._ready)
        for _ in range(10_000):
            drv.write32(R.QUEUE_NOTIFY, 0)
            drv.write32(R.QUEUE_NOTIFY, 1)
        assert len(device_loop.loop._ready) - ready_before <= 2
        release.set()
        device_loop.call(lambda: None)
        assert dev.events.count("notify 0") == 1 and dev.events.count("notify 1") == 1
        drv.queues[0].add_message(b"later", 5)
        drv.kick(0)  # a notification after the coalesced one is not lost
        assert irq.wait(5)
        assert [e.written for e in drv.queues[0].collect()] == [b"LATER"]
        assert not drv.status & Status.DEVICE_NEEDS_RESET
    finally:
        release.set()
        t.close()


def test_notify_for_a_missing_queue_is_a_guest_error_on_the_vcpu(memory, allocator, device_loop, caplog):
    caplog.set_level(logging.DEBUG, logger="pyvmm.virtio.mmio")
    t = MmioTransport(EchoDevice(), memory, device_loop, FakeInterrupt(), name="missing")
    drv = MmioDriver(t, memory, allocator)
    try:
        drv.probe()
        ready_before = len(device_loop.loop._ready)
        for _ in range(1000):
            drv.write32(R.QUEUE_NOTIFY, 7)
        assert len(device_loop.loop._ready) == ready_before
        assert sum("notify for queue 7" in r.getMessage() for r in caplog.records) == 1000
        assert sum(r.levelno == logging.WARNING for r in caplog.records) <= 5
    finally:
        t.close()


FAULT_OF = {
    "next_out_of_range": QueueFault.NEXT_OUT_OF_RANGE,
    "loop": QueueFault.DESCRIPTOR_LOOP,
    "readable_after_writable": QueueFault.READABLE_AFTER_WRITABLE,
    "indirect_with_next": QueueFault.INDIRECT_WITH_NEXT,
    "nested_indirect": QueueFault.INDIRECT_NESTED,
    "indirect_len_not_multiple_of_16": QueueFault.INDIRECT_BAD_LENGTH,
    "indirect_len_zero": QueueFault.INDIRECT_BAD_LENGTH,
    "indirect_too_long": QueueFault.CHAIN_TOO_LONG,
    "indirect_next_out_of_table": QueueFault.NEXT_OUT_OF_RANGE,
    "indirect_loop": QueueFault.DESCRIPTOR_LOOP,
    "indirect_table_outside_ram": QueueFault.INDIRECT_OUTSIDE_RAM,
    "buffer_outside_ram": QueueFault.BUFFER_OUTSIDE_RAM,
    "buffer_overflows_64_bits": QueueFault.BUFFER_OUTSIDE_RAM,
    "total_length_overflow": QueueFault.CHAIN_TOO_BIG,
    "indirect_not_negotiated": QueueFault.INDIRECT_NOT_NEGOTIATED,
    "avail_idx_jump": QueueFault.AVAIL_IDX_JUMP,
    "head_out_of_range": QueueFault.HEAD_OUT_OF_RANGE,
}


@pytest.mark.parametrize("vector", sorted(FAULT_OF))
def test_every_driver_error_has_a_named_kind(memory, allocator, vector):
    """The hook a tracer or spec checker uses: one call per fault, with its QueueFault kind."""
    from pyvmm.virtio.testing import BROKEN_RING, MALFORMED, MALFORMED_NEEDS_NO_INDIRECT

    make = {**MALFORMED, **MALFORMED_NEEDS_NO_INDIRECT, **BROKEN_RING}[vector]
    dq = DriverQueue(memory, allocator, 16)
    q = dq.device_queue(indirect=vector != "indirect_not_negotiated")
    seen = []
    q.on_fault = lambda queue, kind, detail: seen.append((queue, kind))
    make(dq)
    q.pop()
    kind = FAULT_OF[vector]
    assert seen == [(q, kind)]
    assert q.broken == kind.breaks_ring


def test_fault_kinds_are_distinct_and_cite_the_spec():
    assert len({k.value for k in QueueFault}) == len(QueueFault)
    assert all(k.section.startswith("2.7.") and k.description for k in QueueFault)
    assert {k for k in QueueFault if k.breaks_ring} == {
        QueueFault.AVAIL_IDX_JUMP, QueueFault.HEAD_OUT_OF_RANGE, QueueFault.IN_FLIGHT_EXCEEDED}


def test_a_chain_completed_on_the_wrong_queue_is_dropped(memory, allocator):
    dq_a, dq_b = DriverQueue(memory, allocator, 8), DriverQueue(memory, allocator, 8)
    a, b = dq_a.device_queue(0), dq_b.device_queue(1)
    dq_a.add_message(b"a", 1)
    dq_b.add_message(b"b", 1)
    chain_a, chain_b = a.pop(), b.pop()
    b.add_used(chain_a, 0)  # a device bug: the wrong queue
    assert b.in_flight == 1 and dq_b.collect() == []
    b.add_used(chain_b, 0)
    a.add_used(chain_a, 0)
    assert a.in_flight == b.in_flight == 0
    assert [e.id for e in dq_a.collect()] == [chain_a.head]


def test_echo_device_copies_a_bounded_amount(memory, allocator):
    """The example device bounds the guest's length too: 16 descriptors over the same 16 MiB."""
    from pyvmm.virtio.device import DeviceContext
    from pyvmm.virtio.testing.devices import ECHO_MAX_BYTES

    dq = DriverQueue(memory, allocator, 32)
    q = dq.device_queue()
    big = 16 << 20
    src = allocator.alloc(big, 4096)
    dst = allocator.alloc(big, 4096)
    dq.reserve(*range(32))
    for i in range(16):
        dq.write_desc(i, src, big, C.VIRTQ_DESC_F_NEXT, i + 1)
    for i in range(16, 32):
        flags = C.VIRTQ_DESC_F_WRITE | (C.VIRTQ_DESC_F_NEXT if i < 31 else 0)
        dq.write_desc(i, dst, big, flags, i + 1)
    dq.publish(0)
    dev = EchoDevice(queues=1, queue_size=32)
    used = []
    dev.activate(DeviceContext(memory, [q], 0, None, lambda i: used.append(i), lambda: None, lambda r: None))
    dev.queue_notify(0)
    assert q.in_flight == 0 and used == [0]
    assert memory.read_u32(dq.used_ring + 8) == ECHO_MAX_BYTES  # used length of the one entry
