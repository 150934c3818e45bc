"""What the end-to-end sound tests ask a booted guest and the back end's log.

Shared by the QEMU tests (``tests/vhost_user/test_vhost_user_qemu_snd.py`` and
``tests/e2e_snd/``): booting with a skip when QEMU or the guest image cannot be had, ALSA's
view of a PCM's hardware parameters, a driver unbind/bind through sysfs, and the guest's
kernel log filtered for driver trouble.
"""

from __future__ import annotations

import contextlib
import re
import sys
from pathlib import Path
from typing import Iterator, Mapping

import pytest

sys.path.insert(0, str(Path(__file__).parent.parent))
from qemu_harness import HarnessUnavailable, SoundGuest, qemu_sound_guest  # noqa: E402

COMMAND_TIMEOUT = 60
VCPUS = 2
VIRTIO_SND_SYSFS = "/sys/bus/virtio/drivers/virtio_snd"

# Kernel log lines that mean trouble wherever they come from (a driver WARN_ON or oops on remove
# is not prefixed with the driver's name) and error words that matter on the driver's own lines.
KERNEL_TROUBLE = re.compile(r"WARNING:|BUG:|Call Trace|Oops|general protection|refcount_t|use-after-free")
DRIVER_LINE = re.compile(r"virtio|snd|alsa", re.I)
DRIVER_TROUBLE = re.compile(r"error|fail|timeout|timed out|invalid|\bbug\b|unexpected", re.I)


@contextlib.contextmanager
def booted(device_options: Mapping[str, str] | None = None, **harness_args) -> Iterator[SoundGuest]:
    """``qemu_sound_guest`` with ``VCPUS`` vCPUs and DEBUG back-end logs; skips when it cannot run here."""
    harness_args.setdefault("smp", VCPUS)
    harness_args.setdefault("backend_verbosity", 2)
    try:
        with qemu_sound_guest(device_options, **harness_args) as guest:
            yield guest
    except HarnessUnavailable as exc:
        pytest.skip(str(exc))


def dump_hw_params(guest: SoundGuest, tool: str, device: str = "hw:0,0") -> dict[str, str]:
    """ALSA's hardware parameter space of ``device`` (``aplay``/``arecord --dump-hw-params``),
    e.g. ``{"FORMAT": "S16_LE S24_LE", "CHANNELS": "[1 8]", "RATE": "48000", ...}``.

    The tool then fails on its default format (U8) or plays/records for at most a second.
    """
    target = "/dev/zero" if tool == "aplay" else "/dev/null"
    result = guest.session.run(f"{tool} --dump-hw-params -D {device} -d 1 -t raw {target}", timeout=COMMAND_TIMEOUT)
    blocks = result.output.split("--------------------")
    assert len(blocks) == 3, f"no HW Params dump from {tool}:\n{result.output}"
    params = {}
    for line in blocks[1].strip().splitlines():
        key, _, value = line.partition(":")
        params[key.strip()] = " ".join(value.split())
    return params


def card_ids(guest: SoundGuest) -> str:
    return guest.session.check("cat /proc/asound/cards", timeout=COMMAND_TIMEOUT)


def bound_device(guest: SoundGuest) -> str:
    """The virtio device name (``virtio0``) the sound driver is bound to."""
    names = guest.session.check(f"ls {VIRTIO_SND_SYSFS}", timeout=COMMAND_TIMEOUT).split()
    devices = [name for name in names if re.fullmatch(r"virtio\d+", name)]
    assert len(devices) == 1, names
    return devices[0]


def unbind(guest: SoundGuest, device: str) -> str:
    """Driver remove (the device is reset); returns /proc/asound/cards afterwards."""
    return guest.session.check(f"echo {device} > {VIRTIO_SND_SYSFS}/unbind; cat /proc/asound/cards",
                               timeout=COMMAND_TIMEOUT)


def bind(guest: SoundGuest, device: str) -> str:
    """Driver probe; returns /proc/asound/cards afterwards."""
    return guest.session.check(f"echo {device} > {VIRTIO_SND_SYSFS}/bind; cat /proc/asound/cards",
                               timeout=COMMAND_TIMEOUT)


def dmesg_trouble(guest: SoundGuest) -> list[str]:
    """Kernel log lines that show a driver error, a warning splat or an oops."""
    log = guest.session.check("dmesg", timeout=COMMAND_TIMEOUT)
    return [line for line in log.splitlines()
            if KERNEL_TROUBLE.search(line) or (DRIVER_LINE.search(line) and DRIVER_TROUBLE.search(line))]


class BackendLog:
    """The back end's log file, read from a mark on: what the device did since a step began."""

    def __init__(self, guest: SoundGuest):
        self.path = guest.backend_log
        self.mark = 0

    def text(self) -> str:
        return self.path.read_text(errors="replace")

    def start(self) -> None:
        self.mark = len(self.text())

    def since(self) -> str:
        return self.text()[self.mark:]


def backend_trouble(log: str) -> list[str]:
    """Back-end log lines that mean the device or the vhost-user layer misbehaved."""
    return [line for line in log.splitlines() if re.search(r"Traceback| ERROR | WARNING | CRITICAL ", line)]
