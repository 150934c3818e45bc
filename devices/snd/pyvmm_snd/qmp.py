"""QMP commands of the sound device, with QEMU's vendor prefix (``x-pyvmm-snd-...``).

* ``x-pyvmm-snd-query-streams``: every stream's state, parameters, held messages (their
  descriptor heads, for ``x-query-virtio-queue-element``), counters and clock; the jacks; the
  event buffers the driver posted and the events waiting for one.
* ``x-pyvmm-snd-inject {"type": ...}``: the monitor's fault injections as one command:
  ``jack`` (``jack``, ``connected``), ``xrun`` (``stream``), ``ctl`` (``control``,
  ``values``), ``fail`` (``stream``, ``count``, ``status``: ``io-err`` | ``bad-msg``), and the
  timing faults of :mod:`pyvmm_snd.faults`: ``late`` (``stream``, ``count``, ``ms``), ``stall``
  (``stream``, ``ms``), ``burst`` (``stream``, ``count``), ``needs-reset`` (now, or with
  ``stream`` and ``count`` after that many messages), ``drop-event`` (``count``, default 1);
  and the control queue's (:mod:`pyvmm_snd.ctlfaults`): ``ctl-fail`` (``count``, ``status``:
  ``io-err`` | ``bad-msg`` | ``not-supp``, ``request``), ``ctl-late`` (``count``, ``ms``,
  ``request``), ``request`` optional (``jack-info``, ``pcm-set-params``, ...).

Both run on the device event loop (:meth:`pyvmm.virtio.device.VirtioDevice.qmp_commands`);
a bad argument raises ValueError, which QMP reports as a ``GenericError``. What happens is
also published as events (``SND_JACK_CHANGED``, ``SND_PCM_XRUN``, ``SND_CTL_CHANGED``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from pyvmm_snd import ctlfaults, faults
from pyvmm_snd.faults import MAX_COUNT
from pyvmm_snd.spec import Status

if TYPE_CHECKING:
    from pyvmm_snd.device import SoundDevice

FAIL_STATUSES = {"io-err": Status.IO_ERR, "bad-msg": Status.BAD_MSG}
CTL_FAIL_STATUSES = {**FAIL_STATUSES, "not-supp": Status.NOT_SUPP}
INJECT_TYPES = ("jack", "xrun", "ctl", "fail", "late", "stall", "burst", "needs-reset", "drop-event",
                "ctl-fail", "ctl-late")


def commands(device: SoundDevice) -> dict[str, Callable[[dict[str, Any]], Any]]:
    def query_streams(arguments: dict[str, Any]) -> dict[str, Any]:
        """x-pyvmm-snd-query-streams: streams (state, parameters, counters, clock) and jacks"""
        _only(arguments, set())
        return {
            "driver-active": device.ctx is not None,
            "paused": device.paused,
            "backend": device.backend,
            "clock": device.host_audio.clock,
            "streams": [_stream_info(device, stream) for stream in device.streams],
            "jacks": [{"jack": i, "connected": c} for i, c in enumerate(device.jack_connected)],
            "event-buffers": len(device.events.buffers),
            "event-backlog": len(device.events.backlog),
            "control-faults": device.control_plane.faults.pending,
        }

    def inject(arguments: dict[str, Any]) -> dict[str, Any]:
        """x-pyvmm-snd-inject: jack change, XRUN event, control change or failed I/O messages"""
        kind = _arg(arguments, "type", str)
        if kind == "jack":
            _only(arguments, {"type", "jack", "connected"})
            jack, connected = _arg(arguments, "jack", int), _arg(arguments, "connected", bool)
            was = device.jack_connected[jack] if 0 <= jack < len(device.jack_connected) else None
            device.set_jack(jack, connected)
            return {"sent": was != connected and device.ctx is not None}
        if kind == "xrun":
            _only(arguments, {"type", "stream"})
            return {"sent": device.report_xrun(_stream_id(device, arguments))}
        if kind == "ctl":
            _only(arguments, {"type", "control", "values"})
            values = _arg(arguments, "values", list)
            if not values or not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
                raise ValueError("'values' must be a non-empty list of integers")
            device.set_control(_arg(arguments, "control", int), values)
            return {"sent": device.control_plane.ctls_negotiated}
        if kind == "fail":
            _only(arguments, {"type", "stream", "count", "status"})
            stream_faults, count = _faults(device, arguments), _arg(arguments, "count", int)
            status = arguments.get("status", "io-err")
            if status not in FAIL_STATUSES:
                raise ValueError(f"'status' must be one of {', '.join(FAIL_STATUSES)}")
            stream_faults.fail(count, FAIL_STATUSES[status])
            return {"sent": True}
        if kind == "late":
            _only(arguments, {"type", "stream", "count", "ms"})
            _faults(device, arguments).late(_arg(arguments, "count", int), _number(arguments, "ms"))
            return {"sent": True}
        if kind == "stall":
            _only(arguments, {"type", "stream", "ms"})
            _faults(device, arguments).stall(_number(arguments, "ms"))
            return {"sent": True}
        if kind == "burst":
            _only(arguments, {"type", "stream", "count"})
            _faults(device, arguments).burst(_arg(arguments, "count", int))
            return {"sent": True}
        if kind == "needs-reset":
            _only(arguments, {"type", "stream", "count"})
            if "stream" in arguments:
                _faults(device, arguments).needs_reset_after(_arg(arguments, "count", int))
                return {"sent": False}
            faults.needs_reset_now(device, "QMP")
            return {"sent": True}
        if kind == "drop-event":
            _only(arguments, {"type", "count"})
            count = arguments.get("count", 1)
            if not isinstance(count, int) or isinstance(count, bool) or not 0 <= count <= MAX_COUNT:
                raise ValueError(f"'count' must be an integer 0..{MAX_COUNT}")
            faults.drop_events(device, count)
            return {"sent": True}
        if kind == "ctl-fail":
            _only(arguments, {"type", "count", "status", "request"})
            status = arguments.get("status", "io-err")
            if status not in CTL_FAIL_STATUSES:
                raise ValueError(f"'status' must be one of {', '.join(CTL_FAIL_STATUSES)}")
            device.control_faults().arm_fail(_arg(arguments, "count", int), CTL_FAIL_STATUSES[status],
                                             _request(arguments))
            return {"sent": True}
        if kind == "ctl-late":
            _only(arguments, {"type", "count", "ms", "request"})
            device.control_faults().arm_late(_arg(arguments, "count", int), _number(arguments, "ms"),
                                             _request(arguments))
            return {"sent": True}
        raise ValueError(f"'type' must be one of {', '.join(INJECT_TYPES)}, not {kind!r}")

    return {"x-pyvmm-snd-query-streams": query_streams, "x-pyvmm-snd-inject": inject}


def _stream_info(device: SoundDevice, stream) -> dict[str, Any]:
    params = stream.params
    info: dict[str, Any] = {
        "stream": stream.id,
        "direction": stream.direction.name.lower(),
        "state": stream.state.value,
        "params": None if params is None else {
            "buffer-bytes": params.buffer_bytes, "period-bytes": params.period_bytes,
            "channels": params.channels, "format": params.format.name, "rate": params.rate_hz,
            "features": params.features,
        },
    }
    io = device.dataplane.io[stream.id] if device.dataplane is not None else None
    held = list(io.held) if io is not None else []
    info["held"] = len(held)
    info["held-heads"] = [msg.chain.head for msg in held]
    # descriptor heads of the held messages: x-query-virtio-queue-element decodes each
    if io is None:
        return info
    stats = io.stats
    info.update({
        "periods": stats.periods, "bytes": stats.bytes, "xruns": stats.xruns, "xrun-periods": stats.xrun_periods,
        "xrun-events": stats.xrun_events, "injected-errors": stats.injected_errors,
        "failures-pending": io.failures_pending, "faults": io.faults.pending,
    })
    clock = io.clock
    info["clock"] = None if clock is None else {
        "kind": io.clock_kind, "running": clock.running, "paused": io.frozen or clock.paused,
        "ticks": clock.stats.ticks, "late-ticks": clock.stats.late_ticks,
    }
    return info


def _arg(arguments: dict[str, Any], name: str, kind: type) -> Any:
    if name not in arguments:
        raise ValueError(f"'{name}' is missing")
    value = arguments[name]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        what = "an integer" if kind is int else "a number" if kind == (int, float) else kind.__name__
        raise ValueError(f"'{name}' must be {what}")
    return value


def _only(arguments: dict[str, Any], allowed: set[str]) -> None:
    extra = sorted(set(arguments) - allowed)
    if extra:
        raise ValueError(f"unexpected argument {extra[0]!r}")


def _number(arguments: dict[str, Any], name: str) -> float:
    value = _arg(arguments, name, (int, float))
    if isinstance(value, bool):
        raise ValueError(f"'{name}' must be a number")
    return float(value)


def _request(arguments: dict[str, Any]):
    """The optional ``request`` argument (a request code name such as ``jack-info``), or None."""
    if "request" not in arguments:
        return None
    return ctlfaults.parse_request(_arg(arguments, "request", str))


def _faults(device: SoundDevice, arguments: dict[str, Any]):
    stream_id = _stream_id(device, arguments)
    if device.dataplane is None:
        raise ValueError("the driver has not activated the device")
    return device.dataplane.io[stream_id].faults


def _stream_id(device: SoundDevice, arguments: dict[str, Any]) -> int:
    stream_id = _arg(arguments, "stream", int)
    if not 0 <= stream_id < len(device.streams):
        raise ValueError(f"stream {stream_id} does not exist ({len(device.streams)} streams)")
    return stream_id
