"""MmioTransport: register file, status state machine, notifications, interrupts, reset."""

import os
import threading
import time

import pytest

from pyvmm.virtio import constants as C
from pyvmm.virtio.constants import MmioReg as R
from pyvmm.virtio.constants import Status
from pyvmm.virtio.mmio import MmioTransport, cmdline_fragment
from pyvmm.virtio.testing import (
    ECHO_CONFIG, ECHO_CONFIG_MAGIC, ECHO_DEVICE_ID, DriverQueue, EchoDevice, FakeInterrupt, MmioDriver,
    ProbeError,
)

BASE = 0xD000_0000


@pytest.fixture
def irq():
    return FakeInterrupt()


@pytest.fixture
def make(memory, allocator, device_loop, irq):
    made = []

    def make(device=None, **kw):
        device = device or EchoDevice()
        transport = MmioTransport(device, memory, device_loop, irq, name="test-echo", **kw)
        made.append(transport)
        return device, transport, MmioDriver(transport, memory, allocator)
    yield make
    for t in made:
        t.close()


def roundtrip(drv, irq, queue, message, reply_size, **kw):
    dq = drv.queues[queue]
    head = dq.add_message(message, reply_size, **kw)
    drv.kick(queue)
    assert irq.wait(5), "no interrupt"
    assert drv.ack_interrupt() & C.MMIO_INT_VRING
    [entry] = dq.collect()
    assert entry.id == head
    return entry


def test_identity_registers(make):
    _, t, drv = make()
    assert drv.read32(R.MAGIC_VALUE) == 0x74726976
    assert t.read(R.MAGIC_VALUE, 4) == b"virt"
    assert drv.read32(R.VERSION) == 2
    assert drv.read32(R.DEVICE_ID) == ECHO_DEVICE_ID
    assert drv.read32(R.VENDOR_ID) == C.MMIO_VENDOR_ID
    for reg in (R.SHM_LEN_LOW, R.SHM_LEN_HIGH, R.SHM_BASE_LOW, R.SHM_BASE_HIGH):
        assert drv.read32(reg) == 0xFFFFFFFF
    offered = drv.device_features()
    for b in (C.VERSION_1, C.RING_EVENT_IDX, C.RING_INDIRECT_DESC, 0):
        assert offered & (1 << b)
    drv.write32(R.QUEUE_SEL, 2)  # echo has 2 queues
    assert drv.read32(R.QUEUE_NUM_MAX) == 0
    drv.write32(R.QUEUE_SEL, 1)
    assert drv.read32(R.QUEUE_NUM_MAX) == 16


def test_transport_features_can_be_withheld(make):
    _, _, drv = make(event_idx=False, indirect_desc=False)
    offered = drv.device_features()
    assert not offered & ((1 << C.RING_EVENT_IDX) | (1 << C.RING_INDIRECT_DESC))


def test_probe_activates_and_echo_works(make, irq):
    dev, t, drv = make()
    drv.probe()
    assert drv.status == Status.ACKNOWLEDGE | Status.DRIVER | Status.FEATURES_OK | Status.DRIVER_OK
    assert dev.events == ["activate"]
    assert dev.ctx.features == drv.features
    assert all(q.ready and q.event_idx and q.indirect for q in t.queues)
    entry = roundtrip(drv, irq, 1, b"hello", 16, out_cuts=[2], in_cuts=[3])
    assert entry.written == b"HELLO"  # feature bit 0 negotiated: upper case
    entry = roundtrip(drv, irq, 0, b"indirect!", 9, indirect=True)
    assert entry.written == b"INDIRECT!"
    assert ECHO_CONFIG.unpack(drv.read_config(0, 8)) == (ECHO_CONFIG_MAGIC, 2)


@pytest.mark.parametrize("event_idx", [False, True])
def test_many_messages_with_and_without_event_idx(make, irq, event_idx):
    dev, t, drv = make()
    wanted = ~0 if event_idx else ~(1 << C.RING_EVENT_IDX)
    drv.probe(wanted_features=wanted & ~1)  # no upper-casing
    dq = drv.queues[0]
    assert dq.event_idx == event_idx
    got = []
    for round_ in range(40):  # more than the queue size: indices wrap around the ring
        heads = [dq.add_message(f"m{round_}.{i}".encode(), 8) for i in range(3)]
        drv.kick(0)
        assert irq.wait(5)
        drv.ack_interrupt()
        entries = dq.collect()
        assert [e.id for e in entries] == heads
        got += [e.written for e in entries]
    assert got == [f"m{r}.{i}".encode() for r in range(40) for i in range(3)]


