"""A driver reset (or activation) that outlives the vCPU's wait never wedges the device
(issue 7, finding 5): it runs later, in order, and never against a newer configuration."""

import threading

import pytest

from pyvmm.virtio import mmio
from pyvmm.virtio.constants import MmioReg as R
from pyvmm.virtio.constants import Status
from pyvmm.virtio.mmio import MmioTransport
from pyvmm.virtio import constants as C
from pyvmm.virtio.testing import EchoDevice, FakeInterrupt, MmioDriver

WAIT = 0.2  # the vCPU's wait for the loop, shortened from 10 s


class Slow(EchoDevice):
    """Blocks the device loop in queue_notify / activate / reset until released."""

    def __init__(self):
        super().__init__()
        self.release = threading.Event()
        self.block_in: set[str] = set()

    def _maybe_block(self, where):
        if where in self.block_in:
            self.block_in.discard(where)
            assert self.release.wait(10), "test never released the device"

    def queue_notify(self, queue_index):
        self._maybe_block("notify")
        super().queue_notify(queue_index)

    def activate(self, ctx):
        self._maybe_block("activate")
        super().activate(ctx)

    def reset(self):
        self._maybe_block("reset")
        super().reset()


@pytest.fixture
def rig(memory, allocator, device_loop, monkeypatch):
    monkeypatch.setattr(mmio, "_LOOP_TIMEOUT", WAIT)
    irq = FakeInterrupt()
    dev = Slow()
    transport = MmioTransport(dev, memory, device_loop, irq, name="slow")
    yield dev, transport, MmioDriver(transport, memory, allocator), irq
    dev.release.set()
    transport.close()


def roundtrip(drv, irq, queue, message, reply_size):
    dq = drv.queues[queue]
    head = dq.add_message(message, reply_size)
    drv.kick(queue)
    assert irq.wait(5), "no interrupt"
    assert drv.ack_interrupt() & C.MMIO_INT_VRING
    [entry] = dq.collect()
    assert entry.id == head
    return entry


def drain(transport):
    transport.loop.call(lambda: None, timeout=10)


def assert_healthy(drv, irq):
    assert drv.status == Status.ACKNOWLEDGE | Status.DRIVER | Status.FEATURES_OK | Status.DRIVER_OK
    for i in range(len(drv.queues)):
        drv.write32(R.QUEUE_SEL, i)
        assert drv.read32(R.QUEUE_READY) == 1
    assert roundtrip(drv, irq, 0, b"alive", 5).written == b"ALIVE"
    assert roundtrip(drv, irq, 1, b"both", 4).written == b"BOTH"


def test_reset_that_times_out_does_not_wipe_the_next_configuration(rig):
    dev, transport, drv, irq = rig
    drv.probe()
    dev.block_in.add("notify")
    drv.kick(0)  # the device loop is now busy for longer than the vCPU waits
    drv.reset()  # returns after WAIT with the registers cleared; the device reset is queued
    drv.probe()  # the driver re-probes at once: new queues, DRIVER_OK (activation queued too)
    dev.release.set()
    drain(transport)
    assert dev.events[-2:] == ["reset", "activate"]
    assert_healthy(drv, irq)


def test_activation_that_times_out_is_not_a_failure(rig):
    dev, transport, drv, irq = rig
    dev.block_in.add("activate")
    drv.probe()  # DRIVER_OK returns after WAIT, activation still running
    assert not drv.status & Status.DEVICE_NEEDS_RESET
    dev.release.set()
    drain(transport)
    assert_healthy(drv, irq)


def test_stale_activation_never_runs_against_a_newer_configuration(rig):
    dev, transport, drv, irq = rig
    dev.block_in.add("notify")
    drv.probe(driver_ok=False)
    drv.kick(0)  # kicked before DRIVER_OK: remembered, not served
    dev.events.clear()
    transport.loop.call_soon(lambda: dev.queue_notify(0))  # keep the loop busy
    drv.add_status(Status.DRIVER_OK)  # activation 1 queued behind the busy loop
    drv.reset()  # reset queued behind it
    drv.probe(queue_sizes=[8, 4])  # configuration 2 with other sizes; activation 2 queued
    dev.release.set()
    drain(transport)
    assert dev.events.count("activate") == 1  # the first activation was skipped: it was stale
    assert dev.ctx is not None and [q.size for q in dev.ctx.queues] == [8, 4]
    assert_healthy(drv, irq)


def test_late_completion_from_before_a_reset_touches_nothing(rig, memory):
    dev, transport, drv, irq = rig
    drv.probe()
    old_ctx_queue = transport.queues[0]
    dq = drv.queues[0]
    dq.add_message(b"old", 4)
    chain = old_ctx_queue.pop()
    old_complete = dev.ctx.complete
    drv.reset()
    drv.probe()
    irq.count = 0
    transport.loop.call(old_complete, 0, chain, 3)
    assert irq.count == 0 and drv.queues[0].collect() == []
    assert_healthy(drv, irq)
