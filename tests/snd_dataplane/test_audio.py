"""What reaches the host and the guest: bit-exact playback and capture through WAV files,
underruns (silence, counted, XRUN event only when negotiated), volume and mute, flushing
on close, back-end failures that never stop the guest's clock, and the option scheme."""

from __future__ import annotations

import logging
import wave

import numpy as np
import pytest

from dp_helpers import BUFFER, PERIOD, PERIOD_S, TimedDriver, periods, read_wav
from pyvmm.errors import VmmError
from pyvmm_snd import hostaudio
from pyvmm_snd.device import SoundDevice
from pyvmm_snd.spec import CtlRole, EventCode, PcmFeature, PcmFormat, QueueIndex, RequestCode, Status

R = RequestCode
TX, RX = QueueIndex.TX, QueueIndex.RX


def wav_driver(tmp_path, **options) -> TimedDriver:
    return TimedDriver(options={"backend.path": str(tmp_path / "out.wav"), "capture.backend": "null", **options})


@pytest.mark.parametrize("negotiated", [True, False], ids=["evt-xruns", "no-evt-xruns"])
def test_underrun_plays_silence_counts_and_reports_only_when_negotiated(tmp_path, caplog, negotiated):
    features = 1 << PcmFeature.EVT_XRUNS if negotiated else 0
    with wav_driver(tmp_path) as d:
        d.start()
        d.run_stream(0, buffer_bytes=BUFFER, period_bytes=PERIOD, features=features)
        data = periods(3)
        d.add_tx(0, data[0])
        d.add_tx(0, data[1])
        d.kick(TX)
        d.pcm(R.PCM_START, 0)
        with caplog.at_level(logging.INFO, logger="pyvmm_snd"):
            d.advance(5 * PERIOD_S + 1e-9)  # two periods of audio, then three with nothing queued
            assert len(d.collect(TX)) == 2
            stats = d.device.dataplane.io[0].stats
            assert (stats.xruns, stats.xrun_periods) == (1, 3)
            d.add_tx(0, data[2])
            d.kick(TX)
            d.advance(PERIOD_S)  # the guest caught up: the stream carries on, same clock
            assert len(d.collect(TX)) == 1
        assert (stats.xruns, stats.xrun_periods, stats.periods) == (1, 3, 3)
        events = [(e.code, e.data) for e in d.events()]
        assert events == ([(EventCode.PCM_XRUN, 0)] if negotiated else [])
        assert stats.xrun_events == (1 if negotiated else 0)
        underrun_lines = [r for r in caplog.records if "underrun" in r.getMessage()]
        assert len(underrun_lines) == 1 and underrun_lines[0].levelno == logging.INFO  # one line per gap
        assert "3 periods" in underrun_lines[0].getMessage()
        d.pcm(R.PCM_STOP, 0)
        d.pcm(R.PCM_RELEASE, 0)
    frames = read_wav(tmp_path / "out.wav")[1]
    assert frames == data[0] + data[1] + bytes(3 * PERIOD) + data[2]  # silence for the gap, no replay


def test_capture_overrun_drops_the_period_and_counts():
    with TimedDriver(options={"backend": "null"}) as d:
        d.start()
        d.run_stream(1, buffer_bytes=BUFFER, period_bytes=PERIOD)
        d.add_rx(1, PERIOD)
        d.kick(RX)
        d.pcm(R.PCM_START, 1)
        d.advance(3 * PERIOD_S + 1e-9)
        assert [e.len for e in d.collect(RX)] == [PERIOD + 8]
        stats = d.device.dataplane.io[1].stats
        assert (stats.xruns, stats.xrun_periods) == (1, 2)


def write_wav(path, frames: bytes, channels: int = 2, rate: int = 48000) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(frames)


