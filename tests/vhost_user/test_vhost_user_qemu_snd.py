"""End to end: the guest's virtio_snd driver, through QEMU's vhost-user-snd, to pyvmm's sound device.

One guest boot (module scope) serves every check. Skipped with a message when QEMU or the
default guest image cannot be had.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent.parent))
from qemu_harness import HarnessUnavailable, qemu_sound_guest  # noqa: E402

pytestmark = pytest.mark.qemu

COMMAND_TIMEOUT = 60


@pytest.fixture(scope="module")
def guest():
    manager = qemu_sound_guest(backend_verbosity=3)  # TRACE: every kick and call is in the log
    try:
        sound_guest = manager.__enter__()
    except HarnessUnavailable as exc:
        pytest.skip(str(exc))
    try:
        yield sound_guest
    finally:
        manager.__exit__(None, None, None)


def test_boot_time_under_tcg(guest, capsys):
    with capsys.disabled():
        print(f"\n[vhost-user-snd] QEMU TCG boot to session-ready: {guest.boot_seconds:.1f} s")
    assert guest.session.returncode is None


def test_card_is_listed(guest):
    cards = guest.session.check("cat /proc/asound/cards", timeout=COMMAND_TIMEOUT)
    assert re.search(r"^\s*0 \[", cards, re.M), cards
    assert "virtio" in cards.lower(), cards


def test_virtio_device_is_sound(guest):
    ids = guest.session.check("cat /sys/bus/virtio/devices/*/device", timeout=COMMAND_TIMEOUT)
    assert "0x0019" in ids.split(), ids
    driver = guest.session.check("ls /sys/bus/virtio/drivers/virtio_snd", timeout=COMMAND_TIMEOUT)
    assert "virtio" in driver, driver


@pytest.mark.parametrize("tool, kind", [("aplay", "PLAYBACK"), ("arecord", "CAPTURE")])
def test_streams_are_listed(guest, tool, kind):
    out = guest.session.check(f"{tool} -l", timeout=COMMAND_TIMEOUT)
    assert f"List of {kind} Hardware Devices" in out, out
    assert re.search(r"^card 0: .*device \d+:", out, re.M), out


def test_mixer_control_round_trip(guest):
    """VIRTIO_SND_F_CTLS crossed the front end: controls are listed, written and read back."""
    controls = guest.session.check("amixer -c 0 controls", timeout=COMMAND_TIMEOUT)
    assert "PCM Playback Volume" in controls, controls
    guest.session.check("amixer -c 0 cset name='PCM Playback Volume' 64", timeout=COMMAND_TIMEOUT)
    value = guest.session.check("amixer -c 0 cget name='PCM Playback Volume'", timeout=COMMAND_TIMEOUT)
    assert re.search(r": values=64\b", value), value


def test_no_virtio_errors_in_dmesg(guest):
    result = guest.session.run("dmesg | grep -i -e virtio -e snd", timeout=COMMAND_TIMEOUT)
    bad = [line for line in result.output.splitlines()
           if re.search(r"error|fail|timeout|timed out|invalid|\bbug\b", line, re.I)]
    assert not bad, result.output


def test_backend_started_the_device_cleanly(guest):
    log = guest.backend_log.read_text()
    assert "starting the device: 4 queues" in log, log
    assert "Traceback" not in log, log
    assert "ERROR" not in log, log


def test_playback_crosses_the_tx_ring(guest):
    """aplay's periods go out on the tx ring (vring 2) and come back with an interrupt."""
    guest.session.run("aplay -q -D hw:0,0 -d 1 -f S16_LE -r 48000 -c 2 -t raw /dev/zero", timeout=COMMAND_TIMEOUT)
    log = guest.backend_log.read_text()
    assert "kick vring 2" in log, log[-3000:]
    assert "call vring 2" in log, log[-3000:]
    assert "Traceback" not in log


@pytest.mark.parametrize("tool, source, sink", [("aplay", "/dev/zero", ""), ("arecord", "", "/dev/null")])
def test_pcm_tool_exits_cleanly(guest, tool, source, sink):
    """A second of audio each way; needs the device to pace completions at the stream's rate
    (a device that completes a whole buffer at once makes ALSA see no progress: EIO)."""
    result = guest.session.run(f"{tool} -q -D hw:0,0 -d 1 -f S16_LE -r 48000 -c 2 -t raw {source}{sink}",
                               timeout=COMMAND_TIMEOUT)
    assert result.status == 0, result.output


def test_driver_rebind_stops_and_restarts_the_device(guest):
    """Unbinding resets the device (QEMU stops the rings with GET_VRING_BASE); binding starts it again."""
    before = guest.backend_log.read_text().count("starting the device")
    unbound = guest.session.run("echo virtio0 > /sys/bus/virtio/drivers/virtio_snd/unbind; cat /proc/asound/cards",
                                timeout=COMMAND_TIMEOUT)
    assert "no soundcards" in unbound.output, unbound.output
    bound = guest.session.check("echo virtio0 > /sys/bus/virtio/drivers/virtio_snd/bind; cat /proc/asound/cards",
                                timeout=COMMAND_TIMEOUT)
    assert "virtio" in bound.lower(), bound
    log = guest.backend_log.read_text()
    assert "stopping the device (GET_VRING_BASE" in log
    assert log.count("starting the device") == before + 1
    assert "Traceback" not in log


def test_device_options_reach_the_back_end():
    """A second boot with a playback-only device: the options travel through the harness and CLI."""
    try:
        manager = qemu_sound_guest({"playback": "1", "capture": "0"})
        with manager as other:
            playback = other.session.check("aplay -l", timeout=COMMAND_TIMEOUT)
            capture = other.session.check("arecord -l", timeout=COMMAND_TIMEOUT)
    except HarnessUnavailable as exc:
        pytest.skip(str(exc))
    assert re.search(r"^card 0: .*device 0:", playback, re.M), playback
    assert not re.search(r"^card \d+:", capture, re.M), capture
