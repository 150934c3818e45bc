"""The data plane under pyvmm's own KVM VMM (virtio-mmio), one boot (about 100 s on this
platform): bit-exact playback of a test file and of the guest's ramp WAV, bit-exact capture
from a host WAV (md5 printed by the guest), speaker-test, and not one rejected request."""

from __future__ import annotations

import io
import subprocess
import wave

import numpy as np
import pytest

from guest_helpers import md5, noise, wav_data
from pyvmm.cpio import CpioEntry, build_cpio
from vmm_cli import pyvmm_argv

pytestmark = [pytest.mark.kvm, pytest.mark.guest]

RUN_TIMEOUT = 600
PLAY = np.random.default_rng(3).integers(-2**31, 2**31, 48000 * 6 // 5, endpoint=False).astype("<i4").tobytes()
"""0.2 s of 6-channel S32_LE at 48 kHz."""

SCRIPT = "; ".join([
    "aplay -q -D hw:0,0 -t raw -f S32_LE -c 6 -r 48000 /test/play.raw; echo aplay_raw=$?",
    "aplay -v -D hw:0,0 /usr/share/pyvmm/ramp-s16le-48000-2ch.wav; echo aplay_wav=$?",
    # Capture runs in real time whatever the clock: a buffer twice the recording's length, so a
    # guest that the emulator starves for half a second (seen on a slow machine in CI: an ALSA
    # overrun with arecord's default buffer, and a capture that was no longer bit-exact) still
    # reads every frame.
    "arecord -q -D hw:0,0 -t raw -f S16_LE -c 2 -r 48000 --period-time=250000 --buffer-time=2000000"
    " -d 1 /tmp/rec.raw; echo arecord=$?",
    "echo rec_bytes=$(wc -c < /tmp/rec.raw)",
    "md5sum /tmp/rec.raw",
    "speaker-test -D hw:0,0 -c2 -t sine -l1 >/dev/null; echo speaker_test=$?",
])


def test_playback_capture_speaker_test_under_kvm(guest_image, tmp_path):
    from pyvmm.guestimage.testaudio import ramp_wav

    source = noise(48000 * 4 * 2, seed=11)
    with wave.open(str(tmp_path / "in.wav"), "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(48000)
        w.writeframes(source)
    extra = tmp_path / "extra.cpio"
    extra.write_bytes(build_cpio([CpioEntry.file("/test/play.raw", PLAY)]))
    device = ",".join(["virtio-snd", "clock=fast", f"backend.path={tmp_path}/out{{stream}}.wav",
                       "capture.backend=wav", f"capture.backend.input={tmp_path}/in.wav"])
    proc = subprocess.run(
        pyvmm_argv("run", "-v", "--device", device, "--extra-initrd", str(extra), "--timeout", str(RUN_TIMEOUT - 30),
                   "--", "sh", "-c", SCRIPT),
        stdin=subprocess.DEVNULL, capture_output=True, timeout=RUN_TIMEOUT)
    out = proc.stdout.decode(errors="replace")
    err = proc.stderr.decode(errors="replace")
    assert proc.returncode == 0, out[-3000:] + err[-3000:]
    for key in ("aplay_raw=0", "aplay_wav=0", "arecord=0", "speaker_test=0", f"rec_bytes={48000 * 4}"):
        assert key in out, out[-3000:]
    assert f"{md5(source[:48000 * 4])}  /tmp/rec.raw" in out  # capture: bit-exact
    files = [tmp_path / "out0.wav", tmp_path / "out0-1.wav"]  # 6ch S32, then 2ch S16 (speaker-test appends)
    assert sorted(tmp_path.glob("out0*.wav")) == sorted(files)
    layout, data = wav_data(files[0])
    assert (layout.channels, layout.rate) == (6, 48000)
    assert data[:len(PLAY)] == PLAY and data[len(PLAY):] == bytes(len(data) - len(PLAY))
    with wave.open(io.BytesIO(ramp_wav(48000, 2, 4800))) as w:
        ramp = w.readframes(w.getnframes())
    _, data = wav_data(files[1])
    assert data[:len(ramp)] == ramp
    rejected = [line for line in err.splitlines() if "WARNING pyvmm_snd" in line]
    assert rejected == []
    print("\n" + "\n".join(line for line in out.splitlines() if "_size" in line))
