"""null, tone and loopback back ends, the option registry, and the bounded ring."""

from __future__ import annotations

import uuid

import numpy as np
import pytest

from pyvmm.errors import VmmError
from pyvmm_snd import pcm_format
from pyvmm_snd.backends import BACKENDS, BackendError, BackendParams, create_backend, describe_backends
from pyvmm_snd.backends.ring import ByteRing
from pyvmm_snd.spec import Direction, PcmFormat


def params(direction, fmt=PcmFormat.S16, channels=2, rate=48000, period_frames=480, periods=4, stream_id=0):
    fb = pcm_format.frame_bytes(fmt, channels)
    return BackendParams(stream_id, direction, channels, fmt, rate, period_frames * fb, periods * period_frames * fb)


def test_registry_and_option_errors():
    assert set(BACKENDS) == {"null", "wav", "tone", "loopback", "pyaudio"}
    with pytest.raises(VmmError, match="unknown backend 'alsa'.*known: null, wav, tone, loopback, pyaudio"):
        create_backend("alsa", {}, Direction.OUTPUT)
    with pytest.raises(VmmError, match="backend null: unknown option 'x' \\(known: none\\)"):
        create_backend("null", {"x": "1"}, Direction.OUTPUT)
    with pytest.raises(VmmError, match="frequency='abc' is not a number"):
        create_backend("tone", {"frequency": "abc"}, Direction.INPUT)
    with pytest.raises(VmmError, match="amplitude=2 is outside 0..1"):
        create_backend("tone", {"amplitude": "2"}, Direction.INPUT)
    text = describe_backends()
    for name, kind in BACKENDS.items():
        assert name in text
        assert all(key in text for key in kind.options)


def test_backend_params_validation_and_helpers():
    p = params(Direction.OUTPUT, PcmFormat.S24_3, 2, 44100, 441)
    assert p.frame_bytes == 6 and p.period_frames == 441 and p.period_seconds == pytest.approx(0.01)
    assert p.bytes_for(0.5) == 22050 * 6
    with pytest.raises(ValueError, match="not supported"):
        BackendParams(0, Direction.OUTPUT, 2, PcmFormat.DSD_U8, 8000, 160, 640)
    with pytest.raises(ValueError, match="impossible"):
        BackendParams(0, Direction.OUTPUT, 0, PcmFormat.S16, 8000, 160, 640)

    class StreamParams:  # what the control plane's PcmParams offers
        channels, format, rate_hz, period_bytes, buffer_bytes = 2, 5, 48000, 1920, 7680

    q = BackendParams.from_stream(3, 1, StreamParams())
    assert (q.stream_id, q.direction, q.format, q.rate) == (3, Direction.INPUT, PcmFormat.S16, 48000)


def test_backend_params_from_the_control_planes_params():
    from pyvmm_snd.spec import PcmRate
    from pyvmm_snd.stream import PcmParams

    control = PcmParams(buffer_bytes=4 * 2646, period_bytes=2646, features=0, channels=3,
                        format=PcmFormat.S24_3, rate=PcmRate.RATE_44100)
    p = BackendParams.from_stream(1, Direction.OUTPUT, control)
    assert (p.channels, p.format, p.rate, p.period_bytes, p.buffer_bytes) == (3, PcmFormat.S24_3, 44100, 2646,
                                                                               4 * 2646)
    assert p.period_frames == control.period_frames and p.period_seconds == pytest.approx(control.period_seconds)


def test_null_backend():
    out = create_backend("null", {}, Direction.OUTPUT)
    with pytest.raises(BackendError, match="not open"):
        out.write(b"\0" * 4)
    with pytest.raises(BackendError, match="opened on a output"):
        out.open(params(Direction.INPUT))
    out.open(params(Direction.OUTPUT))
    out.write(b"\1" * 1920)
    assert out.stats.written == 1920 and out.latency_bytes == 0
    out.close()
    out.close()
    cap = create_backend("null", {}, Direction.INPUT)
    cap.open(params(Direction.INPUT, PcmFormat.U8, 1))
    assert cap.read(480) == b"\x80" * 480


def zero_crossings(x: np.ndarray) -> int:
    return int(np.count_nonzero(np.signbit(x[1:]) != np.signbit(x[:-1])))


@pytest.mark.parametrize("fmt", [PcmFormat.S16, PcmFormat.FLOAT, PcmFormat.U8, PcmFormat.S24])
def test_tone_frequency_amplitude_and_phase_continuity(fmt):
    tone = create_backend("tone", {"frequency": "1000", "amplitude": "0.25"}, Direction.INPUT)
    p = params(Direction.INPUT, fmt, 2, 48000, 441)  # 441 frames: not a whole number of 1 kHz cycles
    tone.open(p)
    data = b"".join(tone.read(p.period_bytes) for _ in range(100))  # 0.91875 s
    samples = pcm_format.to_float(data, fmt, np.float64).reshape(-1, 2)
    assert np.array_equal(samples[:, 0], samples[:, 1])
    left = samples[:, 0]
    seconds = len(left) / 48000
    assert zero_crossings(left - (left.max() + left.min()) / 2) == pytest.approx(2 * 1000 * seconds, abs=2)
    spectrum = np.abs(np.fft.rfft(left))
    assert np.argmax(spectrum) / seconds == pytest.approx(1000, abs=1.5)
    assert left.max() == pytest.approx(0.25, abs=0.01)
    # continuity: the same signal as one long read (no phase jump at period boundaries)
    whole = create_backend("tone", {"frequency": "1000", "amplitude": "0.25"}, Direction.INPUT)
    whole.open(p)
    one_read = pcm_format.to_float(whole.read(len(data)), fmt, np.float64).reshape(-1, 2)
    step = 1 / (1 << (pcm_format.sample_format(fmt).width - 1))
    assert np.allclose(one_read, samples, rtol=0, atol=max(step, 1e-6))


