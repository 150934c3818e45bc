"""The JSON-lines trace format (``--trace-file``): one object per line, one schema.

Every record has ``t`` (seconds since the VM started, monotonic clock), ``dev`` (``snd0``),
``cat`` and ``kind``; the rest depends on ``cat``/``kind`` and is listed in :data:`KINDS`
(fields a record of that kind always has). Extra fields may appear; readers ignore what they
do not know. :data:`SCHEMA` is the same as a JSON Schema (draft 2020-12) for other tools.
"""

from __future__ import annotations

from typing import Any

from pyvmm.trace.tracer import CATEGORIES

KINDS: dict[tuple[str, str], dict[str, str]] = {
    # control queue: one record per request, with its response
    ("ctl", "request"): {"code": "string", "desc": "string", "status": "string"},
    # I/O messages: the device took a message from the tx/rx queue ...
    ("io", "queued"): {"stream": "integer", "dir": "string", "bytes": "integer", "queue": "integer",
                       "head": "integer", "descs": "array"},
    # ... and returned it (status OK/IO_ERR/BAD_MSG; queued_t: when it was queued; deadline_t: when
    # the period clock meant to complete it, null without a real-time clock; late_ms: t - deadline_t)
    ("io", "complete"): {"stream": "integer", "dir": "string", "bytes": "integer", "status": "string",
                         "latency_bytes": "integer", "queued_t": "number"},
    # I/O message the device refused at once (wrong size, stream, state, too many in flight)
    ("io", "reject"): {"stream": "integer", "status": "string", "reason": "string"},
    # a period with no driver buffer (playback underrun / capture overrun)
    ("io", "xrun"): {"stream": "integer", "dir": "string"},
    # event queue: an event given to the driver, or held for lack of a buffer
    ("evt", "sent"): {"desc": "string"},
    ("evt", "held"): {"desc": "string"},
    ("evt", "dropped"): {"desc": "string"},
    # transport: driver notifications, ring faults, interrupts, register accesses
    ("queue", "notify"): {"queue": "integer", "avail_idx": "integer", "next_avail": "integer", "in_flight": "integer"},
    ("queue", "fault"): {"queue": "integer", "fault": "string", "section": "string", "detail": "string"},
    # interrupts (virtio-mmio: ``status`` = the InterruptStatus bits; vhost-user: ``queue`` called)
    ("irq", "used"): {},
    ("irq", "config"): {},
    ("mmio", "read"): {"reg": "string", "value": "integer"},
    ("mmio", "write"): {"reg": "string", "value": "integer"},
    # a fault injected from the monitor or QMP (``what``: late, stall, burst, status, needs_reset, drop_event ...)
    ("fault", "inject"): {"what": "string"},
    ("fault", "fire"): {"what": "string"},
    # the driver broke a rule of the spec (level MUST/SHOULD/INVALID/LIFECYCLE; see pyvmm.conformance)
    ("spec", "violation"): {"rule": "string", "level": "string", "section": "string", "detail": "string"},
}

SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "pyvmm device trace record",
    "type": "object",
    "required": ["t", "dev", "cat", "kind"],
    "properties": {
        "t": {"type": "number", "minimum": 0},
        "dev": {"type": "string"},
        "cat": {"enum": list(CATEGORIES)},
        "kind": {"type": "string"},
    },
    "allOf": [
        {
            "if": {"properties": {"cat": {"const": cat}, "kind": {"const": kind}}, "required": ["cat", "kind"]},
            "then": {"required": list(fields), "properties": {k: {"type": v} for k, v in fields.items()}},
        }
        for (cat, kind), fields in KINDS.items()
    ],
}
