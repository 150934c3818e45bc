"""Shared rig for the hostile-guest tests: a SoundDevice (null back end) behind a real
MmioTransport on a real DeviceEventLoop, plus a log handler that catches tracebacks."""

from __future__ import annotations

import logging

from pyvmm.eventloop import DeviceEventLoop
from pyvmm.memory import GuestMemory
from pyvmm.virtio import constants as C
from pyvmm.virtio.mmio import MmioTransport
from pyvmm.virtio.testing import FakeInterrupt, GuestAllocator, MmioDriver

from pyvmm_snd import spec
from pyvmm_snd.device import SoundDevice
from pyvmm_snd.spec import QueueIndex, RequestCode, Status

RAM = 64 << 20
STATUSES = {int(s) for s in Status}


class TracebackCatcher(logging.Handler):
    """Records every ERROR-or-worse record and every record carrying a traceback, from any logger."""

    def __init__(self) -> None:
        super().__init__(level=logging.NOTSET)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.ERROR or record.exc_info:
            self.records.append(record)

    def report(self) -> str:
        return "\n".join(self.format(r) for r in self.records)


class SndRig:
    """Everything one example needs; ``close`` releases it (threads, memfd, log handler)."""

    def __init__(self) -> None:
        self.catcher = TracebackCatcher()
        logging.getLogger().addHandler(self.catcher)
        self.memory = GuestMemory.create([(0, RAM)])
        self.loop = DeviceEventLoop("hostile-snd").start()
        self.irq = FakeInterrupt()
        self.device = SoundDevice({"backend": "null"})
        self.transport = MmioTransport(self.device, self.memory, self.loop, self.irq, name="hostile-snd")
        self.drv = MmioDriver(self.transport, self.memory, GuestAllocator(self.memory, 0x10_0000, 48 << 20))

    def close(self) -> None:
        self.transport.close()
        self.loop.stop()
        self.memory.close()
        logging.getLogger().removeHandler(self.catcher)

    def settle(self) -> None:
        """Wait until the loop has run everything queued so far (kicks are fire-and-forget)."""
        self.loop.call(lambda: None, timeout=10)

    def check_healthy(self) -> None:
        assert self.loop._thread is not None and self.loop._thread.is_alive(), "device loop thread died"
        assert self.loop.running
        assert not self.catcher.records, "traceback/error logged:\n" + self.catcher.report()

    def linux_probe(self) -> None:
        """virtsnd_probe: reset, negotiate, queues, fill the event queue and kick, DRIVER_OK."""
        drv = self.drv
        drv.probe(driver_ok=False)
        for _ in range(drv.queues[QueueIndex.EVENT].size):
            drv.queues[QueueIndex.EVENT].add(writable=[8])
        drv.kick(QueueIndex.EVENT)
        drv.add_status(C.Status.DRIVER_OK)
        assert drv.status & C.Status.DRIVER_OK

    def query_ok(self) -> None:
        """One PCM_INFO query must come back OK (the device works)."""
        dq = self.drv.queues[QueueIndex.CONTROL]
        q = spec.QueryInfo(code=RequestCode.PCM_INFO, start_id=0, count=2, size=32)
        head = dq.add([bytes(q)], [4, 64])
        self.drv.kick(QueueIndex.CONTROL)
        self.settle()
        entries = dq.collect()
        assert [e.id for e in entries] == [head], entries
        assert int.from_bytes(entries[0].written[:4], "little") == Status.OK
