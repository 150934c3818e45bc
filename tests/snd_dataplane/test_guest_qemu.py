"""End to end with the real Linux virtio_snd driver: QEMU (TCG) in front, pyvmm's device
behind it over vhost-user (``tests/qemu_harness.py``); a boot takes about a second.

* fast clock, WAV sink and WAV source: bit-exact playback for several formats, channel
  counts and rates (``aplay -t raw``), the ramp WAV of the default guest, bit-exact capture
  (the guest's ``md5sum`` of what ``arecord`` wrote), ``speaker-test``;
* real-time clock, loopback back end: the guest records what it plays;
* real-time clock, WAV sink: a playing ``aplay`` stopped with SIGSTOP for a second.

Skipped with a message when QEMU or the default guest image cannot be had.
"""

from __future__ import annotations

import io
import re
import sys
import wave
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent.parent))
from guest_helpers import GUEST_DIR, WavWatcher, image_with_files, md5, noise, wav_data  # noqa: E402
from qemu_harness import guest_and_qemu_or_skip, qemu_sound_guest  # noqa: E402

pytestmark = pytest.mark.qemu

TIMEOUT = 120
HW = "-D hw:0,0"
MAX_PADDING_S = 0.160
"""aplay pads the last period with silence; the driver's largest buffer is 160 ms."""

# (ALSA format, numpy sample type, channels, rate, seconds)
PLAYBACK_CASES = [
    ("S16_LE", "<i2", 2, 48000, 0.5),
    ("S16_LE", "<i2", 1, 8000, 0.5),
    ("S16_LE", "<i2", 6, 44100, 0.3),
    ("S24_LE", "<i4", 2, 96000, 0.3),
    ("S32_LE", "<i4", 6, 48000, 0.3),
    ("FLOAT_LE", "<f4", 2, 192000, 0.3),
    ("S32_LE", "<i4", 1, 192000, 0.3),
]


def case_id(case) -> str:
    fmt, _, channels, rate, _ = case
    return f"{fmt}-{channels}ch-{rate}"


def source_samples(case, seed: int) -> bytes:
    fmt, dtype, channels, rate, seconds = case
    n = int(rate * seconds) * channels
    rng = np.random.default_rng(seed)
    if fmt == "FLOAT_LE":
        return rng.uniform(-1, 1, n).astype(dtype).tobytes()
    if fmt == "S24_LE":  # 24-bit samples in 32-bit containers, sign-extended (ALSA's S24_LE)
        return rng.integers(-2**23, 2**23, n).astype(dtype).tobytes()
    info = np.iinfo(np.dtype(dtype))
    return rng.integers(info.min, info.max, n, endpoint=True).astype(dtype).tobytes()


def host_samples(case, layout, data: bytes) -> bytes:
    """The sink's WAV data back in the stream's format (the WAV keeps 24-bit samples MSB-aligned)."""
    if case[0] == "S24_LE":
        return (np.frombuffer(data, "<i4") >> 8).astype("<i4").tobytes()
    return data


CAPTURE_SOURCE_S = 1.5


@pytest.fixture(scope="module")
def image():
    return guest_and_qemu_or_skip()


@pytest.fixture(scope="module")
def files():
    """Guest path -> bytes of every test file, shared by the boots."""
    out = {f"{GUEST_DIR}/play{i}.raw": source_samples(case, i) for i, case in enumerate(PLAYBACK_CASES)}
    out[f"{GUEST_DIR}/noise.raw"] = noise(48000 * 4 * 3, seed=99)  # 3 s 48 kHz stereo S16
    return out


def boot(image, files, tmp: Path, options: dict[str, str]):
    guest_image, qemu = image
    with_files = image_with_files(guest_image, files, tmp)
    return qemu_sound_guest(options, image=with_files, qemu=qemu)


