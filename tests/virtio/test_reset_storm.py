"""Any sequence of driver resets, probes and kicks, with the device loop sometimes busy for
longer than the vCPU waits, leaves a device that a clean probe brings back (finding 5)."""

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyvmm.eventloop import DeviceEventLoop
from pyvmm.memory import GuestMemory
from pyvmm.virtio import mmio
from pyvmm.virtio.mmio import MmioTransport
from pyvmm.virtio.testing import FakeInterrupt, GuestAllocator, MmioDriver
from test_reset_ordering import Slow, assert_healthy, drain

WAIT = 0.03


class Busy(Slow):
    """Each requested block keeps the loop busy 3x as long as the vCPU waits."""

    def _maybe_block(self, where):
        if where in self.block_in:
            self.block_in.discard(where)
            self.release.wait(WAIT * 3)

ACTIONS = st.lists(st.sampled_from(["probe", "probe_no_driver_ok", "reset", "kick0", "kick1",
                                    "message0", "block_notify", "block_reset", "block_activate"]),
                   min_size=1, max_size=12)


@pytest.fixture(scope="module")
def rig():
    memory = GuestMemory.create([(0, 256 << 20)])
    loop = DeviceEventLoop("storm").start()
    yield memory, loop
    loop.stop()
    memory.close()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(actions=ACTIONS)
def test_reset_storm_never_wedges(rig, monkeypatch, actions):
    memory, loop = rig
    monkeypatch.setattr(mmio, "_LOOP_TIMEOUT", WAIT)
    dev = Busy()
    irq = FakeInterrupt()
    transport = MmioTransport(dev, memory, loop, irq, name="storm")
    drv = MmioDriver(transport, memory, GuestAllocator(memory, 0x10_0000, 200 << 20))
    try:
        for action in actions:
            if action.startswith("block_"):
                dev.block_in.add(action[len("block_"):])
            elif action == "probe":
                drv.probe()
            elif action == "probe_no_driver_ok":
                drv.probe(driver_ok=False)
            elif action == "reset":
                drv.reset()
            elif action.startswith("kick") and drv.queues:
                drv.kick(int(action[-1]))
            elif action == "message0" and drv.queues and drv.queues[0].free:
                drv.queues[0].add_message(b"m", 1)
        drain(transport)
        dev.block_in.clear()
        drv.probe()
        drain(transport)
        while irq.wait(0):
            pass  # interrupts from before the clean probe
        assert_healthy(drv, irq)
    finally:
        dev.release.set()
        drain(transport)
        transport.close()
