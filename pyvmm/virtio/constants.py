"""Generic virtio constants (spec 1.2/1.3): device status, transport feature bits, split-ring
flags and the virtio-mmio register map. Device-type constants live with each device.
"""

from __future__ import annotations

import enum

# -- device status (spec 2.1) ----------------------------------------------------------


class Status(enum.IntFlag):
    ACKNOWLEDGE = 1
    DRIVER = 2
    DRIVER_OK = 4
    FEATURES_OK = 8
    DEVICE_NEEDS_RESET = 0x40
    FAILED = 0x80


# -- reserved (transport) feature bits (spec 6) --------------------------------------------

F_NOTIFY_ON_EMPTY = 24
F_ANY_LAYOUT = 27
RING_INDIRECT_DESC = 28
RING_EVENT_IDX = 29
VERSION_1 = 32
F_ACCESS_PLATFORM = 33
RING_PACKED = 34
F_IN_ORDER = 35
F_ORDER_PLATFORM = 36
F_SR_IOV = 37
F_NOTIFICATION_DATA = 38
F_NOTIF_CONFIG_DATA = 39
F_RING_RESET = 40

#: Bits 0-23 (and 50-127) belong to the device type; the rest are the transport's.
DEVICE_FEATURE_MASK = (1 << 24) - 1


def bit(n: int) -> int:
    return 1 << n


# -- split virtqueue (spec 2.7) -----------------------------------------------------------

VIRTQ_DESC_F_NEXT = 1
VIRTQ_DESC_F_WRITE = 2
VIRTQ_DESC_F_INDIRECT = 4

VIRTQ_AVAIL_F_NO_INTERRUPT = 1
VIRTQ_USED_F_NO_NOTIFY = 1

DESC_SIZE = 16
"""struct virtq_desc: le64 addr, le32 len, le16 flags, le16 next."""
USED_ELEM_SIZE = 8
"""struct virtq_used_elem: le32 id, le32 len."""

DESC_TABLE_ALIGN = 16
AVAIL_RING_ALIGN = 2
USED_RING_ALIGN = 4
MAX_QUEUE_SIZE = 32768


def desc_table_size(queue_size: int) -> int:
    return DESC_SIZE * queue_size


def avail_ring_size(queue_size: int, event_idx: bool) -> int:
    """flags, idx, ring[queue_size] and (with EVENT_IDX) used_event, all le16."""
    return 2 * (2 + queue_size + (1 if event_idx else 0))


def used_ring_size(queue_size: int, event_idx: bool) -> int:
    """flags, idx (le16), ring[queue_size] of virtq_used_elem and (with EVENT_IDX) avail_event."""
    return 4 + USED_ELEM_SIZE * queue_size + (2 if event_idx else 0)


# -- virtio over MMIO (spec 4.2.2) --------------------------------------------------------

MMIO_MAGIC_VALUE = 0x74726976  # "virt" little-endian
MMIO_VERSION = 2  # modern (non-legacy) interface
MMIO_VENDOR_ID = 0x554D4551  # "QEMU", what Linux guests are used to seeing
MMIO_REGION_SIZE = 0x1000
"""Size to reserve in the guest address map (and to give ``virtio_mmio.device=``)."""


class MmioReg(enum.IntEnum):
    MAGIC_VALUE = 0x000
    VERSION = 0x004
    DEVICE_ID = 0x008
    VENDOR_ID = 0x00C
    DEVICE_FEATURES = 0x010
    DEVICE_FEATURES_SEL = 0x014
    DRIVER_FEATURES = 0x020
    DRIVER_FEATURES_SEL = 0x024
    QUEUE_SEL = 0x030
    QUEUE_NUM_MAX = 0x034
    QUEUE_NUM = 0x038
    QUEUE_READY = 0x044
    QUEUE_NOTIFY = 0x050
    INTERRUPT_STATUS = 0x060
    INTERRUPT_ACK = 0x064
    STATUS = 0x070
    QUEUE_DESC_LOW = 0x080
    QUEUE_DESC_HIGH = 0x084
    QUEUE_DRIVER_LOW = 0x090
    QUEUE_DRIVER_HIGH = 0x094
    QUEUE_DEVICE_LOW = 0x0A0
    QUEUE_DEVICE_HIGH = 0x0A4
    SHM_SEL = 0x0AC
    SHM_LEN_LOW = 0x0B0
    SHM_LEN_HIGH = 0x0B4
    SHM_BASE_LOW = 0x0B8
    SHM_BASE_HIGH = 0x0BC
    QUEUE_RESET = 0x0C0
    CONFIG_GENERATION = 0x0FC
    CONFIG = 0x100


MMIO_INT_VRING = 1
"""InterruptStatus bit 0: used buffers were added to a queue."""
MMIO_INT_CONFIG = 2
"""InterruptStatus bit 1: the configuration changed (or the device needs a reset)."""