def test_features_ok_refused_without_version_1(make, caplog):
    _, _, drv = make()
    with pytest.raises(ProbeError):
        drv.probe(wanted_features=~(1 << C.VERSION_1))
    assert not drv.status & Status.FEATURES_OK
    assert drv.status & Status.FAILED
    assert "VERSION_1" in caplog.text


def test_features_ok_refused_for_unoffered_bits(make, caplog):
    _, _, drv = make()
    drv.reset()
    drv.add_status(Status.ACKNOWLEDGE | Status.DRIVER)
    drv.write_driver_features((1 << C.VERSION_1) | (1 << 5))
    assert not drv.add_status(Status.FEATURES_OK) & Status.FEATURES_OK
    assert "not offered" in caplog.text
    drv.write_driver_features(1 << C.VERSION_1)  # still allowed: FEATURES_OK was refused
    assert drv.add_status(Status.FEATURES_OK) & Status.FEATURES_OK
    drv.write_driver_features((1 << C.VERSION_1) | 1)  # too late now: ignored
    assert drv.transport.driver_features == 1 << C.VERSION_1


def test_status_cannot_go_backwards_or_skip_features_ok(make, caplog):
    dev, _, drv = make()
    drv.reset()
    drv.add_status(Status.ACKNOWLEDGE | Status.DRIVER)
    drv.write32(R.STATUS, Status.ACKNOWLEDGE)
    assert drv.status == Status.ACKNOWLEDGE | Status.DRIVER
    assert drv.add_status(Status.DRIVER_OK) == Status.ACKNOWLEDGE | Status.DRIVER
    assert dev.events == []
    assert "bits can only be added" in caplog.text and "DRIVER_OK without FEATURES_OK" in caplog.text


def test_wrong_width_register_access_is_ignored(make, caplog):
    _, t, drv = make()
    drv.probe(driver_ok=False)
    assert t.read(R.MAGIC_VALUE, 2) == b"\0\0"
    assert t.read(R.STATUS + 1, 4) == b"\0\0\0\0"
    t.write(R.STATUS, b"\0")  # a 1-byte reset attempt must not reset
    assert drv.status & Status.FEATURES_OK
    assert caplog.text.count("registers are 32-bit") == 3


def test_config_space_any_width_and_generation(make, irq):
    dev, t, drv = make()
    drv.probe()
    assert t.read(R.CONFIG, 1) == b"\x40"
    assert t.read(R.CONFIG + 2, 2) == b"\x40\xec"
    assert t.read(R.CONFIG + 6, 4) == b"\0\0\0\0"  # past the end reads zero
    gen = drv.read32(R.CONFIG_GENERATION)
    dev.ctx.signal_config()
    assert irq.wait(5)
    assert drv.read32(R.CONFIG_GENERATION) == gen + 1
    assert drv.ack_interrupt() == C.MMIO_INT_CONFIG
    assert drv.read32(R.INTERRUPT_STATUS) == 0


def test_device_requested_reset(make, irq, caplog):
    dev, t, drv = make()
    drv.probe()
    dev.ctx.request_reset("backend died")
    assert irq.wait(5)
    assert drv.status & Status.DEVICE_NEEDS_RESET
    assert drv.ack_interrupt() == C.MMIO_INT_CONFIG
    assert "device needs reset: backend died" in caplog.text
    drv.add_status(Status.FAILED)  # the driver's status writes keep the device's bit
    assert drv.status & Status.DEVICE_NEEDS_RESET
    drv.probe()
    assert dev.events == ["activate", "reset", "activate"]
    assert drv.status & Status.DRIVER_OK and not drv.status & Status.DEVICE_NEEDS_RESET


def test_bad_queue_layout_is_refused(make, memory, allocator, irq, caplog):
    _, t, drv = make()
    drv.probe(driver_ok=False)
    drv.reset()
    drv.add_status(Status.ACKNOWLEDGE | Status.DRIVER)
    drv.write_driver_features(1 << C.VERSION_1)
    drv.add_status(Status.FEATURES_OK)
    dq = DriverQueue(memory, allocator, 16)
    dq.desc_table += 8  # misaligned
    drv.setup_queue(0, dq)
    assert drv.read32(R.QUEUE_READY) == 0
    assert drv.status & Status.DEVICE_NEEDS_RESET
    assert irq.wait(5)
    assert "16-byte aligned" in caplog.text