def test_tone_restarts_phase_on_open_and_discards_playback():
    tone = create_backend("tone", {}, Direction.INPUT)
    p = params(Direction.INPUT)
    tone.open(p)
    first = tone.read(p.period_bytes)
    tone.read(p.period_bytes)
    tone.close()
    tone.open(p)
    assert tone.read(p.period_bytes) == first
    sink = create_backend("tone", {}, Direction.OUTPUT)
    sink.open(params(Direction.OUTPUT))
    sink.write(b"\0" * 1920)
    assert sink.stats.written == 1920


def loopback_pair(name=None, capacity_ms="500", **kw):
    name = name or uuid.uuid4().hex
    out = create_backend("loopback", {"name": name, "capacity_ms": capacity_ms}, Direction.OUTPUT)
    cap = create_backend("loopback", {"name": name}, Direction.INPUT)
    return out, cap


def test_loopback_pairs_by_name():
    out, cap = loopback_pair()
    other = create_backend("loopback", {"name": "someone-else-" + uuid.uuid4().hex}, Direction.INPUT)
    p_out, p_in = params(Direction.OUTPUT), params(Direction.INPUT, stream_id=1)
    out.open(p_out)
    cap.open(p_in)
    other.open(p_in)
    periods = [bytes([i]) * p_out.period_bytes for i in range(1, 4)]
    for period in periods:
        out.write(period)
    assert out.latency_bytes == 3 * p_out.period_bytes
    assert [cap.read(p_in.period_bytes) for _ in range(3)] == periods
    assert other.read(p_in.period_bytes) == bytes(p_in.period_bytes)
    assert cap.stats.underrun == 0 and other.stats.underrun == p_in.period_bytes


def test_loopback_overflow_drops_oldest_and_underflow_gives_silence():
    out, cap = loopback_pair(capacity_ms="20")  # two 10 ms periods
    p_out, p_in = params(Direction.OUTPUT), params(Direction.INPUT)
    out.open(p_out)
    cap.open(p_in)
    periods = [bytes([i]) * p_out.period_bytes for i in range(1, 6)]
    for period in periods:
        out.write(period)
    assert out.stats.overflow == 3 * p_out.period_bytes
    assert cap.read(p_in.period_bytes) == periods[3]
    assert cap.read(p_in.period_bytes) == periods[4]
    assert cap.read(p_in.period_bytes) == bytes(p_in.period_bytes)
    assert cap.stats.underrun == p_in.period_bytes
    out.write(periods[0][:1000])  # half a period available: the rest is silence
    assert cap.read(p_in.period_bytes) == periods[0][:1000] + bytes(p_in.period_bytes - 1000)
    assert cap.stats.underrun == 2 * p_in.period_bytes - 1000


def test_loopback_converts_format_and_channels():
    out, cap = loopback_pair()
    out.open(params(Direction.OUTPUT, PcmFormat.S16, 2))
    cap.open(params(Direction.INPUT, PcmFormat.FLOAT, 1))
    out.write(np.array([16384, -1, -32768, 5] * 240, dtype="<i2").tobytes())
    got = np.frombuffer(cap.read(4 * 480), "<f4")
    assert got[:2].tolist() == [0.5, -1.0]
    assert len(got) == 480


def test_loopback_reader_before_writer_gets_silence():
    out, cap = loopback_pair()
    cap.open(params(Direction.INPUT, PcmFormat.U8, 1))
    assert cap.read(100) == b"\x80" * 100


def test_byte_ring_alignment_and_counters():
    ring = ByteRing(10, align=4)
    assert ring.capacity == 8
    assert ring.write(b"abcdef") == 0
    assert ring.write(b"ghij") == 4  # drops "abcd"
    assert ring.read(3) == b""  # less than one unit
    assert ring.read(100) == b"efghij"[:4] and len(ring) == 2
    assert ring.short == 3 + 96
    with pytest.raises(ValueError):
        ByteRing(3, align=4)


def test_every_supported_format_has_a_wav_storage_and_a_portaudio_format():
    from pyvmm_snd.backends.pyaudio_backend import HOST_FORMAT
    from pyvmm_snd.backends.wavfile import WavLayout

    assert set(HOST_FORMAT) == pcm_format.SUPPORTED_FORMATS
    for fmt in pcm_format.SUPPORTED_FORMATS:
        layout = WavLayout.for_stream(fmt, 2, 48000)
        assert layout.valid_bits <= layout.container_bits
        assert HOST_FORMAT[fmt] in (PcmFormat.S8, PcmFormat.U8, PcmFormat.S16, PcmFormat.S24_3, PcmFormat.S32,
                                    PcmFormat.FLOAT)


def test_device_options_reach_create_backend(tmp_path):
    """``--device virtio-snd,backend=wav,backend.path=...``: the topology strips the prefix and
    one back end per stream is created from it (what the data plane does at start-up)."""
    from pyvmm_snd.topology import from_options

    topology = from_options({"playback": "2", "capture": "1", "backend": "wav",
                             "backend.path": str(tmp_path / "play-{stream}.wav"), "backend.loop": "on"})
    backends = [create_backend(topology.backend, topology.backend_options, stream.direction, stream_id)
                for stream_id, stream in enumerate(topology.streams)]
    assert [type(b).__name__ for b in backends] == ["WavSink", "WavSink", "WavSource"]
    assert backends[2].loop is True
    bad = from_options({"backend": "wav", "backend.paht": "x.wav"})
    with pytest.raises(VmmError, match="unknown option 'paht'"):
        create_backend(bad.backend, bad.backend_options, Direction.OUTPUT, 0)
