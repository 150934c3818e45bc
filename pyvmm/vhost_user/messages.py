"""vhost-user wire format: request codes, header flags, protocol feature bits and payload structs.

Names follow QEMU's ``docs/interop/vhost-user.rst``. Every number on the wire is in the
host's native byte order (both ends share one machine), hence plain ``ctypes.Structure``.
"""

from __future__ import annotations

import ctypes
from enum import IntEnum, IntFlag


class FrontendRequest(IntEnum):
    """Requests the front end (QEMU) sends on the main socket."""

    GET_FEATURES = 1
    SET_FEATURES = 2
    SET_OWNER = 3
    RESET_OWNER = 4
    SET_MEM_TABLE = 5
    SET_LOG_BASE = 6
    SET_LOG_FD = 7
    SET_VRING_NUM = 8
    SET_VRING_ADDR = 9
    SET_VRING_BASE = 10
    GET_VRING_BASE = 11
    SET_VRING_KICK = 12
    SET_VRING_CALL = 13
    SET_VRING_ERR = 14
    GET_PROTOCOL_FEATURES = 15
    SET_PROTOCOL_FEATURES = 16
    GET_QUEUE_NUM = 17
    SET_VRING_ENABLE = 18
    SEND_RARP = 19
    NET_SET_MTU = 20
    SET_BACKEND_REQ_FD = 21
    IOTLB_MSG = 22
    SET_VRING_ENDIAN = 23
    GET_CONFIG = 24
    SET_CONFIG = 25
    CREATE_CRYPTO_SESSION = 26
    CLOSE_CRYPTO_SESSION = 27
    POSTCOPY_ADVISE = 28
    POSTCOPY_LISTEN = 29
    POSTCOPY_END = 30
    GET_INFLIGHT_FD = 31
    SET_INFLIGHT_FD = 32
    GPU_SET_SOCKET = 33
    RESET_DEVICE = 34
    VRING_KICK = 35
    GET_MAX_MEM_SLOTS = 36
    ADD_MEM_REG = 37
    REM_MEM_REG = 38
    SET_STATUS = 39
    GET_STATUS = 40
    GET_SHARED_OBJECT = 41
    SET_DEVICE_STATE_FD = 42
    CHECK_DEVICE_STATE = 43


class BackendRequest(IntEnum):
    """Requests the back end sends to the front end on the back-end channel."""

    IOTLB_MSG = 1
    CONFIG_CHANGE_MSG = 2
    VRING_HOST_NOTIFIER_MSG = 3
    VRING_CALL = 4
    VRING_ERR = 5


class ProtocolFeature(IntEnum):
    """Bit numbers of the vhost-user protocol features."""

    MQ = 0
    LOG_SHMFD = 1
    RARP = 2
    REPLY_ACK = 3
    MTU = 4
    BACKEND_REQ = 5
    CROSS_ENDIAN = 6
    CRYPTO_SESSION = 7
    PAGEFAULT = 8
    CONFIG = 9
    BACKEND_SEND_FD = 10
    HOST_NOTIFIER = 11
    INFLIGHT_SHMFD = 12
    RESET_DEVICE = 13
    INBAND_NOTIFICATIONS = 14
    CONFIGURE_MEM_SLOTS = 15
    STATUS = 16
    XEN_MMAP = 17
    SHARED_OBJECT = 18
    DEVICE_STATE = 19


def protocol_mask(*features: ProtocolFeature) -> int:
    mask = 0
    for feature in features:
        mask |= 1 << feature
    return mask


class HeaderFlags(IntFlag):
    VERSION_1 = 0x1
    REPLY = 0x4
    NEED_REPLY = 0x8


VERSION_MASK = 0x3
PROTOCOL_VERSION = 1

#: Virtio feature bit 30, reused by vhost-user to say GET/SET_PROTOCOL_FEATURES exist.
VHOST_USER_F_PROTOCOL_FEATURES = 30

#: Largest payload accepted (QEMU's biggest message we handle is the 8-region memory table).
MAX_PAYLOAD_SIZE = 0x1000
#: Most file descriptors one message may carry.
MAX_FDS = 32
#: Memory regions in one SET_MEM_TABLE message.
MEMORY_BASELINE_NREGIONS = 8
#: Memory slots offered through GET_MAX_MEM_SLOTS (CONFIGURE_MEM_SLOTS).
MAX_MEM_SLOTS = 32
#: Largest config-space access in GET_CONFIG / SET_CONFIG.
MAX_CONFIG_SIZE = 256

#: SET_VRING_KICK/CALL/ERR payload: bits 0-7 the ring index, bit 8 "no fd attached".
VRING_IDX_MASK = 0xFF
VRING_NOFD_MASK = 0x100

#: VhostUserConfig flags.
CONFIG_FLAG_WRITABLE = 0x0
CONFIG_FLAG_LIVE_MIGRATION = 0x1


class Header(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("request", ctypes.c_uint32), ("flags", ctypes.c_uint32), ("size", ctypes.c_uint32)]


HEADER_SIZE = ctypes.sizeof(Header)


class U64(ctypes.Structure):
    _fields_ = [("value", ctypes.c_uint64)]


class VringState(ctypes.Structure):
    _fields_ = [("index", ctypes.c_uint32), ("num", ctypes.c_uint32)]


class VringAddr(ctypes.Structure):
    """Ring addresses, in the front end's user-space address space (not guest-physical)."""

    _fields_ = [
        ("index", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("desc_user_addr", ctypes.c_uint64),
        ("used_user_addr", ctypes.c_uint64),
        ("avail_user_addr", ctypes.c_uint64),
        ("log_guest_addr", ctypes.c_uint64),
    ]


class MemoryRegionDesc(ctypes.Structure):
    _fields_ = [
        ("guest_phys_addr", ctypes.c_uint64),
        ("memory_size", ctypes.c_uint64),
        ("userspace_addr", ctypes.c_uint64),
        ("mmap_offset", ctypes.c_uint64),
    ]


class MemoryTableHeader(ctypes.Structure):
    """SET_MEM_TABLE payload starts with this, followed by ``nregions`` MemoryRegionDesc."""

    _fields_ = [("nregions", ctypes.c_uint32), ("padding", ctypes.c_uint32)]


class SingleMemoryRegion(ctypes.Structure):
    """ADD_MEM_REG / REM_MEM_REG payload."""

    _fields_ = [("padding", ctypes.c_uint64), ("region", MemoryRegionDesc)]


class ConfigHeader(ctypes.Structure):
    """GET_CONFIG / SET_CONFIG payload starts with this, followed by ``size`` bytes."""

    _fields_ = [("offset", ctypes.c_uint32), ("size", ctypes.c_uint32), ("flags", ctypes.c_uint32)]


#: Requests whose reply carries a body (sent whether or not NEED_REPLY is set).
REQUESTS_WITH_REPLY = frozenset({
    FrontendRequest.GET_FEATURES,
    FrontendRequest.GET_PROTOCOL_FEATURES,
    FrontendRequest.GET_VRING_BASE,
    FrontendRequest.GET_QUEUE_NUM,
    FrontendRequest.GET_CONFIG,
    FrontendRequest.GET_MAX_MEM_SLOTS,
    FrontendRequest.GET_STATUS,
})


def request_name(code: int) -> str:
    try:
        return FrontendRequest(code).name
    except ValueError:
        return f"request {code}"