def test_queue_registers_frozen_after_driver_ok(make, caplog):
    _, t, drv = make()
    drv.probe()
    before = (t.queues[0].size, t.queues[0].desc_table)
    drv.write32(R.QUEUE_SEL, 0)
    drv.write32(R.QUEUE_NUM, 4)
    drv.write32(R.QUEUE_DESC_LOW, 0x1000)
    assert (t.queues[0].size, t.queues[0].desc_table) == before
    assert "while it is live" in caplog.text
    drv.write32(R.QUEUE_READY, 0)  # Linux's vm_del_vq: disabling is always allowed
    assert drv.read32(R.QUEUE_READY) == 0 and not t.queues[0].ready
    drv.write32(R.QUEUE_READY, 1)  # but not re-enabling a live device's queue
    assert drv.read32(R.QUEUE_READY) == 0


def test_kick_before_driver_ok_is_delivered_on_activation(make, irq):
    dev, t, drv = make()
    drv.probe(driver_ok=False)
    dq = drv.queues[0]
    head = dq.add_message(b"early", 5)
    drv.kick(0)
    t.loop.call(lambda: None)  # let the loop see the kick
    assert dev.events == []
    drv.add_status(Status.DRIVER_OK)
    assert irq.wait(5)
    assert [(e.id, e.written) for e in dq.collect()] == [(head, b"EARLY")]
    assert dev.events == ["activate", "notify 0"]


def test_activation_failure_sets_needs_reset(make, caplog):
    class Broken(EchoDevice):
        def activate(self, ctx):
            raise OSError("no audio device")

    _, _, drv = make(Broken())
    drv.probe()
    assert drv.status & Status.DEVICE_NEEDS_RESET
    assert "no audio device" in caplog.text


def test_driver_reset_resets_device_and_registers(make):
    dev, t, drv = make()
    drv.probe()
    drv.write32(R.QUEUE_SEL, 1)
    drv.reset()
    assert dev.events == ["activate", "reset"]
    assert all(not q.ready for q in t.queues)
    assert drv.read32(R.QUEUE_READY) == 0 and drv.read32(R.INTERRUPT_STATUS) == 0
    assert t.driver_features == 0


def test_cmdline_fragment():
    assert cmdline_fragment(0xD0000000, 5) == "virtio_mmio.device=4K@0xd0000000:5"
    assert cmdline_fragment(0x1000, 12, size=0x200) == "virtio_mmio.device=512@0x1000:12"


def test_ioeventfd_notifications(make, irq):
    dev, t, drv = make()
    fds = t.ioeventfds(BASE)
    assert [(a, n, m) for a, n, m, _ in fds] == [(BASE + 0x50, 4, 0), (BASE + 0x50, 4, 1)]
    assert t.ioeventfds(BASE) == fds  # stable: the VM may ask twice
    drv.probe()
    dq = drv.queues[1]
    head = dq.add_message(b"via eventfd", 11)
    os.eventfd_write(fds[1][3], 1)  # what KVM does for a matching 4-byte write
    assert irq.wait(5)
    assert [(e.id, e.written) for e in dq.collect()] == [(head, b"VIA EVENTFD")]
    assert dev.events[-1] == "notify 1"
    assert t.kicks == [0, 1] and t.interrupts == 1


class TimerDevice(EchoDevice):
    """Answers one chain per timer tick, like a stream clock: reset must cut it off."""

    def activate(self, ctx):
        super().activate(ctx)
        self.timer = ctx.loop.call_later(0.001, self.tick)

    def queue_notify(self, queue_index):
        pass

    def tick(self):
        ctx = self.ctx
        chain = ctx.queues[0].pop()
        if chain is not None:
            ctx.complete(0, chain, chain.writer().write(b"t"))
        self.timer = ctx.loop.call_later(0.001, self.tick)

    def reset(self):
        self.timer.cancel()
        super().reset()


def test_reset_during_activity(make, irq):
    dev, t, drv = make(TimerDevice())
    for _ in range(5):
        drv.probe()
        dq = drv.queues[0]
        for _ in range(8):
            dq.add_message(b"", 1)
        time.sleep(0.004)  # some chains complete, some are in flight
        drv.reset()
        used_after_reset = dq.used_idx()
        time.sleep(0.01)
        assert dq.used_idx() == used_after_reset  # nothing written to the old rings after reset
        assert not any(q.ready for q in t.queues)
    assert dev.events.count("reset") == 5


