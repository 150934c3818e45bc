"""The sound device's monitor commands against SoundDevice driven by the driver model: jack
events, xrun events only when negotiated, host control changes with CTL_NOTIFY, error injection
on I/O messages (IO_ERR/BAD_MSG, then OK again), ``info``; and through the monitor core."""

from __future__ import annotations

import pytest

from pyvmm.monitor import Monitor, MonitoredDevice
from pyvmm_snd import spec
from pyvmm_snd.spec import EventCode, PcmFeature, QueueIndex, RequestCode, Status
from snd_driver import SndDriver

PERIOD = 4096
PERIOD_S = 1024 / 48000
TX, RX = QueueIndex.TX, QueueIndex.RX


def cmd(d: SndDriver, line: str) -> str:
    name, *args = line.split()
    return d.device.monitor_commands()[name](args)


def started(d: SndDriver, stream_id: int = 0, features: int = 0) -> None:
    assert d.set_params(stream_id, buffer_bytes=8 * PERIOD, period_bytes=PERIOD, features=features) == Status.OK
    assert d.pcm(RequestCode.PCM_PREPARE, stream_id) == Status.OK
    assert d.pcm(RequestCode.PCM_START, stream_id) == Status.OK


def test_jack_disconnect_and_connect_send_events():
    with SndDriver() as d:
        d.start()
        assert cmd(d, "jack 0 disconnect") == "jack 0 disconnected"
        assert [(e.code, e.data) for e in d.events()] == [(EventCode.JACK_DISCONNECTED, 0)]
        assert "already" in cmd(d, "jack 0 disconnect")
        assert d.events() == []
        cmd(d, "jack 0 connect")
        assert [(e.code, e.data) for e in d.events()] == [(EventCode.JACK_CONNECTED, 0)]


@pytest.mark.parametrize("line", ["jack 9 connect", "jack 0 wiggle", "jack x connect", "jack 0"])
def test_jack_bad_arguments(line):
    with SndDriver() as d:
        d.start()
        with pytest.raises(Exception):
            cmd(d, line)
        assert d.events() == []


def test_xrun_only_when_negotiated_and_running():
    with SndDriver() as d:
        d.start()
        assert "did not negotiate EVT_XRUNS" in cmd(d, "xrun 1")
        assert d.set_params(1, features=1 << PcmFeature.EVT_XRUNS) == Status.OK
        assert "not started" in cmd(d, "xrun 1")
        assert d.events() == []
        started(d, 0)  # no EVT_XRUNS on stream 0
        assert "did not negotiate" in cmd(d, "xrun 0")
        assert d.pcm(RequestCode.PCM_PREPARE, 1) == Status.OK and d.pcm(RequestCode.PCM_START, 1) == Status.OK
        assert cmd(d, "xrun 1") == "XRUN event sent for stream 1"
        assert [(e.code, e.data) for e in d.events()] == [(EventCode.PCM_XRUN, 1)]
        with pytest.raises(ValueError, match="does not exist"):
            cmd(d, "xrun 5")


def test_ctl_sets_the_value_and_notifies():
    with SndDriver() as d:
        d.start()
        assert cmd(d, "ctl 0 10") == "control 0 = [10]"
        assert d.ctl_read(0)[1].value.integer[0] == 10
        [event] = d.events()
        ctl_event = spec.CtlEvent.from_buffer_copy(bytes(event))
        assert (ctl_event.code, ctl_event.control_id) == (EventCode.CTL_NOTIFY, 0)
        with pytest.raises(ValueError):
            cmd(d, "ctl 0 100000")  # out of range
        with pytest.raises(Exception, match="does not exist"):
            cmd(d, "ctl 99 1")


def test_ctl_without_ctls_says_no_event():
    with SndDriver(features=0) as d:
        d.start()
        assert "no event" in cmd(d, "ctl 1 0")
        assert d.events() == []


@pytest.mark.parametrize("status_name, status", [("io_err", Status.IO_ERR), ("bad_msg", Status.BAD_MSG)])
def test_fail_completes_the_next_messages_with_the_status_then_recovers(status_name, status):
    with SndDriver() as d:
        d.start()
        started(d, 0)
        for _ in range(5):
            d.add_tx(0, bytes(PERIOD))
        d.kick(TX)
        assert "next 2 I/O messages complete with" in cmd(d, f"fail 0 2 {status_name}")
        d.advance(10 * PERIOD_S)
        entries = d.collect(TX)
        assert [d.io_status(TX, e)[0] for e in entries] == [status, status, Status.OK, Status.OK, Status.OK]
        assert all(e.len == 8 for e in entries)
        info = cmd(d, "info")
        assert "injected errors 2 (0 pending)" in info


def test_fail_on_capture_writes_no_frames():
    with SndDriver() as d:
        d.start()
        started(d, 1)
        d.add_rx(1, PERIOD)
        d.add_rx(1, PERIOD)
        d.kick(RX)
        cmd(d, "fail 1 1")
        d.advance(3 * PERIOD_S)
        entries = d.collect(RX)
        assert [(d.io_status(RX, e)[0], e.len) for e in entries] == [(Status.IO_ERR, 8), (Status.OK, PERIOD + 8)]


def test_fail_arguments():
    with SndDriver() as d:
        with pytest.raises(ValueError, match="not activated"):
            cmd(d, "fail 0 1")
        d.start()
        for line in ("fail 0", "fail 0 x", "fail 0 1 broken", "fail 7 1", "fail 0 -1"):
            with pytest.raises(ValueError):
                cmd(d, line)


def test_info_shows_streams_and_jacks():
    with SndDriver() as d:
        text = cmd(d, "info")
        assert text.startswith("driver not active, back end null")
        d.start()
        started(d, 0)
        d.add_tx(0, bytes(PERIOD))
        d.kick(TX)
        text = cmd(d, "info")
        assert "stream 0 output: started, 2ch S16 48000Hz period=4096 buffer=32768, queued 1" in text
        assert "stream 1 input: set-params, no parameters, queued 0" in text
        assert "jack 0: connected" in text


def test_through_the_monitor_core():
    with SndDriver() as d:
        d.start()
        monitor = Monitor([MonitoredDevice("snd0", d.device, object())],
                          lambda fn, *args, timeout=None: fn(*args), dict, quit=lambda: None)
        assert monitor.execute("snd0 jack 1 disconnect") == (True, "jack 1 disconnected")
        assert [(e.code, e.data) for e in d.events()] == [(EventCode.JACK_DISCONNECTED, 1)]
        ok, text = monitor.execute("snd0 jack 1 sideways")
        assert not ok and text == "snd0 jack: usage: jack ID connect|disconnect"
        ok, text = monitor.execute("snd0 help")
        assert ok and "snd0 fail STREAM N [io_err|bad_msg]" in text
