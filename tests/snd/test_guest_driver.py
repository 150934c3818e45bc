"""The real Linux virtio_snd driver (default guest, 6.12) against the device: one boot that
probes the card, uses the mixer (dB scale from the TLV), plays and records through the
placeholder data plane, and must not provoke a single rejected request."""

from __future__ import annotations

import subprocess

import pytest

from vmm_cli import pyvmm_argv

pytestmark = [pytest.mark.kvm, pytest.mark.guest]

RUN_TIMEOUT = 500

GUEST_SCRIPT = "; ".join([
    "cat /proc/asound/cards /proc/asound/pcm",
    "amixer -c 0 contents",
    "amixer -c 0 sset PCM 50%",
    "aplay -D hw:0,0 -f S16_LE -r 48000 -c 2 -d 1 /dev/zero; echo aplay=$?",
    "arecord -D hw:0,0 -f S16_LE -r 48000 -c 2 -d 1 /tmp/r.wav; echo arecord=$?",
    "echo wav_bytes=$(wc -c < /tmp/r.wav)",
])


def test_linux_driver_probe_mixer_playback_capture(guest_image):
    proc = subprocess.run(
        pyvmm_argv("run", "-v", "--device", "virtio-snd,backend=null", "--timeout", str(RUN_TIMEOUT - 20),
                   "--", "sh", "-c", GUEST_SCRIPT),
        stdin=subprocess.DEVNULL, capture_output=True, timeout=RUN_TIMEOUT)
    out = proc.stdout.decode(errors="replace")
    err = proc.stderr.decode(errors="replace")
    assert proc.returncode == 0, out[-3000:] + err[-3000:]
    assert "VirtIO SoundCard" in out
    assert "VirtIO PCM 0 : playback 1 : capture 1" in out
    for name in ("PCM Playback Volume", "PCM Playback Switch", "Capture Volume", "Capture Switch",
                 "Headphone Jack", "Mic Jack", "Playback Channel Map", "Capture Channel Map"):
        assert f"name='{name}'" in out, name
    assert "dBscale-min=-64.00dB,step=0.50dB,mute=1" in out
    assert "Playback 64 [50%] [-32.00dB]" in out
    assert "aplay=0" in out and "arecord=0" in out
    assert "wav_bytes=192044" in out  # 1 s of 48 kHz stereo S16 plus the 44-byte header
    rejected = [line for line in err.splitlines() if "WARNING pyvmm_snd" in line]
    assert rejected == []