@pytest.mark.parametrize("cuts", [[], [100, 3000], [1, 2, 3, 4]])
def test_capture_from_wav_is_bit_exact_with_used_length(tmp_path, cuts):
    source = b"".join(periods(3, seed=7))
    write_wav(tmp_path / "in.wav", source)
    with TimedDriver(options={"playback.backend": "null", "capture.backend": "wav",
                              "capture.backend.input": str(tmp_path / "in.wav")}) as d:
        d.start()
        d.run_stream(1, buffer_bytes=BUFFER, period_bytes=PERIOD)
        heads = [d.add_rx(1, PERIOD, in_cuts=cuts) for _ in range(4)]
        d.kick(RX)
        d.pcm(R.PCM_START, 1)
        d.advance(4 * PERIOD_S + 1e-9)
        done = d.collect(RX)
        assert [e.id for e in done] == heads
        assert all(e.len == PERIOD + 8 for e in done)
        captured = b"".join(e.written[:PERIOD] for e in done)
        assert captured == source + bytes(PERIOD)  # then silence: loop is off
        assert all(d.io_status(RX, e)[0] == Status.OK for e in done)


def volume_raw_for_db(db: float) -> int:
    return int((db * 100 + 6400) / 50)


@pytest.mark.parametrize("setting", ["0dB", "-6dB", "muted"])
def test_volume_and_mute_controls_scale_playback(tmp_path, setting):
    data = periods(2, seed=3)
    with wav_driver(tmp_path) as d:
        d.start()
        volume = d.device.controls.find(0, CtlRole.VOLUME)
        switch = d.device.controls.find(0, CtlRole.MUTE)
        if setting == "-6dB":
            assert d.ctl_write(volume, [volume_raw_for_db(-6.0)] * 2) == Status.OK
        elif setting == "muted":
            assert d.ctl_write(switch, [0, 0]) == Status.OK
        d.run_stream(0, buffer_bytes=BUFFER, period_bytes=PERIOD)
        for p in data:
            d.add_tx(0, p)
        d.kick(TX)
        d.pcm(R.PCM_START, 0)
        d.advance(2 * PERIOD_S + 1e-9)
        d.pcm(R.PCM_STOP, 0)
        d.pcm(R.PCM_RELEASE, 0)
    played = read_wav(tmp_path / "out.wav")[1]
    source = b"".join(data)
    if setting == "0dB":
        assert played == source  # bit-exact
    elif setting == "muted":
        assert played == bytes(len(source))
    else:
        expected = np.frombuffer(source, "<i2").astype(np.float64) * 10 ** (-6 / 20)
        got = np.frombuffer(played, "<i2").astype(np.float64)
        assert np.max(np.abs(got - expected)) <= 1.0
        assert not np.array_equal(got, np.frombuffer(source, "<i2"))


def test_capture_volume_applies_to_recorded_frames():
    with TimedDriver(options={"backend": "tone", "backend.amplitude": "1.0"}) as d:
        d.start()
        switch = d.device.controls.find(1, CtlRole.MUTE)
        assert d.ctl_write(switch, [0, 0]) == Status.OK
        d.run_stream(1, buffer_bytes=BUFFER, period_bytes=PERIOD)
        d.add_rx(1, PERIOD)
        d.kick(RX)
        d.pcm(R.PCM_START, 1)
        d.advance(PERIOD_S + 1e-9)
        [entry] = d.collect(RX)
        assert entry.len == PERIOD + 8 and entry.written[:PERIOD] == bytes(PERIOD)


@pytest.mark.parametrize("fmt,width", [(PcmFormat.S32, 4), (PcmFormat.FLOAT, 4), (PcmFormat.S24, 4)])
def test_playback_other_formats_bit_exact(tmp_path, fmt, width):
    frames = 512 * 6  # 512 six-channel frames per period
    data = periods(2, frames * width, seed=5)
    if fmt == PcmFormat.FLOAT:  # finite floats in [-1, 1]
        data = [np.random.default_rng(i).uniform(-1, 1, frames).astype("<f4").tobytes() for i in range(2)]
    if fmt == PcmFormat.S24:  # 24 bits in 32-bit containers, sign-extended
        data = [(np.random.default_rng(i).integers(-2**23, 2**23, frames).astype("<i4")).tobytes() for i in range(2)]
    with wav_driver(tmp_path) as d:
        d.start()
        d.run_stream(0, buffer_bytes=4 * frames * width, period_bytes=frames * width, channels=6, fmt=fmt)
        for p in data:
            d.add_tx(0, p)
        d.kick(TX)
        d.pcm(R.PCM_START, 0)
        d.advance(2 * 512 / 48000 + 1e-9)  # exactly the two periods: no underrun silence after them
        d.pcm(R.PCM_STOP, 0)
        d.pcm(R.PCM_RELEASE, 0)
    from pyvmm_snd.backends.wavfile import parse_header

    raw = (tmp_path / "out.wav").read_bytes()
    info = parse_header(raw[:4096], len(raw))
    stored = raw[info.data_offset:info.data_offset + info.data_size]
    expected = b"".join(data)
    assert len(stored) == len(expected)
    if fmt == PcmFormat.S24:  # WAV stores 24-bit samples MSB-aligned in their 32-bit containers
        assert np.array_equal(np.frombuffer(stored, "<i4") >> 8, np.frombuffer(expected, "<i4"))
    else:
        assert stored == expected


