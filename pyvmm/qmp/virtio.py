"""Virtio introspection for QMP, in the spirit of QEMU's ``x-query-virtio*`` commands.

Read-only views of a device's transport (status, features, queues) and of one descriptor
chain, taken straight from the rings in guest memory. They run on the device event loop (the
queues' owner), so the indexes they report are a consistent snapshot. A chain is decoded
without trusting it: every step is bounded by the queue size, an indirect table by its own
length, and a malformed chain is shown up to the fault with ``error`` saying what is wrong,
never raised.

Devices are named as in the monitor (``snd0``); QEMU's ``path`` argument takes that name.
Transports are duck-typed like the monitor's ``info devices`` (``status``,
``offered_features``, ``driver_features``, ``queues``), so the MMIO transport and the
vhost-user back end look the same.
"""

from __future__ import annotations

import struct
from typing import Any

from pyvmm.errors import GuestMemoryError
from pyvmm.qmp.protocol import DEVICE_NOT_ACTIVE, DEVICE_NOT_FOUND, QmpError
from pyvmm.virtio import constants as C

_DESC = struct.Struct("<QIHH")
MAX_INDIRECT_DESCRIPTORS = 4096
"""An indirect table longer than this is shown truncated (a chain has at most queue-size
descriptors anyway, spec 2.7.5.3.1)."""

_STATUS_NAMES = [(C.Status.ACKNOWLEDGE, "VIRTIO_CONFIG_S_ACKNOWLEDGE"), (C.Status.DRIVER, "VIRTIO_CONFIG_S_DRIVER"),
                 (C.Status.FEATURES_OK, "VIRTIO_CONFIG_S_FEATURES_OK"),
                 (C.Status.DRIVER_OK, "VIRTIO_CONFIG_S_DRIVER_OK"),
                 (C.Status.DEVICE_NEEDS_RESET, "VIRTIO_CONFIG_S_NEEDS_RESET"),
                 (C.Status.FAILED, "VIRTIO_CONFIG_S_FAILED")]
_TRANSPORT_FEATURES = {
    C.F_NOTIFY_ON_EMPTY: "VIRTIO_F_NOTIFY_ON_EMPTY", C.F_ANY_LAYOUT: "VIRTIO_F_ANY_LAYOUT",
    C.RING_INDIRECT_DESC: "VIRTIO_RING_F_INDIRECT_DESC", C.RING_EVENT_IDX: "VIRTIO_RING_F_EVENT_IDX",
    C.VERSION_1: "VIRTIO_F_VERSION_1", C.F_ACCESS_PLATFORM: "VIRTIO_F_ACCESS_PLATFORM",
    C.RING_PACKED: "VIRTIO_F_RING_PACKED", C.F_IN_ORDER: "VIRTIO_F_IN_ORDER",
    C.F_ORDER_PLATFORM: "VIRTIO_F_ORDER_PLATFORM", C.F_SR_IOV: "VIRTIO_F_SR_IOV",
    C.F_NOTIFICATION_DATA: "VIRTIO_F_NOTIFICATION_DATA", C.F_NOTIF_CONFIG_DATA: "VIRTIO_F_NOTIF_CONFIG_DATA",
    C.F_RING_RESET: "VIRTIO_F_RING_RESET",
}
_DESC_FLAGS = [(C.VIRTQ_DESC_F_NEXT, "next"), (C.VIRTQ_DESC_F_WRITE, "write"), (C.VIRTQ_DESC_F_INDIRECT, "indirect")]


def device_list(devices: list) -> list[dict[str, Any]]:
    """``x-query-virtio``: one entry per virtio device."""
    return [{"path": dev.name, "name": _type_name(dev)} for dev in devices]


def device_status(dev) -> dict[str, Any]:
    """``x-query-virtio-status``: status bits, offered and negotiated features, queues."""
    transport = dev.transport
    status = getattr(transport, "status", 0) or 0
    queues = list(getattr(transport, "queues", []))
    offered = getattr(transport, "offered_features", None)
    negotiated = getattr(transport, "driver_features", None)
    feature_names = getattr(dev.device, "feature_names", {}) or {}
    return {
        "name": _type_name(dev),
        "device-id": int(getattr(dev.device, "device_type", 0)),
        "transport": getattr(transport, "name", type(transport).__name__),
        "status": _decode_status(status),
        "host-features": _decode_features(offered or 0, feature_names),
        "guest-features": _decode_features(negotiated or 0, feature_names),
        "num-vqs": len(queues) or len(getattr(dev.device, "queue_max_sizes", ())),
        "started": bool(status & C.Status.DRIVER_OK) or any(getattr(q, "ready", False) for q in queues),
        "broken": any(getattr(q, "broken", False) for q in queues),
    }


def queue_status(dev, index: int) -> dict[str, Any]:
    """``x-query-virtio-queue-status``: ring addresses and indexes of queue ``index``."""
    q = _queue(dev, index)
    result: dict[str, Any] = {
        "name": _type_name(dev), "queue-index": index, "ready": bool(q.ready), "broken": bool(q.broken),
        "vring-num": q.size, "vring-num-default": q.max_size,
        "vring-desc": q.desc_table, "vring-avail": q.avail_ring, "vring-used": q.used_ring,
        "event-idx": bool(q.event_idx), "indirect-desc": bool(q.indirect),
        "last-avail-idx": q.next_avail, "used-idx": q.next_used,
    }
    if q.ready:
        try:
            result["shadow-avail-idx"] = q.avail_idx()
            result["pending"] = q.pending()
        except (GuestMemoryError, TypeError, IndexError):
            pass
    in_flight = getattr(q, "in_flight", None)
    result["inuse"] = in_flight if isinstance(in_flight, int) else (q.next_avail - q.next_used) & 0xFFFF
    return result


