"""The wav back end: sink files re-read with an independent struct parser (and scipy),
header validity after SIGKILL, file naming across runs, and the WAV capture source."""

from __future__ import annotations

import signal
import struct
import subprocess
import sys
import textwrap
import wave

import numpy as np
import pytest

from pyvmm.errors import VmmError
from pyvmm_snd import pcm_format
from pyvmm_snd.backends import BackendParams, create_backend
from pyvmm_snd.spec import Direction, PcmFormat

RATE = 48000
PERIOD_FRAMES = 480


def parse_wav(path) -> dict:
    """Walk the RIFF chunks of ``path`` (independent of pyvmm_snd.backends.wavfile)."""
    blob = open(path, "rb").read()
    assert blob[:4] == b"RIFF" and blob[8:12] == b"WAVE", "not RIFF/WAVE"
    out = {"riff_size": struct.unpack_from("<I", blob, 4)[0], "file_size": len(blob)}
    pos = 12
    while pos + 8 <= len(blob):
        cid, size = blob[pos:pos + 4], struct.unpack_from("<I", blob, pos + 4)[0]
        body = blob[pos + 8:pos + 8 + size]
        if cid == b"fmt ":
            (out["tag"], out["channels"], out["rate"], out["byte_rate"], out["block_align"],
             out["bits"]) = struct.unpack_from("<HHIIHH", body)
            out["valid_bits"], out["subformat"] = out["bits"], out["tag"]
            if out["tag"] == 0xFFFE:
                cb, out["valid_bits"], out["mask"], out["subformat"] = struct.unpack_from("<HHII", body, 16)
                assert cb == 22
                assert body[28:40] == bytes.fromhex("00001000800000aa00389b71")
        elif cid == b"fact":
            out["fact_frames"] = struct.unpack_from("<I", body)[0]
        elif cid == b"data":
            out["data_offset"], out["data_size"], out["data"] = pos + 8, size, body
            break
        pos += 8 + size + (size & 1)
    return out


def params(fmt=PcmFormat.S16, channels=2, rate=RATE, stream_id=0, direction=Direction.OUTPUT):
    fb = pcm_format.frame_bytes(fmt, channels)
    return BackendParams(stream_id, direction, channels, fmt, rate, PERIOD_FRAMES * fb, 4 * PERIOD_FRAMES * fb)


def random_frames(fmt, channels, frames, seed=0) -> bytes:
    rng = np.random.default_rng(seed)
    sf = pcm_format.sample_format(fmt)
    n = frames * channels
    if sf.is_float:
        return rng.uniform(-1, 1, n).astype(sf.container_dtype).tobytes()
    low, high = sf.int_range
    return pcm_format.encode_int(rng.integers(low, high + 1, n), fmt)


# (virtio format, expected WAV tag/subformat, container bits, valid bits, expected data from written bytes)
FORMAT_CASES = [
    (PcmFormat.S16, 1, 16, 16, lambda raw: raw),
    (PcmFormat.S24, 1, 32, 24, lambda raw: struct.pack(f"<{len(raw) // 4}i",
                                                       *[v << 8 for v in struct.unpack(f"<{len(raw) // 4}i", raw)])),
    (PcmFormat.S24_3, 1, 24, 24, lambda raw: raw),
    (PcmFormat.S32, 1, 32, 32, lambda raw: raw),
    (PcmFormat.FLOAT, 3, 32, 32, lambda raw: raw),
    (PcmFormat.FLOAT64, 3, 64, 64, lambda raw: raw),
    (PcmFormat.U8, 1, 8, 8, lambda raw: raw),
    (PcmFormat.S8, 1, 8, 8, lambda raw: bytes(b ^ 0x80 for b in raw)),
    (PcmFormat.U16, 1, 16, 16, lambda raw: bytes(b ^ 0x80 if i % 2 else b for i, b in enumerate(raw))),
    (PcmFormat.MU_LAW, 1, 16, 16, lambda raw: pcm_format.convert(raw, PcmFormat.MU_LAW, PcmFormat.S16)),
]


