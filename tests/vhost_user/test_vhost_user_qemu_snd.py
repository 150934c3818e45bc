"""End to end: the guest's virtio_snd driver, through QEMU's vhost-user-snd, to pyvmm's sound device.

One 2-vCPU guest boot (module scope) with the default card serves every check but the last
boot's; the tests run in file order and the dmesg and back-end log checks come last, so they
see everything the driver went through (PCM runs, mixer writes, three unbind/bind cycles).
Other topologies are in ``tests/e2e_snd/``. Skipped with a message when QEMU or the default
guest image cannot be had.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent.parent / "e2e_snd"))
from snd_checks import (COMMAND_TIMEOUT, VCPUS, VIRTIO_SND_SYSFS, BackendLog, backend_trouble, bind,  # noqa: E402
                        booted, bound_device, card_ids, dmesg_trouble, dump_hw_params, unbind)

pytestmark = pytest.mark.qemu

# What the default card advertises (devices/snd/README.md), in ALSA's words.
DEFAULT_FORMATS = "S16_LE S24_LE S32_LE FLOAT_LE"
DEFAULT_CHANNELS = "[1 8]"
DEFAULT_RATES = "[8000 192000]"
REBIND_CYCLES = 3


@pytest.fixture(scope="module")
def guest(tmp_path_factory):
    wav_dir = tmp_path_factory.mktemp("snd-wav")  # the default playback back end writes WAV files
    with booted({"playback.backend.path": str(wav_dir / "stream{stream}.wav")},
                backend_verbosity=3) as sound_guest:  # TRACE: every kick and call is in the log
        yield sound_guest


def test_boot_time_under_tcg(guest, capsys):
    with capsys.disabled():
        print(f"\n[vhost-user-snd] QEMU TCG boot to session-ready ({VCPUS} vCPUs): {guest.boot_seconds:.1f} s")
    assert guest.session.returncode is None


def test_guest_runs_on_two_vcpus(guest):
    online = guest.session.check("cat /sys/devices/system/cpu/online; grep -c ^processor /proc/cpuinfo",
                                 timeout=COMMAND_TIMEOUT).split()
    assert online == [f"0-{VCPUS - 1}", str(VCPUS)], online


def test_card_is_listed(guest):
    cards = card_ids(guest)
    assert re.search(r"^\s*0 \[", cards, re.M), cards
    assert "virtio" in cards.lower(), cards


def test_virtio_device_is_sound(guest):
    ids = guest.session.check("cat /sys/bus/virtio/devices/*/device", timeout=COMMAND_TIMEOUT)
    assert "0x0019" in ids.split(), ids
    assert re.fullmatch(r"virtio\d+", bound_device(guest))


@pytest.mark.parametrize("tool, kind, pcm", [("aplay", "PLAYBACK", "pcm0p"), ("arecord", "CAPTURE", "pcm0c")])
def test_streams_are_listed(guest, tool, kind, pcm):
    out = guest.session.check(f"{tool} -l", timeout=COMMAND_TIMEOUT)
    assert f"List of {kind} Hardware Devices" in out, out
    assert re.search(r"^card 0: .*device 0: .*\n\s+Subdevices: 1/1$", out, re.M), out
    info = guest.session.check(f"cat /proc/asound/card0/{pcm}/info", timeout=COMMAND_TIMEOUT)
    assert f"stream: {kind}" in info, info


@pytest.mark.parametrize("tool", ["aplay", "arecord"])
def test_advertised_formats_rates_channels(guest, tool):
    """PCM_INFO's format and rate bit masks and channel range are what ALSA offers."""
    params = dump_hw_params(guest, tool)
    assert params["FORMAT"] == DEFAULT_FORMATS, params
    assert params["CHANNELS"] == DEFAULT_CHANNELS, params
    assert params["RATE"] == DEFAULT_RATES, params


def test_backend_started_the_device_cleanly(guest):
    log = guest.backend_log.read_text()
    assert "starting the device: 4 queues" in log, log
    assert not backend_trouble(log), log


def test_mixer_control_round_trip(guest):
    """VIRTIO_SND_F_CTLS crossed the front end: controls are listed, written and read back."""
    controls = guest.session.check("amixer -c 0 controls", timeout=COMMAND_TIMEOUT)
    assert "PCM Playback Volume" in controls, controls
    guest.session.check("amixer -c 0 cset name='PCM Playback Volume' 64", timeout=COMMAND_TIMEOUT)
    value = guest.session.check("amixer -c 0 cget name='PCM Playback Volume'", timeout=COMMAND_TIMEOUT)
    assert re.search(r": values=64\b", value), value


