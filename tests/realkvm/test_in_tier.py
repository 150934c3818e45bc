"""What only the real-KVM tier can show: the default guest and the sound device on real kvm_amd.

Run inside the outer guest (``scripts/real-kvm -- scripts/test -m realkvm``); skipped
elsewhere (on this host the same cases run on kvm_pvm in tests/guest and tests/e2e_snd).
Each guest boot goes through :func:`tier.run_guest` (one reported retry for a boot that
stopped before /init).
"""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import pytest

from tier import in_tier, run_guest

pytestmark = [pytest.mark.realkvm, pytest.mark.kvm, in_tier]


def test_dev_kvm_is_kvm_amd():
    assert Path("/sys/module/kvm_amd").is_dir() and not Path("/sys/module/kvm_pvm").exists()
    assert Path("/dev/kvm").exists()


def test_default_guest_through_pvh_and_bzimage(guest_image):
    pvh = run_guest("--", "sh", "-c", "uname -r; exit 5")
    assert pvh.returncode == 5, pvh.output[-3000:]
    bz = run_guest("--kernel", str(guest_image.bzimage), "--initrd", str(guest_image.initramfs),
                   "--boot-protocol", "linux64", "--append", guest_image.cmdline, "--", "uname", "-r")
    assert bz.returncode == 0, bz.output[-3000:]
    release = pvh.stdout.split("pyvmm-init: start", 1)[1].split()[0]
    assert release in bz.stdout


def test_two_vcpus_and_cpu_host(guest_image):
    run = run_guest("--smp", "2", "--cpu", "host", "--", "sh", "-c", "grep -c ^processor /proc/cpuinfo")
    assert run.returncode == 0, run.output[-3000:]
    assert run.stdout.strip().splitlines()[-1].strip() == "2"


def test_sound_device_speaker_test_writes_a_valid_wav(guest_image, tmp_path):
    out = tmp_path / "speaker.wav"
    run = run_guest("--device", f"virtio-snd,backend.path={out}", "--",
                    "speaker-test", "-c2", "-t", "sine", "-l1")
    assert run.returncode == 0, run.output[-3000:]
    with wave.open(str(out)) as wav:
        assert (wav.getnchannels(), wav.getsampwidth()) == (2, 2)
        frames = wav.readframes(wav.getnframes())
        rate = wav.getframerate()
    samples = np.frombuffer(frames, dtype="<i2").reshape(-1, 2)
    assert len(samples) >= rate  # speaker-test -l1 plays each of the 2 channels for a while
    assert np.abs(samples).max() > 1000  # a sine, not silence
