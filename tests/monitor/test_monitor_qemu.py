"""The monitor end to end: the guest's real virtio_snd driver under QEMU, pyvmm's sound device
behind it over vhost-user (``pyvmm vhost-user ... --monitor PATH``), faults injected from the
host through ``pyvmm monitor`` while the guest watches (amixer jack controls, aplay)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time

import pytest

from pyvmm.monitor import MonitorClient
from qemu_harness import guest_and_qemu_or_skip, qemu_sound_guest

pytestmark = pytest.mark.qemu

TIMEOUT = 120
APLAY = "aplay -D hw:0,0 -t raw -f S16_LE -c 2 -r 48000"


@pytest.fixture(scope="module")
def guest(tmp_path_factory):
    image, qemu = guest_and_qemu_or_skip()
    path = str(tmp_path_factory.mktemp("monitor") / "mon.sock")
    with qemu_sound_guest({"backend": "null"}, image=image, qemu=qemu, backend_args=["--monitor", path]) as g:
        g.monitor_path = path
        with MonitorClient(path, timeout=30) as client:
            g.monitor = client
            yield g


def command(guest, line: str) -> str:
    ok, text = guest.monitor.command(line)
    assert ok, f"{line}: {text}"
    return text


def jack_value(guest, numid: int) -> str:
    out = guest.session.check(f"amixer -c0 cget numid={numid}", timeout=TIMEOUT)
    return re.search(r": values=(\w+)", out).group(1)


def test_info_devices_shows_the_negotiated_device(guest):
    text = command(guest, "info devices")
    assert text.startswith("0: snd0 (SoundDevice, vhost-user)")
    assert len(re.findall(r"queue \d: size \d+, next_avail", text)) == 4, text


def test_jack_disconnect_reaches_the_guest(guest):
    assert jack_value(guest, 1) == "on"  # Headphone Jack
    assert command(guest, "snd0 jack 0 disconnect") == "jack 0 disconnected"
    deadline = time.monotonic() + 30
    while jack_value(guest, 1) != "off":
        assert time.monotonic() < deadline, "the guest never saw the jack go"
    command(guest, "snd0 jack 0 connect")
    while jack_value(guest, 1) != "on":
        assert time.monotonic() < deadline, "the guest never saw the jack come back"


def test_host_control_change_reaches_the_guest(guest):
    command(guest, "snd0 ctl 0 17")  # control 0: playback volume (guest numid 5)
    out = guest.session.check("amixer -c0 cget numid=5", timeout=TIMEOUT)
    assert re.search(r": values=17,17|: values=17\b", out), out
    command(guest, "snd0 ctl 0 128")


def test_injected_io_errors_during_aplay_complete(guest):
    command(guest, "snd0 fail 0 3 io_err")
    out = guest.session.run(f"{APLAY} -q -d 1 /dev/zero; echo aplay=$?", timeout=TIMEOUT).output
    assert "aplay=0" in out, out
    assert "injected errors 3 (0 pending)" in command(guest, "snd0 info")
    out = guest.session.run(f"{APLAY} -q -d 1 /dev/zero; echo aplay=$?", timeout=TIMEOUT).output
    assert "aplay=0" in out and "injected errors 3 (0 pending)" in command(guest, "snd0 info")


def event_queue_used(guest) -> int:
    return int(re.search(r"queue 1: size \d+, next_avail \d+, next_used (\d+)", command(guest, "info devices")).group(1))


def test_xrun_during_aplay_is_delivered_and_playback_carries_on(guest):
    """Sent while the stream runs, the XRUN event fills an event buffer (the used index of the
    event queue moves). Linux 6.12 only sets ``xfer_xrun``, which nothing reads any more, so
    aplay just finishes (sound/virtio/virtio_pcm.c)."""
    sent: list[str] = []
    before = event_queue_used(guest)

    def inject() -> None:
        with MonitorClient(guest.monitor_path, timeout=30) as client:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                if "stream 0 output: started" in client.command("snd0 info")[1]:
                    time.sleep(0.3)
                    sent.append(client.command("snd0 xrun 0")[1])
                    return
                time.sleep(0.05)

    injector = threading.Thread(target=inject)
    injector.start()
    out = guest.session.run(f"{APLAY} -q -d 2 /dev/zero; echo aplay=$?", timeout=TIMEOUT).output
    injector.join(70)
    assert sent == ["XRUN event sent for stream 0"]
    assert "aplay=0" in out, out
    assert event_queue_used(guest) == before + 1
    assert "not started" in command(guest, "snd0 xrun 0")


def test_cli_client_and_quit_stop_the_back_end(guest):
    run = [sys.executable, "-m", "pyvmm", "monitor", guest.monitor_path]
    result = subprocess.run([*run, "snd0", "info"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "jack 0: connected" in result.stdout, result
    result = subprocess.run([*run, "snd0", "jack", "7", "connect"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and result.stderr.startswith("pyvmm: error: snd0 jack: virtio-snd: jack 7")
    result = subprocess.run([*run, "quit"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    assert guest.backend.wait(30) == 0
    assert not os.path.exists(guest.monitor_path)