@pytest.mark.parametrize("control, written, shown, stored", [
    ("PCM Playback Volume", "37", "37", 37),
    ("PCM Playback Switch", "off", "off", 0),
    ("Capture Volume", "5", "5", 5),
    ("PCM Playback Switch", "on", "on", 1),
    ("PCM Playback Volume", "128", "128", 128),
])
def test_mixer_write_reaches_the_device(guest, control, written, shown, stored):
    """The device stores what amixer wrote (CTL_WRITE), and amixer's read-back is a CTL_READ of it."""
    log = BackendLog(guest)
    log.start()
    guest.session.check(f"amixer -c 0 cset name='{control}' {written}", timeout=COMMAND_TIMEOUT)
    after_write = log.since()
    stored_line = re.search(rf"control (\d+) '{control}' \(index 0\) = \[{stored}\]", after_write)
    assert stored_line, after_write
    control_id = stored_line.group(1)
    assert re.search(rf"CTL_WRITE control={control_id} value={stored} .*-> OK", after_write), after_write

    log.start()
    value = guest.session.check(f"amixer -c 0 cget name='{control}'", timeout=COMMAND_TIMEOUT)
    assert re.search(rf": values={shown}$", value, re.M), value
    assert re.search(rf"CTL_READ control={control_id} -> OK", log.since()), log.since()


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


@pytest.mark.parametrize("tool, pcm, stream_id, alsa_format, device_format, rate, channels, frame_bytes", [
    ("aplay", "pcm0p", 0, "S24_LE", "S24", 44100, 6, 6 * 4),
    ("arecord", "pcm0c", 1, "FLOAT_LE", "FLOAT", 8000, 1, 4),
])
def test_guest_parameters_reach_the_device(guest, tool, pcm, stream_id, alsa_format, device_format, rate,
                                           channels, frame_bytes):
    """The parameters ALSA settled on (its hw_params file, in frames) are the ones the device
    was given (PCM_SET_PARAMS, in bytes)."""
    log = BackendLog(guest)
    log.start()
    target = "/dev/zero" if tool == "aplay" else "/dev/null"
    hw_params, status = (f"/proc/asound/card0/{pcm}/sub0/{name}" for name in ("hw_params", "status"))
    result = guest.session.run(
        f"{tool} -q -D hw:0,0 -d 1 -f {alsa_format} -r {rate} -c {channels} -t raw {target} & "
        f"for i in $(seq 50); do grep -q RUNNING {status} && break; sleep 0.1; done; cat {hw_params}; wait $!",
        timeout=COMMAND_TIMEOUT)
    assert result.status == 0, result.output
    guest_side = dict(line.split(": ", 1) for line in result.output.splitlines() if ": " in line)
    assert guest_side.get("format") == alsa_format, result.output
    assert guest_side["channels"] == str(channels), result.output
    assert guest_side["rate"].split()[0] == str(rate), result.output
    period = int(guest_side["period_size"]) * frame_bytes
    buffer = int(guest_side["buffer_size"]) * frame_bytes
    expected = f"stream {stream_id}: {channels}ch {device_format} {rate}Hz period={period} buffer={buffer}"
    assert expected in log.since(), f"{expected!r} not in:\n{log.since()}"


def test_driver_rebind_resets_and_restarts_the_device_repeatedly(guest):
    """Unbinding removes the card and resets the device (QEMU stops the rings with
    GET_VRING_BASE); binding starts it again and the driver probes it afresh. Three times."""
    device = bound_device(guest)
    log = BackendLog(guest)
    for cycle in range(1, REBIND_CYCLES + 1):
        log.start()
        unbound = unbind(guest, device)
        assert "no soundcards" in unbound, f"cycle {cycle}: {unbound}"
        stopped = log.since()
        assert stopped.count("stopping the device (GET_VRING_BASE") == 1, f"cycle {cycle}:\n{stopped}"
        assert stopped.count("virtio-snd: reset") == 1, f"cycle {cycle}:\n{stopped}"

        log.start()
        bound = bind(guest, device)
        assert re.search(r"^\s*0 \[.*virtio", bound, re.M | re.I), f"cycle {cycle}: {bound}"
        started = log.since()
        assert started.count("starting the device: 4 queues") == 1, f"cycle {cycle}:\n{started}"
        assert started.count("virtio-snd: activated") == 1, f"cycle {cycle}:\n{started}"
        for probe in ("JACK_INFO", "PCM_INFO", "CHMAP_INFO", "CTL_INFO"):
            assert re.search(rf"{probe} start=0 .*-> OK", started), f"cycle {cycle}: no {probe}\n{started}"
        assert not backend_trouble(started), f"cycle {cycle}:\n{started}"
        streams = guest.session.check("aplay -l", timeout=COMMAND_TIMEOUT)
        assert re.search(r"^card 0: .*device 0:", streams, re.M), f"cycle {cycle}: {streams}"


