"""A stock Debian 6.12 kernel under pyvmm on real kvm_amd (the real-KVM tier): it finds the
sound card through pyvmm's ACPI tables (not the command line), loads its own modules from the
overlay, plays a WAV bit-exact, and powers off through the ACPI sleep register. The guest's
copy of the tables (/sys/firmware/acpi/tables) is compared byte for byte with what pyvmm
builds, and decoded with iasl; /proc/interrupts shows the DSDT's interrupt, edge-triggered.

Runs only inside the tier (``scripts/real-kvm -- scripts/test -m realkvm``): stock kernels
cannot run user space on this host's kvm_pvm.
"""

from __future__ import annotations

import io
import re
import sys
import wave
from pathlib import Path

import pytest

from pyvmm.arch.x86_64 import acpi, layout

sys.path.insert(0, str(Path(__file__).parents[1] / "realkvm"))
sys.path.insert(0, str(Path(__file__).parents[1] / "acpi"))
from iasl import disassemble  # noqa: E402
from tier import in_tier, run_guest  # noqa: E402

pytestmark = [pytest.mark.realkvm, pytest.mark.kvm, in_tier]

RAMP = "/usr/share/pyvmm/ramp-s16le-48000-2ch.wav"
TABLES = ("DSDT", "FACP", "APIC")
QUIET = "console=ttyS0 quiet panic=-1"   # each console byte is a slow exit in the tier; no log lines mid-output
SCRIPT = "; ".join([
    "aplay -l",
    "echo cmdline: $(cat /proc/cmdline)",
    "echo modules: $(cut -d' ' -f1 /proc/modules)",
    "grep virtio /proc/interrupts",
    "ls /sys/bus/acpi/devices",
    *(f"echo table {t}: $(od -An -tx1 -v /sys/firmware/acpi/tables/{t})" for t in TABLES),
    f"aplay -D hw:0,0 {RAMP}; echo aplay=$?",
])


@pytest.fixture(scope="module")
def stock():
    from pyvmm.guestimage.stock_kernel import fetch_debian_kernel

    return fetch_debian_kernel("debian:6.12", progress=None)


def test_stock_kernel_finds_the_card_through_acpi_and_plays_bit_exact(stock, tmp_path):
    from pyvmm.guestimage.testaudio import ramp_wav
    from pyvmm.vm import acpi_platform

    out_wav = tmp_path / "out.wav"
    run = run_guest("-v", "--kernel", str(stock.kernel), "--modules", str(stock.modules), "--append", QUIET,
                    "--device", f"virtio-snd,backend.path={out_wav}", "--timeout", "900", "--",
                    "sh", "-c", SCRIPT, timeout=1000)
    out = run.stdout
    assert run.returncode == 0, run.output[-4000:]
    assert "kernel has ACPI: --acpi auto is on" in run.stderr             # config-RELEASE beside the vmlinuz
    assert "card 0: SoundCard [VirtIO SoundCard]" in out, out[-4000:]
    cmdline = out.split("cmdline: ", 1)[1].splitlines()[0]
    assert "virtio_mmio.device" not in cmdline                           # found through ACPI only
    assert "LNRO0005:00" in out
    loaded = set(out.split("modules: ", 1)[1].splitlines()[0].split())
    assert {"virtio_mmio", "virtio_snd", "snd_pcm"} <= loaded
    _, _, gsi = layout.virtio_mmio_slot(0)
    assert re.search(rf"^\s*\d+:\s+[1-9]\d*\s+IO-APIC\s+{gsi}-edge\s+virtio0", out, re.M), out[-4000:]

    expected = acpi.build_tables(acpi_platform(1, [acpi.MmioWindow(*layout.virtio_mmio_slot(0))]))
    for signature in TABLES:
        hexdump = out.split(f"table {signature}: ", 1)[1].splitlines()[0]
        assert bytes.fromhex(hexdump) == expected.tables[signature][1], signature
    dsl = disassemble(bytes.fromhex(out.split("table DSDT: ", 1)[1].splitlines()[0]), tmp_path, "dsdt")
    assert 'Name (_HID, "LNRO0005")' in dsl

    assert "aplay=0" in out, out[-4000:]
    with wave.open(io.BytesIO(ramp_wav(48000, 2, 4800))) as w:
        ramp = w.readframes(w.getnframes())
    with wave.open(str(out_wav)) as w:
        data = w.readframes(w.getnframes())
    assert data[:len(ramp)] == ramp and data[len(ramp):] == bytes(len(data) - len(ramp))


def test_poweroff_through_the_acpi_sleep_register(stock):
    """``poweroff -f`` as the command: the guest goes away before the command's status, like ``reboot -f``."""
    run = run_guest("-v", "--kernel", str(stock.kernel), "--append", QUIET, "--timeout", "600", "--", "poweroff", "-f",
                    timeout=700)
    assert run.returncode == 1, run.output[-3000:]
    assert "guest powered off (ACPI S5), before the command's exit status arrived" in run.stderr, run.output[-3000:]