def queue_element(dev, index: int, position: int | None = None, head: int | None = None) -> dict[str, Any]:
    """``x-query-virtio-queue-element``: decode the chain at avail ring ``position`` (default:
    the next one the device will take) or starting at descriptor ``head``."""
    q = _queue(dev, index)
    if not q.ready:
        raise QmpError(f"{dev.name} queue {index} is not ready", DEVICE_NOT_ACTIVE)
    memory = q.memory
    avail = memory.read(q.avail_ring, 4)
    avail_flags, avail_idx = struct.unpack("<HH", avail)
    used_flags, used_idx = struct.unpack("<HH", memory.read(q.used_ring, 4))
    if head is None:
        position = q.next_avail if position is None else position & 0xFFFF
        head = struct.unpack("<H", memory.read(q.avail_ring + 4 + 2 * (position % q.size), 2))[0]
    elif not 0 <= head < 0x10000:
        raise QmpError(f"head {head} is not a 16-bit descriptor index")
    descs, error = decode_chain(memory, q.desc_table, q.size, head, q.indirect)
    result: dict[str, Any] = {
        "name": _type_name(dev), "index": head, "descs": descs,
        "avail": {"flags": avail_flags, "idx": avail_idx, "ring": head},
        "used": {"flags": used_flags, "idx": used_idx},
    }
    if position is not None:
        result["avail-position"] = position
    if error:
        result["error"] = error
    return result


def decode_chain(memory, desc_table: int, size: int, head: int, indirect_ok: bool
                 ) -> tuple[list[dict[str, Any]], str | None]:
    """The descriptors of the chain at ``head`` (bounded, never raising): list, error or None."""
    descs: list[dict[str, Any]] = []
    table, table_len, index, seen = desc_table, size, head, set()
    in_indirect = False
    while True:
        if not 0 <= index < table_len:
            return descs, f"descriptor index {index} outside the {'indirect table' if in_indirect else 'ring'} " \
                          f"of {table_len}"
        if (in_indirect, index) in seen:
            return descs, f"descriptor {index} visited twice (loop)"
        if len(descs) >= size + 1:
            return descs, f"chain longer than the queue size {size}"
        seen.add((in_indirect, index))
        try:
            addr, length, flags, nxt = _DESC.unpack(memory.read(table + index * C.DESC_SIZE, C.DESC_SIZE))
        except GuestMemoryError as exc:
            return descs, f"descriptor table not in guest RAM: {exc}"
        entry = {"index": index, "addr": addr, "len": length,
                 "flags": [name for bit, name in _DESC_FLAGS if flags & bit]}
        if in_indirect:
            entry["in-indirect"] = True
        descs.append(entry)
        if flags & C.VIRTQ_DESC_F_INDIRECT:
            if in_indirect:
                return descs, "indirect descriptor inside an indirect table"
            if not indirect_ok:
                return descs, "indirect descriptor but VIRTIO_RING_F_INDIRECT_DESC not negotiated"
            if length == 0 or length % C.DESC_SIZE:
                return descs, f"indirect table length {length} is not a non-zero multiple of {C.DESC_SIZE}"
            table, table_len, index, in_indirect = addr, min(length // C.DESC_SIZE, MAX_INDIRECT_DESCRIPTORS), 0, True
            continue
        if not flags & C.VIRTQ_DESC_F_NEXT:
            return descs, None
        index = nxt


def _queue(dev, index: int):
    queues = list(getattr(dev.transport, "queues", []))
    if not queues:
        raise QmpError(f"{dev.name} has no queues set up (the driver has not started it)", DEVICE_NOT_ACTIVE)
    if not 0 <= index < len(queues):
        raise QmpError(f"{dev.name} has no queue {index} ({len(queues)} queues)")
    return queues[index]


def find_device(devices: list, path: str):
    for dev in devices:
        if path == dev.name:
            return dev
    raise QmpError(f"no virtio device {path!r} (x-query-virtio lists them)", DEVICE_NOT_FOUND)


def _type_name(dev) -> str:
    return f"virtio-{dev.name.rstrip('0123456789')}"


def _decode_status(status: int) -> dict[str, Any]:
    names = [name for bit, name in _STATUS_NAMES if status & bit]
    known = sum(int(bit) for bit, _ in _STATUS_NAMES)
    return {"statuses": names, "unknown-statuses": status & ~known & 0xFF, "value": status}


def _decode_features(features: int, device_names: dict[int, str]) -> dict[str, Any]:
    transports, dev_features, unknown = [], [], 0
    for n in range(64):
        if not features >> n & 1:
            continue
        if n in _TRANSPORT_FEATURES:
            transports.append(_TRANSPORT_FEATURES[n])
        elif n in device_names:
            dev_features.append(device_names[n])
        else:
            unknown |= 1 << n
    return {"transports": transports, "dev-features": dev_features, "unknown-dev-features": unknown,
            "value": features}