@pytest.mark.parametrize("channels", [1, 2, 6])
@pytest.mark.parametrize("fmt, subformat, bits, valid, expect", FORMAT_CASES, ids=lambda c: getattr(c, "name", ""))
def test_sink_writes_sample_exact_wav(tmp_path, fmt, subformat, bits, valid, expect, channels):
    path = tmp_path / "out.wav"
    sink = create_backend("wav", {"path": str(path)}, Direction.OUTPUT, 0)
    p = params(fmt, channels)
    sink.open(p)
    periods = [random_frames(fmt, channels, PERIOD_FRAMES, seed) for seed in range(7)]
    for period in periods:
        sink.write(period)
        live = parse_wav(path)  # valid while recording
        assert live["data_size"] == len(live["data"]) and live["riff_size"] == live["file_size"] - 8
    sink.close()
    sink.close()  # idempotent
    wav = parse_wav(path)
    written = b"".join(periods)
    assert wav["data"] == expect(written)
    assert wav["data_size"] == len(wav["data"]) == 7 * PERIOD_FRAMES * channels * bits // 8
    assert wav["riff_size"] == wav["file_size"] - 8
    assert (wav["channels"], wav["rate"], wav["bits"], wav["valid_bits"]) == (channels, RATE, bits, valid)
    assert wav["subformat"] == subformat
    assert wav["block_align"] == channels * bits // 8 and wav["byte_rate"] == RATE * channels * bits // 8
    extensible = channels > 2 or bits > 16 and subformat == 1 or valid != bits
    assert wav["tag"] == (0xFFFE if extensible else subformat)
    if wav["tag"] != 1:
        assert wav["fact_frames"] == 7 * PERIOD_FRAMES
    assert sink.stats.written == len(written)


def test_sink_output_reads_back_with_scipy(tmp_path):
    scipy_wavfile = pytest.importorskip("scipy.io.wavfile")
    for fmt, dtype, shift in [(PcmFormat.S16, np.int16, 0), (PcmFormat.S24, np.int32, 8),
                              (PcmFormat.FLOAT, np.float32, 0)]:
        path = tmp_path / f"{fmt.name}.wav"
        sink = create_backend("wav", {"path": str(path)}, Direction.OUTPUT)
        sink.open(params(fmt, 6))
        raw = random_frames(fmt, 6, 1000, seed=3)
        sink.write(raw)
        sink.close()
        rate, data = scipy_wavfile.read(path)
        assert rate == RATE and data.shape == (1000, 6) and data.dtype == dtype
        source = np.frombuffer(raw, dtype=dtype).reshape(-1, 6)
        assert np.array_equal(data, source.astype(np.int64) << shift if shift else source)


def test_stdlib_wave_reads_plain_pcm(tmp_path):
    path = tmp_path / "s16.wav"
    sink = create_backend("wav", {"path": str(path)}, Direction.OUTPUT)
    sink.open(params(PcmFormat.S16, 2))
    raw = random_frames(PcmFormat.S16, 2, 960)
    sink.write(raw)
    sink.close()
    with wave.open(str(path)) as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate(), w.getnframes()) == (2, 2, RATE, 960)
        assert w.readframes(960) == raw


def test_odd_sized_data_gets_a_pad_byte(tmp_path):
    path = tmp_path / "u8.wav"
    sink = create_backend("wav", {"path": str(path)}, Direction.OUTPUT)
    sink.open(params(PcmFormat.U8, 1))
    sink.write(b"\x10\x20\x30")
    sink.close()
    wav = parse_wav(path)
    assert wav["data_size"] == 3 and wav["riff_size"] == wav["file_size"] - 8 == 4 + 24 + 8 + 4
    assert wav["data"] == b"\x10\x20\x30"


