"""Shared rig for the hostile-guest tests: a SoundDevice (playback discarded, capture from the
tone generator) behind a real MmioTransport on a real DeviceEventLoop, a log handler that
catches tracebacks, and the resource meter: peak memory and device-loop latency.

This process is the device process: the loop thread, the device and guest RAM all live
here. Memory is measured as *anonymous* RSS (guest RAM is shared memory and the driver
model touches as much of it as it likes): the peak since the example began (``VmHWM``,
reset through ``/proc/self/clear_refs``) minus shared and file-backed pages, against the
anonymous RSS when the example's rig was built.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass

from pyvmm.eventloop import DeviceEventLoop
from pyvmm.memory import GuestMemory
from pyvmm.virtio import constants as C
from pyvmm.virtio.mmio import MmioTransport
from pyvmm.virtio.testing import FakeInterrupt, GuestAllocator, MmioDriver, Pending
from pyvmm.virtio.testing.driver import F_NEXT, F_WRITE

from pyvmm_snd import spec
from pyvmm_snd.device import SoundDevice
from pyvmm_snd.spec import QueueIndex, RequestCode, Status

RAM = 64 << 20
STATUSES = {int(s) for s in Status}

RSS_BUDGET = 64 << 20
"""Anonymous memory the device process may grow by, whatever the guest does."""
LOOP_LATENCY_LIMIT = 10.0
"""Seconds the device loop may take to answer after a guest step (generous: the machines
here are shared and a niced fuzz run waits for a core; the figures measured, wall time and
the loop thread's own CPU time per step, are in the README)."""
BIG_REGION = 8 << 20
"""One guest buffer that hostile chains name many times over (a small guest, huge messages)."""


def _status_kib(*keys: str) -> dict[str, int]:
    text = open("/proc/self/status").read()
    return {k: int(re.search(rf"^{k}:\s+(\d+) kB", text, re.M).group(1)) for k in keys}


def anon_rss() -> int:
    return _status_kib("RssAnon")["RssAnon"] << 10


def reset_peak_rss() -> None:
    """Start a new VmHWM period (Linux >= 4.0); harmless where not permitted."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def peak_anon_rss() -> int:
    """Anonymous RSS at its peak since :func:`reset_peak_rss` (shared/file pages only grow
    within an example, so subtracting today's counts under-estimates nothing)."""
    kib = _status_kib("VmHWM", "RssShmem", "RssFile")
    return (kib["VmHWM"] - kib["RssShmem"] - kib["RssFile"]) << 10


@dataclass
class ResourceStats:
    """Figures over every example run in this process (scripts/fuzz prints them)."""

    examples: int = 0
    checks: int = 0
    worst_latency: float = 0.0
    """Wall seconds from the end of a guest step until the loop answered (includes waiting for a core)."""
    worst_step_cpu: float = 0.0
    """CPU seconds the device loop thread spent on one guest step (independent of machine load)."""
    peak_growth: int = 0
    """Largest anonymous-RSS growth above an example's idle size, in bytes."""
    peak_rss: int = 0
    """Largest VmHWM seen (the whole process, shared memory included), in bytes."""


STATS = ResourceStats()


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
        self.device = SoundDevice({"playback.backend": "null", "capture.backend": "tone"})
        self.transport = MmioTransport(self.device, self.memory, self.loop, self.irq, name="hostile-snd")
        self.drv = MmioDriver(self.transport, self.memory, GuestAllocator(self.memory, 0x10_0000, 40 << 20))
        self.big_region = 0x10_0000 + (40 << 20)
        """BIG_REGION bytes of guest RAM outside the allocator's range."""
        STATS.examples += 1
        self.idle_anon = anon_rss()
        reset_peak_rss()
        self._loop_cpu_clock = time.pthread_getcpuclockid(self.loop._thread.ident)
        self._loop_cpu = time.clock_gettime(self._loop_cpu_clock)

    def close(self) -> None:
        self.transport.close()
        self.loop.stop()
        self.memory.close()
        logging.getLogger().removeHandler(self.catcher)

    def settle(self) -> float:
        """Wait until the loop has run everything queued so far (kicks are fire-and-forget);
        returns how long that took."""
        start = time.monotonic()
        self.loop.call(lambda: None, timeout=30)
        return time.monotonic() - start

    def check_resources(self) -> None:
        """The device loop answered the last step in bounded time and memory stayed in budget."""
        latency = self.settle()
        growth = peak_anon_rss() - self.idle_anon
        cpu, self._loop_cpu = self._loop_cpu, time.clock_gettime(self._loop_cpu_clock)
        STATS.checks += 1
        STATS.worst_latency = max(STATS.worst_latency, latency)
        STATS.worst_step_cpu = max(STATS.worst_step_cpu, self._loop_cpu - cpu)
        STATS.peak_growth = max(STATS.peak_growth, growth)
        STATS.peak_rss = max(STATS.peak_rss, _status_kib("VmHWM")["VmHWM"] << 10)
        assert latency < LOOP_LATENCY_LIMIT, f"device loop took {latency:.2f} s to answer"
        assert growth < RSS_BUDGET, f"anonymous RSS grew by {growth >> 20} MiB (budget {RSS_BUDGET >> 20} MiB)"

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
        if len(dq.free) < 3:
            return  # the model's descriptors are tied up in garbage chains the device rightly never answered
        q = spec.QueryInfo(code=RequestCode.PCM_INFO, start_id=0, count=2, size=32)
        head = dq.add([bytes(q)], [4, 64])
        self.drv.kick(QueueIndex.CONTROL)
        self.settle()
        entries = dq.collect()
        assert [e.id for e in entries] == [head], entries
        assert int.from_bytes(entries[0].written[:4], "little") == Status.OK

    def repeated_chain(self, queue: int, header: bytes, times: int, length: int, tx: bool) -> int | None:
        """One chain: ``header`` readable, then ``times`` descriptors of ``length`` bytes all naming
        the big region (readable for tx, writable otherwise), then an 8-byte status. The model only
        records the status buffer as writable, so collecting the answer reads 8 bytes, not gigabytes."""
        dq = self.drv.queues[queue]
        if len(dq.free) < times + 2:
            return None
        parts = [(dq.buffer(header), len(header), 0)]
        parts += [(self.big_region, length, 0 if tx else F_WRITE)] * times
        status = dq.buffer(8)
        parts.append((status, 8, F_WRITE))
        ids = dq._take(len(parts))
        for i, (addr, n, flags) in enumerate(parts):
            more = F_NEXT if i + 1 < len(parts) else 0
            dq.write_desc(ids[i], addr, n, flags | more, ids[i + 1] if more else 0)
        # a control reply starts at the first writable byte (the big region); an I/O status is last
        recorded = (self.big_region, min(length, 8)) if queue == QueueIndex.CONTROL else (status, 8)
        dq.pending[ids[0]] = Pending(ids[0], ids, writable=[recorded])
        dq.publish(ids[0])
        return ids[0]
