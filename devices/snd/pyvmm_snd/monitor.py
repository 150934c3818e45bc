"""Monitor commands of the sound device (``snd0 jack 0 disconnect``, ``snd0 fail 0 3 io_err``, ...).

Fault injection for driver debugging: host-side jack and control changes, xrun events,
I/O messages completed with an error status, late, stalled or bursty completions,
DEVICE_NEEDS_RESET, lost events (:mod:`pyvmm_snd.faults`). Every command runs on the device event loop
(see :meth:`pyvmm.virtio.device.VirtioDevice.monitor_commands`); a bad argument raises
ValueError, which the monitor reports as a one-line error.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from pyvmm_snd import ctlfaults, faults
from pyvmm_snd.spec import PcmFeature, Status
from pyvmm_snd.stream import StreamState

if TYPE_CHECKING:
    from pyvmm_snd.device import SoundDevice

FAIL_STATUSES = {"io_err": Status.IO_ERR, "bad_msg": Status.BAD_MSG}


def commands(device: SoundDevice) -> dict[str, Callable[[list[str]], str]]:
    """The command table for ``device``."""

    def jack(args: list[str]) -> str:
        """jack ID connect|disconnect   plug/unplug a jack (JACK_CONNECTED/DISCONNECTED event)"""
        if len(args) != 2 or args[1] not in ("connect", "disconnect"):
            raise ValueError("usage: jack ID connect|disconnect")
        jack_id = _number(args[0], "jack id")
        connected = args[1] == "connect"
        was = device.jack_connected[jack_id] if 0 <= jack_id < len(device.jack_connected) else None
        device.set_jack(jack_id, connected)
        if was == connected:
            return f"jack {jack_id} already {args[1]}ed: no event sent"
        return f"jack {jack_id} {args[1]}ed" + ("" if device.ctx is not None else " (driver not active: no event)")

    def xrun(args: list[str]) -> str:
        """xrun STREAM                  send a PCM_XRUN event (only if the stream negotiated EVT_XRUNS)"""
        if len(args) != 1:
            raise ValueError("usage: xrun STREAM")
        stream = _stream(device, args[0])
        params = stream.params
        if params is None or not params.wants(PcmFeature.EVT_XRUNS):
            return f"not sent: stream {stream.id} did not negotiate EVT_XRUNS"
        if stream.state != StreamState.STARTED:
            return f"not sent: stream {stream.id} is {stream.state.value}, not started"
        device.report_xrun(stream.id)
        return f"XRUN event sent for stream {stream.id}"

    def ctl(args: list[str]) -> str:
        """ctl ID VALUE...              set a control from the host (CTL_NOTIFY event if negotiated)"""
        if len(args) < 2:
            raise ValueError("usage: ctl ID VALUE...")
        control_id = _number(args[0], "control id")
        values = [_number(word, "value") for word in args[1:]]
        device.set_control(control_id, values)
        notified = device.control_plane.ctls_negotiated
        return f"control {control_id} = {device.controls.value(control_id)}" + (
            "" if notified else " (VIRTIO_SND_F_CTLS not negotiated: no event)")

    def fail(args: list[str]) -> str:
        """fail STREAM N [io_err|bad_msg]  complete the stream's next N I/O messages with that status

        Counted on messages the period clock consumes (RELEASE flushes stay OK); ``N`` = 0
        cancels; a device reset by the driver forgets what is left."""
        if len(args) not in (2, 3):
            raise ValueError("usage: fail STREAM N [io_err|bad_msg]")
        stream = _stream(device, args[0])
        count = _number(args[1], "count")
        if count < 0:
            raise ValueError("count must be >= 0")
        name = args[2] if len(args) == 3 else "io_err"
        if name not in FAIL_STATUSES:
            raise ValueError(f"status must be one of {', '.join(FAIL_STATUSES)}")
        if device.dataplane is None:
            raise ValueError("the driver has not activated the device")
        device.dataplane.io[stream.id].fail_next(count, FAIL_STATUSES[name])
        return f"stream {stream.id}: next {count} I/O messages complete with {FAIL_STATUSES[name].name}"

    def late(args: list[str]) -> str:
        """late STREAM N MS             complete the stream's next N I/O messages MS ms after their period"""
        if len(args) != 3:
            raise ValueError("usage: late STREAM N MS")
        faults = _faults(device, args[0])
        faults.late(_number(args[1], "count"), _ms(args[2]))
        return f"stream {faults.stream_id}: next {args[1]} I/O messages complete {args[2]} ms late"

    def stall(args: list[str]) -> str:
        """stall STREAM MS              complete nothing for MS ms (the clock runs on), then all at once"""
        if len(args) != 2:
            raise ValueError("usage: stall STREAM MS")
        faults = _faults(device, args[0])
        faults.stall(_ms(args[1]))
        return f"stream {faults.stream_id}: completions stalled for {args[1]} ms"

    def burst(args: list[str]) -> str:
        """burst STREAM N               hold the next N completions, then give them to the driver at once"""
        if len(args) != 2:
            raise ValueError("usage: burst STREAM N")
        faults = _faults(device, args[0])
        faults.burst(_number(args[1], "count"))
        return f"stream {faults.stream_id}: next {args[1]} completions in one burst"

    def needs_reset(args: list[str]) -> str:
        """needs-reset [STREAM N]       set DEVICE_NEEDS_RESET now, or after the stream's Nth I/O message"""
        if not args:
            faults.needs_reset_now(device, "the monitor")
            return "DEVICE_NEEDS_RESET set (configuration change interrupt sent)"
        if len(args) != 2:
            raise ValueError("usage: needs-reset [STREAM N]")
        faults = _faults(device, args[0])
        faults.needs_reset_after(_number(args[1], "count"))
        return f"stream {faults.stream_id}: DEVICE_NEEDS_RESET after {args[1]} more I/O messages"

    def drop_event(args: list[str]) -> str:
        """drop-event [N]               lose the next N device events (default 1) instead of delivering them"""
        if len(args) > 1:
            raise ValueError("usage: drop-event [N]")
        count = _number(args[0], "count") if args else 1
        faults.drop_events(device, count)
        return f"next {count} events dropped"

    def ctl_fail(args: list[str]) -> str:
        """ctl-fail N [io_err|bad_msg|not_supp] [REQUEST]  answer the next N control requests with that status, not acting

        REQUEST (e.g. ``pcm_set_params``) limits it to one request code; armed before the guest
        boots it hits the driver's probe (:mod:`pyvmm_snd.ctlfaults`)."""
        if not 1 <= len(args) <= 3:
            raise ValueError("usage: ctl-fail N [io_err|bad_msg|not_supp] [REQUEST]")
        count = _number(args[0], "count")
        rest = args[1:]
        status = ctlfaults.STATUSES["io_err"]
        if rest and rest[0] in ctlfaults.STATUSES:
            status = ctlfaults.STATUSES[rest.pop(0)]
        if len(rest) > 1:
            raise ValueError(f"status must be one of {', '.join(ctlfaults.STATUSES)}")
        code = ctlfaults.parse_request(rest[0]) if rest else None
        device.control_faults().arm_fail(count, status, code)
        return f"next {count} {code.name if code else 'control'} requests answered {status.name}"

    def ctl_late(args: list[str]) -> str:
        """ctl-late N MS [REQUEST]      answer the next N control requests (e.g. jack_info ones) MS ms late"""
        if len(args) not in (2, 3):
            raise ValueError("usage: ctl-late N MS [REQUEST]")
        count = _number(args[0], "count")
        code = ctlfaults.parse_request(args[2]) if len(args) == 3 else None
        device.control_faults().arm_late(count, _ms(args[1]), code)
        return f"next {count} {code.name if code else 'control'} answers {args[1]} ms late"

    def info(args: list[str]) -> str:
        """info                         streams: state, parameters, queued messages, xruns, back end"""
        lines = [f"driver {'active' if device.ctx is not None else 'not active'}, "
                 f"back end {device.backend}, clock {device.host_audio.clock}"]
        for stream in device.streams:
            params = stream.params
            held = len(device.dataplane.io[stream.id].held) if device.dataplane is not None else 0
            line = (f"stream {stream.id} {stream.direction.name.lower()}: {stream.state.value}, "
                    f"{params if params is not None else 'no parameters'}, queued {held}")
            if params is not None:
                line += f", xrun events {'on' if params.wants(PcmFeature.EVT_XRUNS) else 'off'}"
            if device.dataplane is not None:
                io = device.dataplane.io[stream.id]
                line += (f", periods {io.stats.periods}, xruns {io.stats.xruns}, "
                         f"injected errors {io.stats.injected_errors} ({io.failures_pending} pending)")
                armed = {k: v for k, v in io.faults.pending.items() if v and k != "fail_status"}
                if armed:
                    line += ", armed " + " ".join(f"{k}={v}" for k, v in armed.items())
            lines.append(line)
        for jack_id, connected in enumerate(device.jack_connected):
            lines.append(f"jack {jack_id}: {'connected' if connected else 'disconnected'}")
        queue_faults, parts = device.control_plane.faults, []
        if queue_faults.failing.count:
            parts.append(f"armed fail {queue_faults.failing.describe()} -> {queue_faults.fail_status.name}")
        if queue_faults.late.count:
            parts.append(f"armed late {queue_faults.late.describe()} by {queue_faults.late_ms:g} ms")
        if queue_faults.held_back:
            parts.append(f"held back {queue_faults.held_back}")
        if parts:
            lines.append("control queue: " + ", ".join(parts))
        return "\n".join(lines)

    return {"jack": jack, "xrun": xrun, "ctl": ctl, "fail": fail, "late": late, "stall": stall, "burst": burst,
            "needs-reset": needs_reset, "drop-event": drop_event, "ctl-fail": ctl_fail, "ctl-late": ctl_late,
            "info": info}


def _number(text: str, what: str) -> int:
    try:
        return int(text, 0)
    except ValueError:
        raise ValueError(f"{what} must be a number, not {text!r}") from None


def _ms(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"milliseconds must be a number, not {text!r}") from None


def _faults(device: SoundDevice, text: str):
    stream = _stream(device, text)
    if device.dataplane is None:
        raise ValueError("the driver has not activated the device")
    return device.dataplane.io[stream.id].faults


def _stream(device: SoundDevice, text: str):
    stream_id = _number(text, "stream id")
    if not 0 <= stream_id < len(device.streams):
        raise ValueError(f"stream {stream_id} does not exist ({len(device.streams)} streams)")
    return device.streams[stream_id]
