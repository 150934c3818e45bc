"""What the virtio spec requires of a driver on split virtqueues and the virtio-mmio transport,
as conformance rules (:mod:`pyvmm.conformance`). Sentences are quoted from virtio 1.2/1.3."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pyvmm.conformance import Rule
from pyvmm.virtio.faults import QueueFault

if TYPE_CHECKING:
    from pyvmm.events import EventSink
    from pyvmm.virtio.queue import SplitQueue

_DESC = "2.7.5 The Virtqueue Descriptor Table"
_INDIRECT = "2.7.5.3.1 Indirect Descriptors"
_AVAIL = "2.7.6 The Virtqueue Available Ring"
_FRAMING = "2.7.4 Message Framing"

QUEUE_RULES: dict[QueueFault, Rule] = {
    QueueFault.NEXT_OUT_OF_RANGE: Rule(
        "virtq.next-out-of-range", "INVALID", _DESC,
        "next: Next field if flags & NEXT (an index into the descriptor table)"),
    QueueFault.DESCRIPTOR_LOOP: Rule(
        "virtq.descriptor-loop", "MUST", _DESC,
        "Drivers MUST NOT add a descriptor chain longer than 2^32 bytes in total; this implies that loops "
        "in the descriptor chain are forbidden!"),
    QueueFault.CHAIN_TOO_LONG: Rule(
        "virtq.chain-longer-than-queue", "MUST", _INDIRECT,
        "A driver MUST NOT create a descriptor chain longer than the Queue Size of the device."),
    QueueFault.READABLE_AFTER_WRITABLE: Rule(
        "virtq.readable-after-writable", "MUST", _FRAMING,
        "The driver MUST place any device-writable descriptor elements after any device-readable "
        "descriptor elements."),
    QueueFault.INDIRECT_NOT_NEGOTIATED: Rule(
        "virtq.indirect-not-negotiated", "MUST", _INDIRECT,
        "The driver MUST NOT set the VIRTQ_DESC_F_INDIRECT flag unless the VIRTIO_F_INDIRECT_DESC feature "
        "was negotiated."),
    QueueFault.INDIRECT_WITH_NEXT: Rule(
        "virtq.indirect-with-next", "MUST", _INDIRECT,
        "A driver MUST NOT set both VIRTQ_DESC_F_INDIRECT and VIRTQ_DESC_F_NEXT in flags."),
    QueueFault.INDIRECT_NESTED: Rule(
        "virtq.indirect-nested", "MUST", _INDIRECT,
        "The driver MUST NOT set the VIRTQ_DESC_F_INDIRECT flag within an indirect descriptor (ie. only one "
        "table per descriptor)."),
    QueueFault.INDIRECT_BAD_LENGTH: Rule(
        "virtq.indirect-bad-length", "INVALID", "2.7.5.3 Indirect Descriptors",
        "The first indirect descriptor is located at start of the indirect descriptor table (index 0), "
        "additional indirect descriptors are chained by next (a table of len/16 descriptors)"),
    QueueFault.INDIRECT_OUTSIDE_RAM: Rule(
        "virtq.indirect-outside-ram", "INVALID", "2.7.5.3 Indirect Descriptors",
        "addr: Address (guest-physical) of the indirect descriptor table"),
    QueueFault.BUFFER_OUTSIDE_RAM: Rule(
        "virtq.buffer-outside-ram", "INVALID", _DESC, "addr: Address (guest-physical) of the buffer"),
    QueueFault.CHAIN_TOO_BIG: Rule(
        "virtq.chain-too-big", "MUST", _DESC,
        "Drivers MUST NOT add a descriptor chain longer than 2^32 bytes in total"),
    QueueFault.AVAIL_IDX_JUMP: Rule(
        "virtq.avail-idx-jump", "MUST", _AVAIL,
        "A driver MUST NOT decrement the available idx on a virtqueue (ie. there is no way to "
        "\"unexpose\" buffers)."),
    QueueFault.HEAD_OUT_OF_RANGE: Rule(
        "virtq.head-out-of-range", "INVALID", _AVAIL,
        "ring[]: ... refers to the head of a descriptor chain (an index below the Queue Size)"),
    QueueFault.IN_FLIGHT_EXCEEDED: Rule(
        "virtq.in-flight-exceeded", "INVALID", _AVAIL,
        "a buffer is made available once, and becomes the driver's again only when the device "
        "returns it in the used ring (the driver re-published a head the device still holds)"),
}
"""Each queue fault and the rule it breaks: a quoted MUST where the spec has a sentence for it,
``INVALID`` (with the field's definition) where the driver handed over something that cannot
be meant (an index or address outside what exists)."""

NOTIFY_BEFORE_DRIVER_OK = Rule(
    "virtio.notify-before-driver-ok", "MUST", "3.1.2 Driver Requirements: Device Initialization",
    "The driver MUST NOT send any buffer available notifications to the device before setting DRIVER_OK.")

NOTIFY_UNREADY_QUEUE = Rule(
    "mmio.notify-unready-queue", "MUST", "4.2.3.2 Virtqueue Configuration",
    "The device MUST NOT access virtqueue contents when QueueReady is zero (0x0).")


def report_queue_fault(sink: EventSink, queue: SplitQueue, kind: QueueFault, detail: str) -> None:
    """A transport's ``SplitQueue.on_fault`` hook: trace the fault and report the rule it breaks."""
    sink.trace("queue", "fault", queue=queue.index, fault=kind.name, section=kind.section, detail=detail)
    sink.violation(QUEUE_RULES[kind], detail, queue=queue.index, fault=kind.name)