KILL_SCRIPT = textwrap.dedent("""
    import sys, time
    import numpy as np
    from pyvmm_snd import pcm_format
    from pyvmm_snd.backends import BackendParams, create_backend
    from pyvmm_snd.spec import Direction, PcmFormat
    path, fmt, channels = sys.argv[1], PcmFormat[sys.argv[2]], int(sys.argv[3])
    fb = pcm_format.frame_bytes(fmt, channels)
    sink = create_backend("wav", {"path": path}, Direction.OUTPUT, 0)
    sink.open(BackendParams(0, Direction.OUTPUT, channels, fmt, 48000, 480 * fb, 1920 * fb))
    n = 0
    while True:
        sink.write(bytes([n % 251 + 1]) * (480 * fb))
        n += 1
        print(n, flush=True)
        time.sleep(0.001)
""")


@pytest.mark.parametrize("fmt, channels", [(PcmFormat.S16, 2), (PcmFormat.FLOAT, 6), (PcmFormat.S24, 2)])
def test_header_is_valid_after_sigkill(tmp_path, fmt, channels):
    path = tmp_path / "killed.wav"
    proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, str(path), fmt.name, str(channels)],
                            stdout=subprocess.PIPE, text=True)
    try:
        for line in proc.stdout:
            if int(line) >= 40:
                break
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    wav = parse_wav(path)
    frame = pcm_format.frame_bytes(fmt, channels)
    if fmt == PcmFormat.S24:
        frame = 4 * channels
    period = 480 * frame
    present = wav["file_size"] - wav["data_offset"]
    assert wav["data_size"] % period == 0, "header counts whole periods"
    assert 40 * period <= wav["data_size"] <= present, "header never claims bytes that are not there"
    assert present - wav["data_size"] < period, "at most the last period is unaccounted"
    assert wav["riff_size"] == wav["data_offset"] - 8 + wav["data_size"]
    data = wav["data"]
    for n in range(wav["data_size"] // period):
        chunk = data[n * period:(n + 1) * period]
        expected = bytes([n % 251 + 1]) * period
        if fmt == PcmFormat.S24:
            expected = pcm_format.convert(bytes([n % 251 + 1]) * period, PcmFormat.S24, PcmFormat.S32)
        assert chunk == expected, f"period {n} corrupted"


def test_reopen_same_params_appends_different_params_new_file(tmp_path):
    path = tmp_path / "run.wav"
    sink = create_backend("wav", {"path": str(path)}, Direction.OUTPUT, 0)
    a, b, c = (random_frames(PcmFormat.S16, 2, 480, seed) for seed in (1, 2, 3))
    sink.open(params(PcmFormat.S16, 2))
    sink.write(a)
    sink.close()
    sink.open(params(PcmFormat.S16, 2))  # e.g. STOP/RELEASE/PREPARE/START with the same parameters
    sink.write(b)
    sink.close()
    assert parse_wav(path)["data"] == a + b
    sink.open(params(PcmFormat.S16, 1))  # new SET_PARAMS run
    sink.write(c)
    sink.close()
    second = tmp_path / "run-1.wav"
    assert parse_wav(second)["data"] == c and parse_wav(second)["channels"] == 1
    sink.open(params(PcmFormat.FLOAT, 1))
    sink.write(random_frames(PcmFormat.FLOAT, 1, 10))
    sink.close()
    assert parse_wav(tmp_path / "run-2.wav")["tag"] == 3
    assert sink.files == [path, second, tmp_path / "run-2.wav"]
    assert parse_wav(path)["data"] == a + b  # earlier files untouched


def test_stream_placeholder_and_path_clash(tmp_path):
    template = str(tmp_path / "out-{stream}.wav")
    s0 = create_backend("wav", {"path": template}, Direction.OUTPUT, 0)
    s2 = create_backend("wav", {"path": template}, Direction.OUTPUT, 2)
    for stream_id, sink in ((0, s0), (2, s2)):
        sink.open(params(stream_id=stream_id))
        sink.write(random_frames(PcmFormat.S16, 2, 48, stream_id))
        sink.close()
    assert (tmp_path / "out-0.wav").exists() and (tmp_path / "out-2.wav").exists()
    fixed = str(tmp_path / "same.wav")
    keep = create_backend("wav", {"path": fixed}, Direction.OUTPUT, 0)
    with pytest.raises(VmmError, match=r"already written by another stream.*\{stream\}"):
        create_backend("wav", {"path": fixed}, Direction.OUTPUT, 1)
    del keep


def test_wav_option_errors(tmp_path):
    with pytest.raises(VmmError, match="playback streams need backend.path"):
        create_backend("wav", {}, Direction.OUTPUT)
    with pytest.raises(VmmError, match="unknown option 'paht'.*known: path, input, loop, fsync"):
        create_backend("wav", {"paht": "x.wav"}, Direction.OUTPUT)
    with pytest.raises(VmmError, match="cannot read input"):
        create_backend("wav", {"input": str(tmp_path / "missing.wav")}, Direction.INPUT)
    (tmp_path / "junk.wav").write_bytes(b"RIFX" + bytes(40))
    with pytest.raises(VmmError, match="not a RIFF/WAVE file"):
        create_backend("wav", {"input": str(tmp_path / "junk.wav")}, Direction.INPUT)
    with pytest.raises(VmmError, match="loop='maybe' is not on/off"):
        create_backend("wav", {"loop": "maybe"}, Direction.INPUT)
    sink = create_backend("wav", {"path": str(tmp_path / "no-such-dir" / "x.wav")}, Direction.OUTPUT)
    with pytest.raises(VmmError, match="cannot open"):  # not checked without a stream id: found at open
        sink.open(params())
    assert not sink.is_open


# -- capture source -----------------------------------------------------------------------------


def write_pcm_wav(path, raw: bytes, channels: int, width: int, rate: int = RATE) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(raw)


def capture(options, p, periods: int) -> tuple[list[bytes], object]:
    source = create_backend("wav", options, Direction.INPUT)
    source.open(p)
    return [source.read(p.period_bytes) for _ in range(periods)], source


def test_source_same_format_is_exact_then_silence(tmp_path):
    raw = random_frames(PcmFormat.S16, 2, 1000)
    write_pcm_wav(tmp_path / "in.wav", raw, 2, 2)
    p = params(PcmFormat.S16, 2, direction=Direction.INPUT)
    got, source = capture({"input": str(tmp_path / "in.wav")}, p, 4)
    data = b"".join(got)
    assert all(len(chunk) == p.period_bytes for chunk in got)
    assert data[:4000] == raw
    assert data[4000:] == bytes(len(data) - 4000)
    assert source.stats.events["eof_silence_bytes"] == len(data) - 4000


def test_source_loops(tmp_path):
    raw = random_frames(PcmFormat.S16, 1, 700)
    write_pcm_wav(tmp_path / "in.wav", raw, 1, 2)
    p = params(PcmFormat.S16, 1, direction=Direction.INPUT)
    got, source = capture({"input": str(tmp_path / "in.wav"), "loop": "on"}, p, 5)
    data = b"".join(got)
    assert data == (raw * 4)[:len(data)]
    assert source.stats.events["loops"] == 3


def test_source_converts_format_and_channels(tmp_path):
    values = np.array([0, 16384, -32768, 32767], dtype=np.int16)
    write_pcm_wav(tmp_path / "mono.wav", values.tobytes(), 1, 2)
    p = params(PcmFormat.FLOAT, 2, direction=Direction.INPUT)
    got, _ = capture({"input": str(tmp_path / "mono.wav")}, p, 1)
    samples = np.frombuffer(got[0], "<f4").reshape(-1, 2)
    assert samples[:4].tolist() == [[0, 0], [0.5, 0.5], [-1, -1], [32767 / 32768] * 2]
    assert not samples[4:].any()
    # 6 channels to stereo keeps the first two; U8 file to S24 stream
    write_pcm_wav(tmp_path / "u8.wav", bytes([0x80, 0x90, 0x70, 1, 2, 3]), 6, 1)
    got, _ = capture({"input": str(tmp_path / "u8.wav")}, params(PcmFormat.S24, 2, direction=Direction.INPUT), 1)
    assert struct.unpack_from("<2i", got[0]) == (0, 0x10 << 16)


def test_source_reads_float_and_extensible_files_written_by_the_sink(tmp_path):
    for fmt in (PcmFormat.FLOAT, PcmFormat.S24):
        path = tmp_path / f"{fmt.name}.wav"
        raw = random_frames(fmt, 6, 960, seed=9)
        sink = create_backend("wav", {"path": str(path)}, Direction.OUTPUT)
        sink.open(params(fmt, 6))
        sink.write(raw)
        sink.close()
        got, _ = capture({"input": str(path)}, params(fmt, 6, direction=Direction.INPUT), 2)
        assert b"".join(got) == raw


def test_source_resamples_rate_mismatch(tmp_path):
    rate_in, freq = 8000, 500
    t = np.arange(8000) / rate_in
    tone = (np.sin(2 * np.pi * freq * t) * 20000).astype(np.int16)
    write_pcm_wav(tmp_path / "8k.wav", tone.tobytes(), 1, 2, rate_in)
    p = params(PcmFormat.FLOAT, 1, rate=16000, direction=Direction.INPUT)
    got, source = capture({"input": str(tmp_path / "8k.wav")}, p, 34)
    samples = np.frombuffer(b"".join(got), "<f4")
    content = samples[:16000]
    assert np.abs(samples[16000:]).max() == 0
    spectrum = np.abs(np.fft.rfft(content))
    assert np.argmax(spectrum) * 16000 / len(content) == pytest.approx(freq, abs=2)
    assert np.abs(content).max() == pytest.approx(20000 / 32768, abs=0.01)


def test_source_without_input_records_silence():
    p = params(PcmFormat.U8, 2, direction=Direction.INPUT)
    got, _ = capture({}, p, 2)
    assert got == [b"\x80" * p.period_bytes] * 2


def test_underrun_silence_is_recorded_and_counted(tmp_path):
    path = tmp_path / "gap.wav"
    sink = create_backend("wav", {"path": str(path), "fsync": "on"}, Direction.OUTPUT)
    p = params(PcmFormat.U8, 2)
    sink.open(p)
    sink.write(b"\x01" * p.period_bytes)
    sink.play_silence(p.period_bytes)
    sink.write(b"\x02" * p.period_bytes)
    sink.close()
    assert parse_wav(path)["data"] == b"\x01" * p.period_bytes + b"\x80" * p.period_bytes + b"\x02" * p.period_bytes
    assert sink.stats.underrun == p.period_bytes


def test_riff_size_limit_rolls_over_to_next_file(tmp_path, monkeypatch):
    from pyvmm_snd.backends import wav

    p = params(PcmFormat.S16, 2)
    monkeypatch.setattr(wav, "MAX_RIFF_SIZE", 44 + 2 * p.period_bytes + 1)
    path = tmp_path / "long.wav"
    sink = create_backend("wav", {"path": str(path)}, Direction.OUTPUT)
    sink.open(p)
    periods = [bytes([i]) * p.period_bytes for i in range(1, 6)]
    for period in periods:
        sink.write(period)
    sink.close()
    assert [parse_wav(f)["data"] for f in sink.files] == [periods[0] + periods[1], periods[2] + periods[3],
                                                          periods[4]]
    assert sink.files == [path, tmp_path / "long-1.wav", tmp_path / "long-2.wav"]


def test_source_accepts_streaming_headers_and_extra_chunks(tmp_path):
    """arecord writing to a pipe leaves data size 0xFFFFFFFF; other tools add LIST chunks."""
    raw = random_frames(PcmFormat.S16, 2, 300, seed=4)
    fmt_body = struct.pack("<HHIIHH", 1, 2, RATE, RATE * 4, 4, 16)
    blob = (b"RIFF" + struct.pack("<I", 0xFFFFFFFF) + b"WAVE" + b"fmt " + struct.pack("<I", 16) + fmt_body
            + b"LIST" + struct.pack("<I", 5) + b"INFOx\0" + b"data" + struct.pack("<I", 0xFFFFFFFF) + raw + b"\1\2")
    (tmp_path / "stream.wav").write_bytes(blob)
    got, _ = capture({"input": str(tmp_path / "stream.wav")}, params(PcmFormat.S16, 2, direction=Direction.INPUT), 1)
    assert got[0] == raw + bytes(1920 - len(raw))  # whole frames present, then silence