def test_close_flushes_a_running_stream_and_stops_its_clock(tmp_path, capsys):
    d = wav_driver(tmp_path)
    d.start()
    d.run_stream(0, buffer_bytes=BUFFER, period_bytes=PERIOD)
    data = periods(2)
    for p in data:
        d.add_tx(0, p)
    d.kick(TX)
    d.pcm(R.PCM_START, 0)
    d.advance(2 * PERIOD_S + 1e-9)
    d.device.close()  # the VMM exits with the stream still running
    assert d.loop.pending_timers() == 0
    assert read_wav(tmp_path / "out.wav")[1] == b"".join(data)
    assert f"stream 0 playback written to {tmp_path / 'out.wav'}" in capsys.readouterr().err  # told at exit
    d.close()


def test_backend_failure_keeps_the_guest_clock(tmp_path, caplog):
    """The directory was fine at start-up and vanished before the guest played."""
    (tmp_path / "gone").mkdir()
    with TimedDriver(options={"backend.path": str(tmp_path / "gone" / "out.wav"),
                              "capture.backend": "null"}) as d:
        (tmp_path / "gone").rmdir()
        d.start()
        d.run_stream(0, buffer_bytes=BUFFER, period_bytes=PERIOD)
        for p in periods(3):
            d.add_tx(0, p)
        d.kick(TX)
        with caplog.at_level(logging.WARNING, logger="pyvmm_snd"):
            d.pcm(R.PCM_START, 0)
        assert any("runs without host audio" in r.getMessage() for r in caplog.records)
        d.advance(3 * PERIOD_S + 1e-9)
        assert len(d.collect(TX)) == 3


def test_option_scheme_per_direction():
    config = hostaudio.from_options({})
    assert (config.playback.name, config.capture.name, config.clock) == ("wav", "tone", "realtime")
    assert config.playback.options == {"path": "pyvmm-snd-stream{stream}.wav"}
    config = hostaudio.from_options({"backend.path": "o.wav", "backend.frequency": "880", "clock": "fast"})
    assert config.playback.options == {"path": "o.wav"} and config.capture.options == {"frequency": "880"}
    config = hostaudio.from_options({"backend": "loopback", "capture.backend": "wav",
                                     "capture.backend.input": "in.wav", "backend.name": "p"})
    assert config.playback == hostaudio.BackendChoice("loopback", {"name": "p"})
    assert config.capture == hostaudio.BackendChoice("wav", {"input": "in.wav"})


@pytest.mark.parametrize("options,message", [
    ({"backend": "bogus"}, "unknown backend 'bogus'"),
    ({"clock": "slow"}, "clock='slow'"),
    ({"backend.nope": "1"}, "no option 'nope'"),
    ({"playback.backend": "null", "playback.backend.path": "x.wav"}, "unknown option 'path'"),
    ({"capture.backend": "wav", "capture.backend.input": "/nonexistent/in.wav"}, "in.wav"),
    ({"backend.frequency": "-5"}, "frequency"),
])
def test_bad_host_options_are_one_line_startup_errors(options, message):
    with pytest.raises(VmmError, match=message) as info:
        SoundDevice(options)
    assert "\n" not in str(info.value)


def test_help_lists_the_host_options():
    text = SoundDevice.describe_options()
    for word in ("playback.backend", "capture.backend.KEY", "clock", "loopback", "frequency"):
        assert word in text