def test_no_interrupt_lost_under_concurrent_ack(make, irq):
    """Two signallers (used buffers on the loop thread, config changes from another thread)
    race a driver thread that reads InterruptStatus and acknowledges what it read. Every
    event must eventually be seen with its bit set: an ACK must never clear a bit it did not read."""
    dev, t, drv = make()
    drv.probe()
    N = 3000
    produced = {C.MMIO_INT_VRING: 0, C.MMIO_INT_CONFIG: 0}
    seen = dict(produced)
    stop = threading.Event()

    def driver():
        while True:
            if not irq.wait(0.05):
                if stop.is_set():
                    return
                continue
            status = drv.ack_interrupt()
            for bit in seen:
                if status & bit:
                    seen[bit] = produced_at_read[bit]

    # the value of each producer's counter is published before its bit is set, so whatever
    # the driver reads after seeing a bit is at least the count that bit announced
    produced_at_read = produced

    def used_producer():
        for _ in range(N):
            def one():
                produced[C.MMIO_INT_VRING] += 1
                t._raise(C.MMIO_INT_VRING)
            t.loop.call(one)

    def config_producer():
        for _ in range(N):
            produced[C.MMIO_INT_CONFIG] += 1
            dev.ctx.signal_config()

    threads = [threading.Thread(target=f) for f in (driver, used_producer, config_producer)]
    for th in threads:
        th.start()
    for th in threads[1:]:
        th.join(60)
    stop.set()
    threads[0].join(60)
    assert produced == {C.MMIO_INT_VRING: N, C.MMIO_INT_CONFIG: N}
    assert seen == produced
    assert irq.count >= 2 * N


def test_malformed_chain_through_the_transport(make, irq, caplog):
    from pyvmm.virtio.testing import MALFORMED
    dev, t, drv = make()
    drv.probe()
    dq = drv.queues[0]
    MALFORMED["loop"](dq)
    good = dq.add_message(b"ok", 2)
    drv.kick(0)
    assert irq.wait(5)
    assert drv.ack_interrupt() == C.MMIO_INT_VRING
    assert [(e.id, e.len, e.written) for e in dq.collect()] == [(0, 0, b""), (good, 2, b"OK")]
    assert "test-echo queue 0: chain head 0: descriptor 0 visited twice (loop)" in caplog.text
    assert not drv.status & Status.DEVICE_NEEDS_RESET


def test_broken_ring_through_the_transport_needs_reset(make, irq, caplog):
    from pyvmm.virtio.testing import BROKEN_RING
    dev, t, drv = make()
    drv.probe()
    BROKEN_RING["avail_idx_jump"](drv.queues[1])
    drv.kick(1)
    assert irq.wait(5)
    assert drv.status & Status.DEVICE_NEEDS_RESET
    assert drv.ack_interrupt() == C.MMIO_INT_CONFIG
    assert "broken avail ring" in caplog.text
    drv.probe()  # the driver resets and starts over: everything works again
    assert roundtrip(drv, irq, 1, b"again", 5).written == b"AGAIN"


def test_queue_setup_before_features_ok_is_ignored(make, memory, allocator, caplog):
    _, t, drv = make()
    drv.reset()
    drv.add_status(Status.ACKNOWLEDGE | Status.DRIVER)
    drv.setup_queue(0, DriverQueue(memory, allocator, 8))
    assert drv.read32(R.QUEUE_READY) == 0 and t.queues[0].size == 16 and t.queues[0].desc_table == 0
    assert "before FEATURES_OK ignored" in caplog.text


def test_linux_style_interrupt_handler(make, irq):
    dev, t, drv = make()
    drv.probe()
    h0 = drv.queues[0].add_message(b"a", 1)
    h1 = drv.queues[1].add_message(b"b", 1)
    drv.kick(0)
    drv.kick(1)
    assert irq.wait_count(2, 5)
    dev.ctx.signal_config()
    assert irq.wait_count(3, 5)
    used = drv.handle_interrupt()
    assert {i: [(e.id, e.written) for e in v] for i, v in used.items()} == {0: [(h0, b"A")], 1: [(h1, b"B")]}
    assert drv.config_changes == 1
    assert drv.handle_interrupt() == {} and drv.config_changes == 1
