"""SoundDevice behind the real virtio-mmio transport and device event loop thread, driven through
registers the way Linux's virtio_mmio + virtio_snd do it (no guest)."""

from __future__ import annotations

import pytest

from pyvmm.eventloop import DeviceEventLoop
from pyvmm.memory import GuestMemory
from pyvmm.virtio import constants as C
from pyvmm.virtio.mmio import MmioTransport
from pyvmm.virtio.testing import FakeInterrupt, GuestAllocator, MmioDriver

from pyvmm_snd import spec
from pyvmm_snd.device import SoundDevice
from pyvmm_snd.spec import EventCode, QueueIndex, RequestCode, Status
from pyvmm_snd.stream import StreamState


@pytest.fixture
def rig():
    memory = GuestMemory.create([(0, 64 << 20)])
    loop = DeviceEventLoop("test-snd").start()
    irq = FakeInterrupt()
    device = SoundDevice({"backend": "null"})  # no WAV file in the current directory
    transport = MmioTransport(device, memory, loop, irq, name="test-snd")
    drv = MmioDriver(transport, memory, GuestAllocator(memory, 0x10_0000, 32 << 20))
    yield device, transport, drv, irq
    transport.close()
    loop.stop()
    memory.close()


def roundtrip(drv, irq, queue, out: bytes, in_size: int, in_cuts=()):
    dq = drv.queues[queue]
    head = dq.add_message(out, in_size, in_cuts=in_cuts)
    drv.kick(queue)
    entries = []
    for _ in range(10):  # an interrupt left over from an earlier completion may come first
        assert irq.wait(5), "no interrupt"
        drv.ack_interrupt()
        entries += dq.collect()
        if entries:
            break
    assert [e.id for e in entries] == [head]
    return entries[0]


def linux_probe(drv) -> None:
    """virtsnd_probe: queues, fill the event queue and kick, DRIVER_OK."""
    drv.probe(driver_ok=False)
    for _ in range(drv.queues[QueueIndex.EVENT].size):
        drv.queues[QueueIndex.EVENT].add(writable=[8])
    drv.kick(QueueIndex.EVENT)
    drv.add_status(C.Status.DRIVER_OK)


def test_probe_and_queries_through_registers(rig):
    device, transport, drv, irq = rig
    assert drv.read32(C.MmioReg.DEVICE_ID) == 25
    offered = drv.device_features()
    assert offered & (1 << spec.F_CTLS) and offered & (1 << C.VERSION_1)
    linux_probe(drv)
    assert [q.size for q in drv.queues] == [64, 64, 64, 64]
    config = spec.Config.from_buffer_copy(drv.read_config(0, 16))
    assert (config.jacks, config.streams, config.chmaps, config.controls) == (2, 2, 16, 4)
    assert len(device.events.buffers) == 64
    for code, count, size in ((RequestCode.JACK_INFO, 2, 24), (RequestCode.PCM_INFO, 2, 32),
                              (RequestCode.CHMAP_INFO, 16, 24), (RequestCode.CTL_INFO, 4, 96)):
        q = spec.QueryInfo(code=code, start_id=0, count=count, size=size)
        entry = roundtrip(drv, irq, QueueIndex.CONTROL, bytes(q), 4 + count * size, in_cuts=[4])
        assert entry.len == 4 + count * size
        assert int.from_bytes(entry.written[:4], "little") == Status.OK, code.name


def test_playback_run_and_jack_event_through_the_loop_thread(rig):
    device, transport, drv, irq = rig
    linux_probe(drv)

    def control(request) -> Status:
        return Status(int.from_bytes(roundtrip(drv, irq, QueueIndex.CONTROL, bytes(request), 4).written[:4], "little"))

    set_params = spec.PcmSetParams(code=RequestCode.PCM_SET_PARAMS, stream_id=0, buffer_bytes=16384,
                                   period_bytes=4096, channels=2, format=spec.PcmFormat.S16,
                                   rate=spec.PcmRate.RATE_48000)
    assert control(set_params) == Status.OK
    assert control(spec.PcmHdr(code=RequestCode.PCM_PREPARE, stream_id=0)) == Status.OK
    tx = drv.queues[QueueIndex.TX]
    heads = [tx.add_message(bytes(spec.PcmXfer(stream_id=0)) + bytes(4096), 8, out_cuts=[4]) for _ in range(4)]
    drv.kick(QueueIndex.TX)
    assert control(spec.PcmHdr(code=RequestCode.PCM_START, stream_id=0)) == Status.OK
    assert device.streams[0].state == StreamState.STARTED
    done = []
    for _ in range(50):  # the stream clock completes one period (21 ms) at a time
        done += tx.collect()
        if len(done) == len(heads):
            break
        irq.wait(1)
        drv.ack_interrupt()
    assert [e.id for e in done] == heads and all(e.len == 8 for e in done)

    before = irq.count
    device.set_jack(0, False)  # from this (non-loop) thread
    assert irq.wait_count(before + 1, 5)
    drv.ack_interrupt()
    [entry] = drv.queues[QueueIndex.EVENT].collect()
    event = spec.Event.from_buffer_copy(entry.written)
    assert (event.code, event.data, entry.len) == (EventCode.JACK_DISCONNECTED, 0, 8)


def test_driver_reset_drops_state_and_reprobe_works(rig):
    device, transport, drv, irq = rig
    linux_probe(drv)
    request = spec.PcmHdr(code=RequestCode.PCM_PREPARE, stream_id=1)
    assert int.from_bytes(roundtrip(drv, irq, 0, bytes(request), 4).written[:4], "little") == Status.OK
    assert device.streams[1].state == StreamState.PREPARED
    drv.reset()
    assert device.streams[1].state == StreamState.SET_PARAMS and device.ctx is None
    linux_probe(drv)
    assert int.from_bytes(roundtrip(drv, irq, 0, bytes(request), 4).written[:4], "little") == Status.OK
