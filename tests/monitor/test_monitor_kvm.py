"""``pyvmm run --monitor`` on KVM with the default guest: a jack unplugged from the host is
seen by the guest's ALSA, ``info stats`` counts VM exits while the guest runs, ``quit`` stops
the VM with status 0 and removes the socket."""

from __future__ import annotations

import os
import subprocess
import time

import pytest

from pyvmm.monitor import MonitorClient
from vmm_cli import pyvmm_argv

pytestmark = [pytest.mark.kvm, pytest.mark.guest]

BOOT_TIMEOUT = 240

GUEST_SCRIPT = ("until amixer -c0 cget numid=1 | grep -q values=on; do sleep 0.2; done; echo CARD-READY; "
                "until amixer -c0 cget numid=1 | grep -q values=off; do sleep 0.2; done; echo JACK-OFF-SEEN; "
                "sleep 600")
"""Says when the card is up with the Headphone Jack on, waits for it to go off, then idles until
the monitor quits the VM. The test unplugs only after CARD-READY, as a user would: Linux 6.12's
virtio_snd loses a jack change that lands while it probes (``virtsnd_jack_parse_cfg`` overwrites
the event's state with its JACK_INFO reply), which failed this test once in CI."""


def wait_for_console(vm: subprocess.Popen, console, text: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while text not in console.read_text(errors="replace"):
        assert vm.poll() is None and time.monotonic() < deadline, \
            f"no {text!r} on the console: " + console.read_text(errors="replace")[-2000:]
        time.sleep(0.5)


def wait_for(client: MonitorClient, line: str, text: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while True:
        ok, reply = client.command(line)
        if ok and text in reply:
            return reply
        assert time.monotonic() < deadline, f"{line!r} never showed {text!r}: {reply}"
        time.sleep(0.5)


def test_jack_event_stats_and_quit(guest_image, tmp_path):
    socket_path = str(tmp_path / "vm.mon")
    console = tmp_path / "console.log"
    argv = pyvmm_argv("run", "--device", "virtio-snd,backend=null", "--monitor", socket_path,
                      "--serial-log", str(console), "--timeout", str(BOOT_TIMEOUT), "--", "sh", "-c", GUEST_SCRIPT)
    vm = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                          text=True, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 60
        while not os.path.exists(socket_path):
            assert vm.poll() is None, vm.stderr.read()
            assert time.monotonic() < deadline, "the monitor socket never appeared"
            time.sleep(0.1)
        with MonitorClient(socket_path, timeout=30) as client:
            wait_for(client, "snd0 info", "driver active", BOOT_TIMEOUT)
            wait_for(client, "info devices", "DRIVER_OK", 30)
            wait_for_console(vm, console, "CARD-READY", BOOT_TIMEOUT)
            assert client.command("snd0 jack 0 disconnect") == (True, "jack 0 disconnected")
            wait_for_console(vm, console, "JACK-OFF-SEEN", BOOT_TIMEOUT)
            ok, stats = client.command("info stats")
            assert ok and int(stats.splitlines()[0].split()[-1]) > 0, stats
            assert "MMIO" in stats
            assert client.command("quit") == (True, "stopping the VM")
        assert vm.wait(60) == 0
        assert not os.path.exists(socket_path)
    finally:
        if vm.poll() is None:
            vm.kill()
            vm.wait(10)
