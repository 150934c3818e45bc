"""In-flight accounting under any mix of driver and device actions (hypothesis state machine):
SplitQueue.in_flight is exactly the chains the device holds, and never exceeds the queue size,
whatever the driver re-publishes and whenever the device completes, gives back or is reset."""

from hypothesis import event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from pyvmm.memory import GuestMemory
from pyvmm.virtio.faults import QueueFault
from pyvmm.virtio.testing import DriverQueue, GuestAllocator

SIZE = 8


class InFlight(RuleBasedStateMachine):
    @initialize()
    def setup(self):
        self.memory = GuestMemory.create([(0, 16 << 20)])
        self.alloc = GuestAllocator(self.memory, 0x1000, 15 << 20)
        self.dq = DriverQueue(self.memory, self.alloc, SIZE)
        self.q = self.dq.device_queue()
        self.faults = []
        self.q.on_fault = lambda queue, kind, detail: self.faults.append(kind)
        self.held = []
        self.stale = []
        self.can_undo = False

    def teardown(self):
        if hasattr(self, "memory"):
            self.memory.close()

    @precondition(lambda self: self.dq.free)
    @rule()
    def driver_adds(self):
        self.dq.add_message(b"m", 1)
        self.can_undo = False

    @precondition(lambda self: self.held)
    @rule(data=st.data())
    def driver_republishes_a_held_head(self, data):
        self.dq.publish(data.draw(st.sampled_from(self.held)).head)
        self.can_undo = False

    @rule()
    def device_pops(self):
        chain = self.q.pop()
        self.can_undo = chain is not None
        if chain is not None:
            self.held.append(chain)
            assert not self.q.broken
        elif self.q.broken:
            event(f"queue stopped: {self.faults[-1].name}")

    @precondition(lambda self: self.held)
    @rule(data=st.data())
    def device_completes(self, data):
        chain = self.held.pop(data.draw(st.integers(0, len(self.held) - 1)))
        self.q.add_used(chain, 0)
        self.dq.collect()
        self.can_undo = False

    @precondition(lambda self: self.can_undo)
    @rule()
    def device_gives_the_last_one_back(self):
        chain = self.held.pop()
        self.q.undo_pop(chain)
        assert chain.returned
        self.can_undo = False

    @precondition(lambda self: self.stale)
    @rule()
    def device_completes_late_after_reset(self):
        before = self.q.in_flight
        self.q.add_used(self.stale.pop(), 0)
        assert self.q.in_flight == before

    @rule()
    def driver_resets(self):
        self.can_undo = False
        self.q.reset()
        self.stale += self.held
        self.held = []
        self.dq = DriverQueue(self.memory, self.alloc, SIZE)
        self.dq.configure(self.q)

    @invariant()
    def in_flight_is_what_the_device_holds(self):
        if hasattr(self, "q"):
            assert self.q.in_flight == len(self.held) <= SIZE

    @invariant()
    def only_ring_faults_stop_the_queue(self):
        if hasattr(self, "q") and self.q.broken:
            assert self.faults and self.faults[-1].breaks_ring
            assert self.q.pop() is None

    @invariant()
    def over_the_size_is_refused_by_name(self):
        if hasattr(self, "q"):
            assert all(k in (QueueFault.IN_FLIGHT_EXCEEDED, QueueFault.AVAIL_IDX_JUMP) for k in self.faults)


InFlight.TestCase.settings = settings(max_examples=150, stateful_step_count=60, deadline=None)
test_in_flight_machine = InFlight.TestCase