@pytest.fixture(scope="module")
def fast_guest(image, files, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("snd-fast")
    source = noise(int(48000 * CAPTURE_SOURCE_S) * 4, seed=7)
    with wave.open(str(tmp / "in.wav"), "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(48000)
        w.writeframes(source)
    options = {"clock": "fast", "backend.path": str(tmp / "out{stream}.wav"),
               "capture.backend": "wav", "capture.backend.input": str(tmp / "in.wav")}
    with boot(image, files, tmp, options) as guest:
        guest.tmp = tmp
        guest.capture_source = source
        guest.watcher = WavWatcher(tmp)
        yield guest


@pytest.mark.parametrize("index,case", list(enumerate(PLAYBACK_CASES)), ids=[case_id(c) for c in PLAYBACK_CASES])
def test_playback_is_bit_exact(fast_guest, files, index, case):
    fmt, _, channels, rate, _ = case
    out = fast_guest.session.run(f"aplay -q {HW} -t raw -f {fmt} -c {channels} -r {rate} {GUEST_DIR}/play{index}.raw",
                                 timeout=TIMEOUT)
    assert out.status == 0, out.output
    layout, data = fast_guest.watcher.new_audio()
    assert (layout.channels, layout.rate) == (channels, rate)
    played = host_samples(case, layout, data)
    source = files[f"{GUEST_DIR}/play{index}.raw"]
    assert played[:len(source)] == source
    padding = played[len(source):]
    assert padding == bytes(len(padding))  # aplay's silence after the last full period
    assert len(padding) <= MAX_PADDING_S * rate * channels * np.dtype(case[1]).itemsize


def test_aplay_ramp_wav_shows_period_and_buffer(fast_guest):
    from pyvmm.guestimage.testaudio import ramp_wav

    out = fast_guest.session.check(f"aplay -v {HW} /usr/share/pyvmm/ramp-s16le-48000-2ch.wav", timeout=TIMEOUT)
    period = int(re.search(r"period_size\s*:\s*(\d+)", out).group(1))
    buffer = int(re.search(r"buffer_size\s*:\s*(\d+)", out).group(1))
    assert 0 < period <= buffer and buffer % period == 0, out
    layout, data = fast_guest.watcher.new_audio()
    wav = ramp_wav(48000, 2, 4800)
    with wave.open(io.BytesIO(wav)) as w:
        source = w.readframes(w.getnframes())
    assert data[:len(source)] == source and data[len(source):] == bytes(len(data) - len(source))
    print(f"\naplay -v: period_size {period} frames, buffer_size {buffer} frames")


def test_capture_is_bit_exact(fast_guest):
    out = fast_guest.session.check(f"arecord -q {HW} -t raw -f S16_LE -c 2 -r 48000 -d 1 /tmp/rec.raw && "
                                   "wc -c < /tmp/rec.raw && md5sum /tmp/rec.raw", timeout=TIMEOUT)
    size, digest = int(out.split()[0]), out.split()[1]
    assert size == 48000 * 4
    assert digest == md5(fast_guest.capture_source[:size])


def test_speaker_test_completes(fast_guest):
    out = fast_guest.session.run(f"speaker-test {HW} -c2 -t sine -l1", timeout=TIMEOUT)
    assert out.status == 0, out.output
    assert "Front Left" in out.output and "Front Right" in out.output
    fast_guest.watcher.new_audio()


def test_no_request_was_rejected(fast_guest):
    log = fast_guest.backend_log.read_text()
    assert "WARNING pyvmm_snd" not in log, log[-3000:]


def test_loopback_records_what_it_plays(image, files, tmp_path):
    options = {"backend": "loopback", "backend.name": "e2e"}
    source = files[f"{GUEST_DIR}/noise.raw"][:48000 * 4 // 2]  # 0.5 s
    with boot(image, {**files, f"{GUEST_DIR}/half.raw": source}, tmp_path, options) as guest:
        fmt = "-t raw -f S16_LE -c 2 -r 48000 --period-size=480 --buffer-size=1920"
        script = (f"arecord -q {HW} {fmt} -d 2 /tmp/rec.raw & r=$!; sleep 0.3; "
                  f"aplay -q {HW} {fmt} {GUEST_DIR}/half.raw; echo aplay=$?; wait $r; echo arecord=$?")
        out = guest.session.run(f"sh -c '{script}'; echo -- BEGIN --; base64 /tmp/rec.raw; echo -- END --",
                                timeout=TIMEOUT)
        assert "aplay=0" in out.output and "arecord=0" in out.output, out.output[:2000]
        encoded = out.output.split("-- BEGIN --\n", 1)[1].split("-- END --", 1)[0].replace("\n", "")
    import base64

    recorded = base64.b64decode(encoded)
    assert recorded.find(source[:64]) >= 0, "the played audio is not in the recording"
    # Silence before and after (and in any gap a loaded host caused); the source has no zero byte.
    assert recorded.replace(b"\0", b"") == source


@pytest.fixture(scope="module")
def realtime_guest(image, files, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("snd-realtime")
    options = {"backend.path": str(tmp / "out{stream}.wav"), "capture.backend": "null"}
    with boot(image, files, tmp, options) as guest:
        guest.tmp = tmp
        guest.watcher = WavWatcher(tmp)
        yield guest


STOP_SCRIPT = ("sh -c 'aplay -q {hw} -t raw -f S16_LE -c 2 -r 48000 {extra} {file} & p=$!; sleep 1; kill -STOP $p; "
               "sleep 1; kill -CONT $p; wait $p; echo aplay=$?'")
"""In a non-interactive shell (no job control) ``wait`` returns when aplay exits, not when it stops."""


def test_sigstopped_aplay_device_plays_silence_for_the_gap(realtime_guest, files):
    """aplay with a stop delay: ALSA keeps the stream running through the starvation, so the
    device's clock finds no period, counts the underrun and plays silence; then carries on."""
    source = files[f"{GUEST_DIR}/noise.raw"]
    out = realtime_guest.session.run(STOP_SCRIPT.format(hw=HW, extra="--stop-delay=5000000",
                                                        file=f"{GUEST_DIR}/noise.raw"), timeout=TIMEOUT)
    assert "aplay=0" in out.output, out.output
    _, played = realtime_guest.watcher.new_audio()
    zeros = np.flatnonzero(np.frombuffer(played, np.uint8) == 0)
    assert len(zeros), "no silence in the host WAV"
    gap_start = int(zeros[0])
    gap_end = gap_start
    while gap_end < len(played) and played[gap_end] == 0:
        gap_end += 1
    gap_s = (gap_end - gap_start) / (48000 * 4)
    assert 0.25 < gap_s < 1.25, gap_s  # the second aplay was stopped, less the buffer it had queued
    assert played[:gap_start] == source[:gap_start]  # before: the audio, in order
    assert played[gap_end:gap_end + 64] == source[gap_start:gap_start + 64]  # after: where it stopped
    assert played.replace(b"\0", b"") == source  # nothing replayed, nothing lost (no zero byte in source)
    log = realtime_guest.backend_log.read_text()
    underruns = re.findall(r"stream 0: underrun: (\d+) periods", log)
    assert underruns, log[-2000:]
    print(f"\ndevice log: underrun of {underruns[-1]} periods; host WAV gap {gap_s * 1e3:.0f} ms")


def test_sigstopped_aplay_default_thresholds_guest_recovers(realtime_guest, files):
    """Default ALSA thresholds: the guest stops the stream itself when its buffer runs dry
    (aplay prints underrun), prepares and starts again; the host gets every frame once."""
    source = files[f"{GUEST_DIR}/noise.raw"]
    out = realtime_guest.session.run(STOP_SCRIPT.format(hw=HW, extra="", file=f"{GUEST_DIR}/noise.raw"),
                                     timeout=TIMEOUT)
    assert "aplay=0" in out.output, out.output
    assert "underrun" in out.output
    _, played = realtime_guest.watcher.new_audio()
    assert played.replace(b"\0", b"") == source  # every frame once, in order (no zero byte in source)


def test_two_playback_streams_and_a_capture_stream_at_once(image, files, tmp_path):
    """Two aplay (subdevices 0 and 1 of the card's PCM) and one arecord at the same time: they
    share the tx queue and the interrupt (playback on the fast clock, capture in real time)."""
    options = {"playback": "2", "capture": "1", "clock": "fast", "backend.path": str(tmp_path / "out{stream}.wav"),
               "capture.backend": "tone"}
    first, second = files[f"{GUEST_DIR}/play0.raw"], files[f"{GUEST_DIR}/play1.raw"]  # 48k stereo, 8k mono
    script = (f"aplay -q -D hw:0,0,0 -t raw -f S16_LE -c 2 -r 48000 {GUEST_DIR}/play0.raw & a=$!; "
              f"aplay -q -D hw:0,0,1 -t raw -f S16_LE -c 1 -r 8000 {GUEST_DIR}/play1.raw & b=$!; "
              "arecord -q -D hw:0,0 -t raw -f S16_LE -c 2 -r 44100 -d 1 /tmp/rec.raw; echo arecord=$?; "
              "wait $a; echo aplay0=$?; wait $b; echo aplay1=$?; echo rec_bytes=$(wc -c < /tmp/rec.raw)")
    with boot(image, files, tmp_path, options) as guest:
        out = guest.session.run(f"sh -c '{script}'", timeout=TIMEOUT).output
        log = guest.backend_log.read_text()
    for key in ("arecord=0", "aplay0=0", "aplay1=0", f"rec_bytes={44100 * 4}"):
        assert key in out, out
    for stream_id, source in ((0, first), (1, second)):
        _, data = wav_data(tmp_path / f"out{stream_id}.wav")
        assert data[:len(source)] == source, stream_id
        assert data[len(source):] == bytes(len(data) - len(source)), stream_id
    assert "WARNING pyvmm_snd" not in log
