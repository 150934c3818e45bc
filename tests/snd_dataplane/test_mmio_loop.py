"""The data plane on the real device event loop thread behind virtio-mmio: a control request
is answered while audio I/O is in flight (nothing waits behind a period), and RELEASE hands
back the held messages before its own answer."""

from __future__ import annotations

import pytest

from pyvmm.eventloop import DeviceEventLoop
from pyvmm.memory import GuestMemory
from pyvmm.virtio import constants as C
from pyvmm.virtio.mmio import MmioTransport
from pyvmm.virtio.testing import FakeInterrupt, GuestAllocator, MmioDriver

from pyvmm_snd import spec
from pyvmm_snd.device import SoundDevice
from pyvmm_snd.spec import QueueIndex, RequestCode, Status

SECOND = 48000 * 4  # one second of 48 kHz stereo S16: the period, so no audio completes soon


@pytest.fixture
def rig():
    memory = GuestMemory.create([(0, 64 << 20)])
    loop = DeviceEventLoop("test-snd-dp").start()
    irq = FakeInterrupt()
    device = SoundDevice({"backend": "null"})
    transport = MmioTransport(device, memory, loop, irq, name="test-snd-dp")
    drv = MmioDriver(transport, memory, GuestAllocator(memory, 0x10_0000, 48 << 20))
    drv.probe(driver_ok=False)
    for _ in range(drv.queues[QueueIndex.EVENT].size):
        drv.queues[QueueIndex.EVENT].add(writable=[8])
    drv.kick(QueueIndex.EVENT)
    drv.add_status(C.Status.DRIVER_OK)
    yield device, drv, irq
    transport.close()
    loop.stop()
    memory.close()


def control(drv, irq, request) -> Status:
    dq = drv.queues[QueueIndex.CONTROL]
    head = dq.add_message(bytes(request), 4)
    drv.kick(QueueIndex.CONTROL)
    for _ in range(10):
        assert irq.wait(5), "no interrupt"
        drv.ack_interrupt()
        entries = dq.collect()
        if entries:
            assert [e.id for e in entries] == [head]
            return Status(int.from_bytes(entries[0].written[:4], "little"))
    raise AssertionError("control request not answered")


def test_control_is_answered_while_audio_is_in_flight_and_release_flushes_first(rig):
    device, drv, irq = rig
    set_params = spec.PcmSetParams(code=RequestCode.PCM_SET_PARAMS, stream_id=0, buffer_bytes=2 * SECOND,
                                   period_bytes=SECOND, channels=2, format=spec.PcmFormat.S16,
                                   rate=spec.PcmRate.RATE_48000)
    assert control(drv, irq, set_params) == Status.OK
    assert control(drv, irq, spec.PcmHdr(code=RequestCode.PCM_PREPARE, stream_id=0)) == Status.OK
    tx = drv.queues[QueueIndex.TX]
    heads = [tx.add_message(bytes(spec.PcmXfer(stream_id=0)) + bytes(SECOND), 8, out_cuts=[4]) for _ in range(2)]
    drv.kick(QueueIndex.TX)
    assert control(drv, irq, spec.PcmHdr(code=RequestCode.PCM_START, stream_id=0)) == Status.OK
    for _ in range(5):  # control traffic while the first period (1 s) is still playing
        assert control(drv, irq, spec.PcmHdr(code=RequestCode.PCM_PREPARE, stream_id=1)) == Status.OK
    assert control(drv, irq, spec.PcmHdr(code=RequestCode.PCM_STOP, stream_id=0)) == Status.OK
    assert tx.collect() == []  # no audio completed: every answer above came ahead of the I/O
    assert control(drv, irq, spec.PcmHdr(code=RequestCode.PCM_RELEASE, stream_id=0)) == Status.OK
    released = tx.collect()  # used before the RELEASE answer, so already there
    assert [e.id for e in released] == heads and all(e.len == 8 for e in released)
