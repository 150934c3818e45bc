"""A driver that misbehaves and resets the device over and over cannot flood the log (issue 7,
finding 12): the guest-error limiter (pyvmm.guest_log) is per VM lifetime, not per reset."""

import logging

from pyvmm import guest_log
from pyvmm.virtio import constants as C
from pyvmm.virtio.constants import MmioReg as R
from pyvmm.virtio.mmio import MmioTransport
from pyvmm.virtio.testing import BROKEN_RING, MALFORMED, EchoDevice, FakeInterrupt, MmioDriver

CYCLES = 200


def misbehave_once(drv: MmioDriver, irq: FakeInterrupt) -> None:
    """One probe of a bad driver: wrong-width register accesses, a status going backwards,
    malformed chains on one queue, a broken ring on the other, then a reset."""
    drv.probe()
    drv.transport.read(R.STATUS, 2)
    drv.transport.write(R.QUEUE_SEL, b"\1")
    drv.write32(R.STATUS, C.Status.ACKNOWLEDGE)
    for _ in range(10):
        MALFORMED["loop"](drv.queues[0])
    drv.kick(0)
    BROKEN_RING["avail_idx_jump"](drv.queues[1])
    drv.kick(1)
    irq.wait(5)
    drv.transport.loop.call(lambda: None)  # both kicks served
    drv.ack_interrupt()
    drv.reset()


def test_200_reset_cycles_do_not_flood_the_log(memory, allocator, device_loop, caplog):
    caplog.set_level(logging.DEBUG, logger="pyvmm")
    irq = FakeInterrupt()
    transport = MmioTransport(EchoDevice(), memory, device_loop, irq, name="flood")
    drv = MmioDriver(transport, memory, allocator)
    try:
        for _ in range(CYCLES):
            misbehave_once(drv, irq)
    finally:
        transport.close()
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    # the WARNING lines are bounded by the limiter, not by the number of cycles ...
    assert len(warnings) <= guest_log.GuestErrorLog.total_burst, f"{len(warnings)} WARNING lines"
    # ... while every error is still counted (and logged at DEBUG for -vv)
    reported = guest_log.GUEST_ERRORS.reported
    assert reported >= CYCLES * 15
    assert sum(r.levelno == logging.DEBUG and "[DESCRIPTOR_LOOP]" in r.getMessage()
               for r in caplog.records) >= CYCLES * 9
    summary = guest_log.GUEST_ERRORS.summary()
    assert summary.startswith(f"{reported} guest errors in this VM's lifetime")
