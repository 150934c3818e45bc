"""A Python model of the Linux virtio_snd driver's side of the queues, for device unit tests.

Queues live in a real GuestMemory (``pyvmm.virtio.testing``); requests are built from the
wire structs in ``pyvmm_snd.spec`` and can be cut into any number of descriptors, direct or
indirect, the way Linux does it or any other way the spec allows.
"""

from __future__ import annotations

import ctypes
import heapq
import itertools
import struct
from typing import Sequence

from pyvmm.memory import GuestMemory
from pyvmm.virtio.device import DeviceContext
from pyvmm.virtio.testing import DriverQueue, GuestAllocator, UsedEntry

from pyvmm_snd import spec
from pyvmm_snd.device import SoundDevice
from pyvmm_snd.spec import PcmFormat, PcmRate, QueueIndex, RequestCode, Status

RAM = 64 << 20
QUEUE_SIZE = 64


class _Timer:
    def __init__(self, when: float, fn, args):
        self.when, self.fn, self.args, self.cancelled = when, fn, args, False

    def cancel(self) -> None:
        self.cancelled = True


class FakeClockLoop:
    """Stands in for the device event loop: timers fire only when the test advances time, so
    pacing is checked exactly, without sleeping or asserting wall-clock durations."""

    def __init__(self) -> None:
        self.now = 1000.0
        self._timers: list[tuple[float, int, _Timer]] = []
        self._seq = itertools.count()

    def time(self) -> float:
        return self.now

    def call_at(self, when: float, fn, *args) -> _Timer:
        timer = _Timer(when, fn, args)
        heapq.heappush(self._timers, (when, next(self._seq), timer))
        return timer

    def call_later(self, delay: float, fn, *args) -> _Timer:
        return self.call_at(self.now + delay, fn, *args)

    def is_running(self) -> bool:
        return False

    def pending_timers(self) -> int:
        return sum(not t.cancelled for _, _, t in self._timers)

    def advance(self, seconds: float) -> None:
        target = self.now + seconds
        while self._timers and self._timers[0][0] <= target:
            when, _, timer = heapq.heappop(self._timers)
            if timer.cancelled:
                continue
            self.now = max(self.now, when)
            timer.fn(*timer.args)
        self.now = target

    def close(self) -> None:
        self._timers.clear()


def status_of(entry: UsedEntry) -> Status:
    assert entry.len >= 4, f"used length {entry.len} has no status"
    return Status(int.from_bytes(entry.written[:4], "little"))


