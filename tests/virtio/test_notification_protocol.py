"""Kick and interrupt suppression, end to end: a driver that only kicks when told to and only
collects when interrupted, against a device that only pops when kicked and completes at its
own pace, must never stall — with and without EVENT_IDX, across index wraparound."""

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyvmm.virtio.testing import DriverQueue

QUEUE_SIZE = 8

ops = st.lists(st.one_of(
    st.tuples(st.just("add"), st.integers(1, 4)),
    st.tuples(st.just("complete"), st.integers(1, 4)),
    st.just(("deliver",)),
), min_size=1, max_size=60)


class Sim:
    def __init__(self, memory, allocator, event_idx, start):
        self.dq = DriverQueue(memory, allocator, QUEUE_SIZE, event_idx=event_idx)
        self.q = q = self.dq.device_queue()
        q.next_avail = q.next_used = self.dq.avail_idx = self.dq.last_used = start
        memory.write_u16(self.dq.used_ring + 2, start)
        if event_idx:
            self.dq.set_used_event(start)
        q.enable()  # re-enable so the device starts from `start`
        self.kick_pending = False
        self.irq_pending = False
        self.held = []
        self.completed = 0

    # driver side ----------------------------------------------------------------------
    def add(self, n):
        old = self.dq.avail_idx
        added = 0
        for _ in range(n):
            if len(self.dq.free) == 0:
                break
            self.dq.add_message(b"", 1)
            added += 1
        if added and self.dq.needs_kick(old):
            self.kick_pending = True

    def interrupt(self):
        while True:  # vring_interrupt + virtqueue_enable_cb's re-check
            self.completed += len(self.dq.collect())
            if self.dq.used_idx() == self.dq.last_used:
                return

    # device side ----------------------------------------------------------------------
    def kick(self):
        while (chain := self.q.pop()) is not None:
            self.held.append(chain)

    def complete(self, n):
        done = self.held[:n]
        self.held = self.held[n:]
        for chain in done:
            self.q.add_used(chain, 0)
        if done and self.q.needs_notification():
            self.irq_pending = True

    def deliver(self):
        if self.kick_pending:
            self.kick_pending = False
            self.kick()
        if self.irq_pending:
            self.irq_pending = False
            self.interrupt()

    def drain(self):
        for _ in range(10 * QUEUE_SIZE):
            self.deliver()
            self.complete(len(self.held))
            self.deliver()


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture], max_examples=150, deadline=None)
@given(program=ops, event_idx=st.booleans(), start=st.sampled_from([0, 0xFFF0, 0xFFFE]))
def test_no_stall(memory, allocator, program, event_idx, start):
    sim = Sim(memory, allocator, event_idx, start)
    total = 0
    for op in program:
        if op[0] == "add":
            before = sim.dq.avail_idx
            sim.add(op[1])
            total += (sim.dq.avail_idx - before) & 0xFFFF
        elif op[0] == "complete":
            sim.complete(op[1])
        else:
            sim.deliver()
    sim.drain()
    assert sim.q.next_avail == sim.dq.avail_idx, "device never saw some buffers (kick lost)"
    assert sim.completed == total, "driver never saw some used buffers (interrupt lost)"
    assert not sim.held


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture], max_examples=60, deadline=None)
@given(event_idx=st.booleans(), start=st.sampled_from([0, 0xFFFA]), batches=st.lists(st.integers(1, 4), max_size=12))
def test_a_polling_device_gets_no_kicks_and_misses_no_buffer(memory, allocator, event_idx, start, batches):
    """suppress_notifications: the driver is never asked to kick (across the index wrap), the
    device finds every buffer by polling, and enable_notification says what came meanwhile."""
    sim = Sim(memory, allocator, event_idx, start)
    sim.q.suppress_notifications()
    for n in batches:
        sim.add(n)
        assert not sim.kick_pending
        sim.kick()  # the device's own poll (a period tick)
        sim.complete(len(sim.held))
        sim.interrupt()
    sim.add(1)
    assert not sim.kick_pending
    assert sim.q.enable_notification()  # one buffer arrived while kicks were off: pop again
    sim.kick()
    sim.add(1)
    assert sim.kick_pending  # wanted again
