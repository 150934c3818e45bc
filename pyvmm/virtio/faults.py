"""What a driver can get wrong on a split virtqueue: one name per rule the device checks.

Every check on driver-written ring and descriptor data lives in :mod:`pyvmm.virtio.descriptors`
(one chain) and :mod:`pyvmm.virtio.queue` (the rings); each failure carries one of these
kinds, and :meth:`SplitQueue._fault <pyvmm.virtio.queue.SplitQueue>` is the one place they
are reported (log line, ``on_fault`` hook for tracers and spec checkers). A *chain* fault
costs the driver that chain (returned with length 0); a *ring* fault stops the queue until
the driver resets the device (DEVICE_NEEDS_RESET), because the ring itself can no longer be
trusted or answered through.
"""

from __future__ import annotations

import enum


class QueueFault(enum.Enum):
    """A driver error on a split virtqueue: what is wrong, and the virtio 1.2 section it breaks."""

    # -- one malformed chain (returned to the driver with length 0; the queue carries on) --
    NEXT_OUT_OF_RANGE = ("a next index is outside the descriptor or indirect table", "2.7.5.2")
    DESCRIPTOR_LOOP = ("a descriptor is visited twice while walking the chain", "2.7.5.2")
    CHAIN_TOO_LONG = ("more descriptors than the queue size (indirect ones included)", "2.7.5.3.1")
    READABLE_AFTER_WRITABLE = ("a device-readable descriptor follows a device-writable one", "2.7.5.2")
    INDIRECT_NOT_NEGOTIATED = ("VIRTQ_DESC_F_INDIRECT without VIRTIO_F_INDIRECT_DESC", "2.7.5.3.1")
    INDIRECT_WITH_NEXT = ("an indirect descriptor that also has VIRTQ_DESC_F_NEXT", "2.7.5.3.1")
    INDIRECT_NESTED = ("an indirect descriptor inside an indirect table", "2.7.5.3.1")
    INDIRECT_BAD_LENGTH = ("an indirect table length that is zero or not a multiple of 16", "2.7.5.3.1")
    INDIRECT_OUTSIDE_RAM = ("an indirect table that is not in guest RAM", "2.7.5.3")
    BUFFER_OUTSIDE_RAM = ("a buffer that is not in guest RAM (or overflows 64 bits)", "2.7.5")
    CHAIN_TOO_BIG = ("a readable or writable part of 2^32 bytes or more (used length is 32-bit)", "2.7.5")

    # -- the ring itself (the queue stops until the driver resets the device) --
    AVAIL_IDX_JUMP = ("the avail idx is more than the queue size ahead of the device", "2.7.13.3")
    HEAD_OUT_OF_RANGE = ("an avail ring entry names a descriptor >= the queue size", "2.7.13.3")
    IN_FLIGHT_EXCEEDED = ("more chains in flight than the queue size: the driver re-published "
                          "buffers the device still holds (QEMU: 'Virtqueue size exceeded')", "2.7.13.3")

    @property
    def breaks_ring(self) -> bool:
        """True for faults after which the queue cannot be served until reset."""
        return self in _RING_FAULTS

    @property
    def description(self) -> str:
        return self.value[0]

    @property
    def section(self) -> str:
        return self.value[1]


_RING_FAULTS = frozenset({QueueFault.AVAIL_IDX_JUMP, QueueFault.HEAD_OUT_OF_RANGE,
                          QueueFault.IN_FLIGHT_EXCEEDED})