class SndDriver:
    """Driver half of the four virtio-snd queues, wired to a SoundDevice."""

    def __init__(self, device: SoundDevice | None = None, options: dict[str, str] | None = None,
                 features: int | None = None, indirect: bool = True, loop=None):
        # Control-plane tests want no host files: the null back end unless the options choose one.
        self.device = device or SoundDevice({"backend": "null", **(options or {})})
        self.memory = GuestMemory.create([(0, RAM)])
        self.alloc = GuestAllocator(self.memory, 0x1000, RAM - 0x1000)
        self.queues = [DriverQueue(self.memory, self.alloc, QUEUE_SIZE) for _ in QueueIndex]
        self.device_queues = [dq.device_queue(i, indirect=indirect) for i, dq in enumerate(self.queues)]
        self.signals: list[int] = []
        self._writable: dict[tuple[int, int], list[tuple[int, int]]] = {}
        self.resets: list[str] = []
        self.loop = loop or FakeClockLoop()
        self.features = self.device.device_features() if features is None else features
        self.ctx = DeviceContext(memory=self.memory, queues=self.device_queues, features=self.features,
                                 loop=self.loop, signal_used=self.signals.append,
                                 signal_config=lambda: None, request_reset=self.resets.append)

    def close(self) -> None:
        self.loop.close()
        self.memory.close()

    def __enter__(self) -> SndDriver:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- lifecycle ------------------------------------------------------------------------------

    def post_event_buffers(self, count: int = QUEUE_SIZE, size: int = 8) -> None:
        for _ in range(count):
            self.queues[QueueIndex.EVENT].add(writable=[size])

    def activate(self) -> None:
        self.device.activate(self.ctx)

    def config(self) -> spec.Config:
        return spec.Config.from_buffer_copy(self.device.read_config(0, 16))

    def start(self, event_buffers: int = QUEUE_SIZE) -> SndDriver:
        """Linux probe up to DRIVER_OK: fill the event queue, then activate."""
        self.post_event_buffers(event_buffers)
        self.activate()
        return self

    # -- control requests -----------------------------------------------------------------------

    def send(self, out: bytes, in_size: int, out_cuts: Sequence[int] = (), in_cuts: Sequence[int] = (),
             indirect: bool = False) -> UsedEntry:
        """One control request; returns its used entry (the device must answer synchronously)."""
        dq = self.queues[QueueIndex.CONTROL]
        head = dq.add_message(bytes(out), in_size, out_cuts, in_cuts, indirect=indirect)
        self.device.queue_notify(QueueIndex.CONTROL)
        entries = dq.collect()
        assert [e.id for e in entries] == [head], f"expected one answer for head {head}, got {entries}"
        return entries[0]

    def linux_send(self, out: bytes, in_size: int, extra_in: int = 0, extra_out: bytes = b"") -> UsedEntry:
        """Linux's layout: request buffer [+ extra out], response header [+ extra in] (virtsnd_ctl_msg_send)."""
        dq = self.queues[QueueIndex.CONTROL]
        readable = [bytes(out)] + ([extra_out] if extra_out else [])
        writable = [in_size] + ([extra_in] if extra_in else [])
        head = dq.add(readable, writable)
        self.device.queue_notify(QueueIndex.CONTROL)
        entries = dq.collect()
        assert [e.id for e in entries] == [head]
        return entries[0]

    def query(self, code: RequestCode, start: int, count: int, size: int, room: int | None = None) -> UsedEntry:
        q = spec.QueryInfo(code=code, start_id=start, count=count, size=size)
        return self.linux_send(bytes(q), 4, extra_in=count * size if room is None else room)

    def items(self, code: RequestCode, item_type: type[ctypes.Structure], count: int) -> list:
        entry = self.query(code, 0, count, ctypes.sizeof(item_type))
        assert status_of(entry) == Status.OK, status_of(entry)
        size = ctypes.sizeof(item_type)
        assert entry.len == 4 + count * size
        return [item_type.from_buffer_copy(entry.written[4 + i * size:4 + (i + 1) * size]) for i in range(count)]

    def pcm(self, code: RequestCode, stream_id: int) -> Status:
        return status_of(self.linux_send(bytes(spec.PcmHdr(code=code, stream_id=stream_id)), 4))

    def set_params(self, stream_id: int = 0, buffer_bytes: int = 32768, period_bytes: int = 4096, channels: int = 2,
                   fmt: PcmFormat = PcmFormat.S16, rate: PcmRate = PcmRate.RATE_48000, features: int = 0) -> Status:
        req = spec.PcmSetParams(code=RequestCode.PCM_SET_PARAMS, stream_id=stream_id, buffer_bytes=buffer_bytes,
                                period_bytes=period_bytes, features=features, channels=channels, format=fmt,
                                rate=rate)
        return status_of(self.linux_send(bytes(req), 4))

    def ctl(self, code: RequestCode, control_id: int, in_size: int = 4, payload: bytes = b"") -> UsedEntry:
        return self.linux_send(bytes(spec.CtlHdr(code=code, control_id=control_id)), 4,
                               extra_in=in_size - 4, extra_out=payload)

    def ctl_write(self, control_id: int, values: Sequence[int]) -> Status:
        value = spec.CtlValue()
        for i, v in enumerate(values):
            value.value.integer[i] = v & 0xFFFFFFFF
        return status_of(self.ctl(RequestCode.CTL_WRITE, control_id, payload=bytes(value)))

    def ctl_read(self, control_id: int) -> tuple[Status, spec.CtlValue | None]:
        entry = self.ctl(RequestCode.CTL_READ, control_id, in_size=4 + 512)
        status = status_of(entry)
        return status, spec.CtlValue.from_buffer_copy(entry.written[4:516]) if status == Status.OK else None

    # -- I/O -----------------------------------------------------------------------------------------

    def add_tx(self, stream_id: int, frames: bytes, cuts: Sequence[int] = (), indirect: bool = False) -> int:
        """A playback message: xfer + frames readable (cut anywhere), 8-byte status writable."""
        data = bytes(spec.PcmXfer(stream_id=stream_id)) + frames
        head = self.queues[QueueIndex.TX].add_message(data, 8, cuts, indirect=indirect)
        self._writable[head, QueueIndex.TX] = self.queues[QueueIndex.TX].pending[head].writable
        return head

    def add_rx(self, stream_id: int, nbytes: int, in_cuts: Sequence[int] = (), indirect: bool = False) -> int:
        """A capture message: xfer readable; frames + status writable (Linux: separate descriptors)."""
        cuts = list(in_cuts) or [nbytes]
        head = self.queues[QueueIndex.RX].add_message(bytes(spec.PcmXfer(stream_id=stream_id)), nbytes + 8,
                                                      in_cuts=cuts, indirect=indirect)
        self._writable[head, QueueIndex.RX] = self.queues[QueueIndex.RX].pending[head].writable
        return head

    def io_status(self, queue: QueueIndex, entry: UsedEntry) -> tuple[Status, int]:
        """Status and latency from the last 8 bytes of the message's writable area."""
        buffers = self._writable.pop((entry.id, queue))
        area = b"".join(self.memory.read(addr, n) for addr, n in buffers)
        status, latency = struct.unpack_from("<II", area, len(area) - 8)
        return Status(status), latency

    def writable_area(self, queue: QueueIndex, head: int) -> bytes:
        return b"".join(self.memory.read(addr, n) for addr, n in self._writable[head, queue])

    def advance(self, seconds: float) -> None:
        """Let device time pass (stream clocks tick)."""
        self.loop.advance(seconds)

    def kick(self, queue: QueueIndex) -> list[UsedEntry]:
        self.device.queue_notify(queue)
        return self.queues[queue].collect()

    def collect(self, queue: QueueIndex) -> list[UsedEntry]:
        return self.queues[queue].collect()

    def events(self) -> list[spec.Event]:
        return [spec.Event.from_buffer_copy(e.written[:8]) for e in self.collect(QueueIndex.EVENT) if e.len]

