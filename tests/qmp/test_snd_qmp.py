"""The sound device's side of QMP, on the device model with a deterministic clock: pause and
resume freeze the stream clocks (no period completes and no xrun counts while paused), the
device publishes jack/xrun/control events on the bus, and the vendor commands."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from pyvmm.events import EventBus
from pyvmm_snd import qmp
from pyvmm_snd.spec import EventCode, PcmFeature, QueueIndex, RequestCode, Status

sys.path.insert(0, str(Path(__file__).parents[1] / "snd"))

from snd_driver import SndDriver  # noqa: E402

PERIOD = 4096  # bytes: 1024 frames of 48 kHz stereo S16
PERIOD_S = 1024 / 48000


@pytest.fixture
def driver():
    events = []
    bus = EventBus()
    bus.subscribe(lambda e: events.append((e.name, e.data)))
    with SndDriver() as d:
        d.device.event_sink = bus.sink("snd0")
        d.bus_events = events
        d.start()
        yield d


def playing(d, messages: int, xruns: bool = True) -> list[int]:
    assert d.set_params(0, buffer_bytes=4 * PERIOD, period_bytes=PERIOD,
                        features=(1 << PcmFeature.EVT_XRUNS) if xruns else 0) == Status.OK
    assert d.pcm(RequestCode.PCM_PREPARE, 0) == Status.OK
    heads = [d.add_tx(0, bytes(PERIOD)) for _ in range(messages)]
    d.kick(QueueIndex.TX)
    return heads


def streams(d) -> list[dict]:
    return qmp.commands(d.device)["x-pyvmm-snd-query-streams"]({})["streams"]


def test_pause_freezes_the_period_clock_and_counts_no_xrun(driver):
    d = driver
    playing(d, 3)
    assert d.pcm(RequestCode.PCM_START, 0) == Status.OK
    d.advance(PERIOD_S * 1.5)
    assert len(d.collect(QueueIndex.TX)) == 1
    d.device.pause()
    assert streams(d)[0]["clock"]["paused"]
    d.advance(10.0)  # ten seconds of paused VM: nothing completes, no underrun
    assert d.collect(QueueIndex.TX) == []
    assert streams(d)[0]["xruns"] == 0 and streams(d)[0]["periods"] == 1
    d.device.resume()
    d.advance(PERIOD_S * 0.45)  # the half period left before the pause finishes first
    assert d.collect(QueueIndex.TX) == []
    d.advance(PERIOD_S * 0.1)
    assert len(d.collect(QueueIndex.TX)) == 1
    d.advance(PERIOD_S)
    assert len(d.collect(QueueIndex.TX)) == 1
    assert streams(d)[0]["xruns"] == 0
    d.advance(PERIOD_S)  # nothing left: a real underrun, as an event for the guest and for QMP
    info = streams(d)[0]
    assert info["xruns"] == 1 and info["xrun-events"] == 1
    assert ("SND_PCM_XRUN", {"device": "snd0", "stream": 0, "kind": "underrun", "notified": True}) in d.bus_events
    assert [(e.code, e.data) for e in d.events()] == [(EventCode.PCM_XRUN, 0)]


def test_start_while_paused_waits_for_resume(driver):
    d = driver
    playing(d, 2)
    d.device.pause()
    assert d.pcm(RequestCode.PCM_START, 0) == Status.OK
    d.advance(1.0)
    assert d.collect(QueueIndex.TX) == [] and streams(d)[0]["xruns"] == 0
    d.device.resume()
    d.advance(PERIOD_S * 1.01)
    assert len(d.collect(QueueIndex.TX)) == 1


def test_driver_stop_during_pause_is_not_undone_by_resume(driver):
    d = driver
    playing(d, 2)
    assert d.pcm(RequestCode.PCM_START, 0) == Status.OK
    d.device.pause()
    assert d.pcm(RequestCode.PCM_STOP, 0) == Status.OK
    d.device.resume()
    d.advance(1.0)
    assert d.collect(QueueIndex.TX) == [] and streams(d)[0]["xruns"] == 0


def test_activation_while_paused_starts_frozen():
    with SndDriver() as d:
        d.device.pause()
        d.start()
        playing(d, 1)
        assert d.pcm(RequestCode.PCM_START, 0) == Status.OK
        d.advance(1.0)
        assert d.collect(QueueIndex.TX) == []
        d.device.resume()
        d.advance(PERIOD_S * 1.01)
        assert len(d.collect(QueueIndex.TX)) == 1


def test_inject_jack_xrun_ctl_fail_and_their_events(driver):
    d = driver
    inject = qmp.commands(d.device)["x-pyvmm-snd-inject"]
    assert inject({"type": "jack", "jack": 0, "connected": False}) == {"sent": True}
    assert inject({"type": "jack", "jack": 0, "connected": False}) == {"sent": False}  # no change
    assert ("SND_JACK_CHANGED", {"device": "snd0", "jack": 0, "connected": False, "notified": True}) in d.bus_events
    assert [(e.code, e.data) for e in d.events()] == [(EventCode.JACK_DISCONNECTED, 0)]
    assert inject({"type": "xrun", "stream": 0}) == {"sent": False}  # not running
    assert ("SND_PCM_XRUN", {"device": "snd0", "stream": 0, "kind": "injected", "notified": False}) in d.bus_events
    assert inject({"type": "ctl", "control": 0, "values": [17]}) == {"sent": True}
    assert ("SND_CTL_CHANGED", {"device": "snd0", "control": 0, "mask": 1, "notified": True}) in d.bus_events
    heads = playing(d, 2, xruns=False)
    assert inject({"type": "fail", "stream": 0, "count": 1, "status": "bad-msg"}) == {"sent": True}
    assert d.pcm(RequestCode.PCM_START, 0) == Status.OK
    d.advance(PERIOD_S * 2.01)
    done = d.collect(QueueIndex.TX)
    assert [e.id for e in done] == heads
    assert [d.io_status(QueueIndex.TX, e)[0] for e in done] == [Status.BAD_MSG, Status.OK]
    assert streams(d)[0]["injected-errors"] == 1


@pytest.mark.parametrize("arguments, message", [
    ({}, "'type' is missing"),
    ({"type": "boom"}, "'type' must be"),
    ({"type": "jack", "jack": "0", "connected": True}, "'jack' must be an integer"),
    ({"type": "jack", "jack": 0, "connected": 1}, "'connected' must be bool"),
    ({"type": "jack", "jack": 0, "connected": True, "x": 1}, "unexpected argument 'x'"),
    ({"type": "xrun", "stream": 7}, "stream 7 does not exist"),
    ({"type": "ctl", "control": 0, "values": []}, "non-empty list"),
    ({"type": "fail", "stream": 0, "count": -1}, "count must be 0..100000"),
    ({"type": "fail", "stream": 0, "count": 1, "status": "io_err"}, "'status' must be one of io-err, bad-msg"),
    ({"type": "late", "stream": 0, "count": 1, "ms": "5"}, "'ms' must be a number"),
    ({"type": "late", "stream": 0, "count": 1, "ms": 0}, "delay must be more than 0"),
    ({"type": "stall", "stream": 0, "ms": 10**9}, "at most 60000 ms"),
    ({"type": "burst", "stream": 0}, "'count' is missing"),
    ({"type": "drop-event", "count": -1}, "'count' must be an integer 0..100000"),
    ({"type": "needs-reset", "stream": 0}, "'count' is missing"),
])
def test_inject_rejects_bad_arguments(driver, arguments, message):
    with pytest.raises(ValueError, match=message):
        qmp.commands(driver.device)["x-pyvmm-snd-inject"](arguments)


def completions(d, seconds: float) -> int:
    d.advance(seconds)
    return len(d.collect(QueueIndex.TX))


def test_inject_timing_faults_late_stall_burst(driver):
    d = driver
    inject = qmp.commands(d.device)["x-pyvmm-snd-inject"]
    playing(d, 4, xruns=False)
    assert d.pcm(RequestCode.PCM_START, 0) == Status.OK
    assert inject({"type": "late", "stream": 0, "count": 1, "ms": 5}) == {"sent": True}
    assert streams(d)[0]["faults"]["late"] == 1
    assert completions(d, PERIOD_S * 1.01) == 0  # the first period's message is 5 ms late
    assert completions(d, 0.006) == 1
    assert inject({"type": "burst", "stream": 0, "count": 2}) == {"sent": True}
    assert completions(d, PERIOD_S) == 0  # held back...
    assert completions(d, PERIOD_S) == 2  # ...and given back together
    d.add_tx(0, bytes(PERIOD))
    d.kick(QueueIndex.TX)
    assert inject({"type": "stall", "stream": 0, "ms": 100}) == {"sent": True}
    assert completions(d, 0.09) == 0
    assert completions(d, 0.02) == 2


def test_late_and_stall_timers_stand_still_while_paused(driver):
    d = driver
    inject = qmp.commands(d.device)["x-pyvmm-snd-inject"]
    playing(d, 3, xruns=False)
    assert d.pcm(RequestCode.PCM_START, 0) == Status.OK
    inject({"type": "late", "stream": 0, "count": 1, "ms": 10})
    assert completions(d, PERIOD_S + 0.004) == 0  # consumed, 6 ms of lateness left
    d.device.pause()
    assert completions(d, 5.0) == 0
    d.device.resume()
    assert completions(d, 0.005) == 0
    assert completions(d, 0.002) == 1
    inject({"type": "stall", "stream": 0, "ms": 100})
    d.advance(0.05)
    d.device.pause()
    inject({"type": "stall", "stream": 0, "ms": 30})  # re-armed while paused: 30 ms from cont
    assert completions(d, 5.0) == 0
    d.device.resume()
    assert completions(d, 0.029) == 0
    assert completions(d, 0.002) >= 1  # what the clock consumed before the pause comes out


def test_inject_needs_reset_and_drop_event(driver):
    d = driver
    inject = qmp.commands(d.device)["x-pyvmm-snd-inject"]
    assert inject({"type": "needs-reset"}) == {"sent": True}
    assert d.resets == ["injected from QMP"]
    assert inject({"type": "drop-event"}) == {"sent": True}
    inject({"type": "jack", "jack": 0, "connected": False})
    assert d.events() == []  # lost on purpose
    inject({"type": "jack", "jack": 0, "connected": True})
    assert [e.code for e in d.events()] == [EventCode.JACK_CONNECTED]


def test_query_streams_before_the_driver_activated_the_device():
    with SndDriver() as d:
        result = qmp.commands(d.device)["x-pyvmm-snd-query-streams"]({})
        assert not result["driver-active"] and result["event-buffers"] == 0
        assert result["streams"][0] == {"stream": 0, "direction": "output", "state": "set-params", "params": None,
                                        "held": 0, "held-heads": []}


def test_query_streams_before_and_after_parameters(driver):
    d = driver
    result = qmp.commands(d.device)["x-pyvmm-snd-query-streams"]({})
    assert result["driver-active"] and not result["paused"]
    assert result["jacks"][0] == {"jack": 0, "connected": True}
    assert result["event-buffers"] == 64 and result["event-backlog"] == 0
    first = result["streams"][0]
    assert first["direction"] == "output" and first["clock"] is None and first["held"] == 0
    heads = playing(d, 2)
    first = streams(d)[0]
    assert first["state"] == "prepared" and first["held"] == 2 and first["held-heads"] == heads
    assert first["params"] == {"buffer-bytes": 4 * PERIOD, "period-bytes": PERIOD, "channels": 2,
                               "format": "S16", "rate": 48000, "features": 1 << PcmFeature.EVT_XRUNS}
    with pytest.raises(ValueError, match="unexpected"):
        qmp.commands(d.device)["x-pyvmm-snd-query-streams"]({"stream": 0})