def test_unbind_with_both_streams_running(guest):
    """Hot removal mid-stream: both tools fail (card gone), the device is reset, rebinding brings it back."""
    device = bound_device(guest)
    log = BackendLog(guest)
    log.start()
    running = " && ".join(f"grep -q RUNNING /proc/asound/card0/{pcm}/sub0/status" for pcm in ("pcm0p", "pcm0c"))
    result = guest.session.run(
        "aplay -q -D hw:0,0 -d 5 -f S16_LE -r 48000 -c 2 -t raw /dev/zero 2>/tmp/aplay.err & playing=$!; "
        "arecord -q -D hw:0,0 -d 5 -f S16_LE -r 48000 -c 2 -t raw /dev/null 2>/tmp/arecord.err & recording=$!; "
        f"for i in $(seq 50); do {running} && break; sleep 0.1; done; "
        f"echo {device} > {VIRTIO_SND_SYSFS}/unbind; cat /proc/asound/cards; "
        "wait $playing; echo aplay status $?; wait $recording; echo arecord status $?; "
        "cat /tmp/aplay.err /tmp/arecord.err",
        timeout=COMMAND_TIMEOUT)
    removed = log.since()
    bound = bind(guest, device)
    assert "no soundcards" in result.output, result.output
    # cut off before their 5 s: EBADFD or ENODEV, depending on where the disconnect catches each tool
    assert re.search(r"^aplay status [1-9]", result.output, re.M), result.output
    assert re.search(r"^arecord status [1-9]", result.output, re.M), result.output
    assert re.search(r"^aplay: pcm_write:.* write error: ", result.output, re.M), result.output
    assert re.search(r"^arecord: pcm_read:.* read error: ", result.output, re.M), result.output
    assert re.search(r"PCM_START stream=0 .*-> OK", removed) and re.search(r"PCM_START stream=1 .*-> OK", removed), \
        removed
    assert removed.count("virtio-snd: reset") == 1, removed
    assert not backend_trouble(removed), removed
    assert re.search(r"^\s*0 \[.*virtio", bound, re.M | re.I), bound


def test_card_works_after_rebinding(guest):
    result = guest.session.run("aplay -q -D hw:0,0 -d 1 -f S16_LE -r 48000 -c 2 -t raw /dev/zero",
                               timeout=COMMAND_TIMEOUT)
    assert result.status == 0, result.output
    guest.session.check("amixer -c 0 cset name='PCM Playback Volume' 100", timeout=COMMAND_TIMEOUT)
    value = guest.session.check("amixer -c 0 cget name='PCM Playback Volume'", timeout=COMMAND_TIMEOUT)
    assert re.search(r": values=100$", value, re.M), value


def test_device_options_reach_the_back_end():
    """A second boot with a playback-only device: the options travel through the harness and CLI."""
    with booted({"playback": "1", "capture": "0", "backend": "null"}, backend_verbosity=1) as other:
        playback = other.session.check("aplay -l", timeout=COMMAND_TIMEOUT)
        capture = other.session.check("arecord -l", timeout=COMMAND_TIMEOUT)
    assert re.search(r"^card 0: .*device 0:", playback, re.M), playback
    assert not re.search(r"^card \d+:", capture, re.M), capture


def test_backend_log_is_clean_after_everything(guest):
    log = guest.backend_log.read_text()
    assert not backend_trouble(log), "\n".join(backend_trouble(log))


def test_no_driver_errors_in_dmesg_after_everything(guest):
    """Last: the kernel log after PCM runs, mixer writes and three unbind/bind cycles."""
    trouble = dmesg_trouble(guest)
    assert not trouble, "\n".join(trouble)
