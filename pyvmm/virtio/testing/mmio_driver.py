"""The Linux virtio_mmio probe sequence, as a test helper."""

from __future__ import annotations

from typing import Sequence

from pyvmm.memory import GuestMemory
from pyvmm.virtio import constants as C
from pyvmm.virtio.testing.driver import DriverQueue, GuestAllocator

class ProbeError(RuntimeError):
    """The device did not behave like a virtio-mmio v2 device during the probe."""


class MmioDriver:
    """Talks to an :class:`~pyvmm.virtio.mmio.MmioTransport` with 32-bit register accesses,
    in the order Linux's virtio_mmio + virtio core use (virtio_mmio_probe, virtio_dev_probe,
    vm_find_vqs, virtio_device_ready)."""

    def __init__(self, transport, memory: GuestMemory, allocator: GuestAllocator):
        self.transport = transport
        self.memory = memory
        self.alloc = allocator
        self.features = 0
        self.queues: list[DriverQueue] = []
        self.config_changes = 0

    def read32(self, reg: int) -> int:
        return int.from_bytes(self.transport.read(reg, 4), "little")

    def write32(self, reg: int, value: int) -> None:
        self.transport.write(reg, (value & 0xFFFFFFFF).to_bytes(4, "little"))

    @property
    def status(self) -> int:
        return self.read32(C.MmioReg.STATUS)

    def add_status(self, bits: int) -> int:
        self.write32(C.MmioReg.STATUS, self.status | bits)
        return self.status

    def reset(self) -> None:
        self.write32(C.MmioReg.STATUS, 0)
        if self.status != 0:
            raise ProbeError(f"status reads {self.status:#x} after reset")
        self.queues = []

    def device_features(self) -> int:
        features = 0
        for sel in (0, 1):
            self.write32(C.MmioReg.DEVICE_FEATURES_SEL, sel)
            features |= self.read32(C.MmioReg.DEVICE_FEATURES) << (32 * sel)
        return features

    def write_driver_features(self, features: int) -> None:
        for sel in (0, 1):
            self.write32(C.MmioReg.DRIVER_FEATURES_SEL, sel)
            self.write32(C.MmioReg.DRIVER_FEATURES, features >> (32 * sel))

    def probe(self, wanted_features: int | None = None, queue_sizes: Sequence[int] | None = None,
              driver_ok: bool = True) -> list[DriverQueue]:
        """Identify, reset, negotiate (``wanted_features`` & offered; all offered if None),
        set up every queue (``queue_sizes[i]`` entries, default QueueNumMax) and set DRIVER_OK."""
        if self.read32(C.MmioReg.MAGIC_VALUE) != C.MMIO_MAGIC_VALUE:
            raise ProbeError("bad magic value")
        if self.read32(C.MmioReg.VERSION) != 2:
            raise ProbeError(f"version {self.read32(C.MmioReg.VERSION)}, expected 2")
        if self.read32(C.MmioReg.DEVICE_ID) == 0:
            raise ProbeError("device id 0 (placeholder)")
        self.reset()
        self.add_status(C.Status.ACKNOWLEDGE)
        self.add_status(C.Status.DRIVER)
        offered = self.device_features()
        self.features = offered if wanted_features is None else offered & wanted_features
        self.write_driver_features(self.features)
        if not self.add_status(C.Status.FEATURES_OK) & C.Status.FEATURES_OK:
            self.add_status(C.Status.FAILED)
            raise ProbeError("device refused FEATURES_OK")
        event_idx = bool(self.features & C.bit(C.RING_EVENT_IDX))
        index = 0
        while True:
            self.write32(C.MmioReg.QUEUE_SEL, index)
            size_max = self.read32(C.MmioReg.QUEUE_NUM_MAX)
            if size_max == 0:
                break
            if self.read32(C.MmioReg.QUEUE_READY):
                raise ProbeError(f"queue {index} already ready after reset")
            size = queue_sizes[index] if queue_sizes and index < len(queue_sizes) else size_max
            dq = DriverQueue(self.memory, self.alloc, size, event_idx=event_idx)
            self.setup_queue(index, dq)
            self.queues.append(dq)
            index += 1
        if driver_ok:
            self.add_status(C.Status.DRIVER_OK)
        return self.queues

    def setup_queue(self, index: int, dq: DriverQueue, ready: bool = True) -> None:
        R = C.MmioReg
        self.write32(R.QUEUE_SEL, index)
        self.write32(R.QUEUE_NUM, dq.size)
        for low, addr in ((R.QUEUE_DESC_LOW, dq.desc_table), (R.QUEUE_DRIVER_LOW, dq.avail_ring),
                          (R.QUEUE_DEVICE_LOW, dq.used_ring)):
            self.write32(low, addr)
            self.write32(low + 4, addr >> 32)
        if ready:
            self.write32(R.QUEUE_READY, 1)

    def kick(self, index: int) -> None:
        self.write32(C.MmioReg.QUEUE_NOTIFY, index)

    def ack_interrupt(self) -> int:
        """What vm_interrupt does: read InterruptStatus and acknowledge exactly those bits."""
        status = self.read32(C.MmioReg.INTERRUPT_STATUS)
        self.write32(C.MmioReg.INTERRUPT_ACK, status)
        return status

    def handle_interrupt(self) -> dict[int, list]:
        """Linux's vm_interrupt: acknowledge, then (for a used-buffer interrupt) collect every
        queue. Returns ``{queue index: [UsedEntry, ...]}`` for queues that had entries; a
        configuration change is counted in ``config_changes``."""
        status = self.ack_interrupt()
        if status & C.MMIO_INT_CONFIG:
            self.config_changes += 1
        used = {}
        if status & C.MMIO_INT_VRING:
            for i, dq in enumerate(self.queues):
                entries = dq.collect()
                if entries:
                    used[i] = entries
        return used

    def read_config(self, offset: int, size: int) -> bytes:
        return self.transport.read(C.MmioReg.CONFIG + offset, size)
