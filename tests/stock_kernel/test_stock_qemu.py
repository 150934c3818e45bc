"""A stock Debian kernel with its own modules, under QEMU's software CPU: the overlay pyvmm
builds (module closure from modules.dep/alias) is what the default /init loads, and the real
virtio_snd module then plays a WAV bit-exact through pyvmm's vhost-user back end.

QEMU's microvm describes its virtio-mmio transports in its own ACPI DSDT (LNRO0005), as
pyvmm does, so the card shows up at ``platform/LNRO0005:00``; pyvmm's own tables with a stock
kernel need a KVM that runs one (the real-KVM tier). ``tsc_early_khz``: in hardware-reduced
ACPI mode Linux does not calibrate the TSC against the PIT, and TCG offers no other source
(kvmclock does that on KVM).
"""

from __future__ import annotations

import io
import subprocess
import sys
import time
import wave
from pathlib import Path

import pytest

from pyvmm.cpio import CpioEntry, build_cpio
from pyvmm.guestimage import modules

sys.path.insert(0, str(Path(__file__).parents[1]))
from qemu_harness import _stop, _wait_for_socket, backend_argv, guest_and_qemu  # noqa: E402

pytestmark = pytest.mark.qemu

RUN_TIMEOUT = 600
RAMP = "/usr/share/pyvmm/ramp-s16le-48000-2ch.wav"
SCRIPT = "; ".join([
    "cat /proc/asound/cards",
    "echo modules: $(cut -d' ' -f1 /proc/modules)",
    "echo cmdline: $(cat /proc/cmdline)",
    f"aplay -D hw:0,0 {RAMP}; echo aplay=$?",
])


def overlay_initrd(base: Path, stock, script: str) -> bytes:
    overlay = modules.build_overlay(stock.modules, [modules.VIRTIO_MMIO_ACPI_MODALIAS, modules.virtio_modalias(25)],
                                    [modules.VIRTIO_MMIO_MODULE])
    parts = [base.read_bytes(), overlay.cpio, build_cpio([CpioEntry.file("etc/pyvmm/cmd", (script + "\n").encode())])]
    return b"".join(p + b"\0" * (-len(p) % 4) for p in parts)


def test_stock_debian_kernel_loads_its_modules_and_plays_bit_exact(tmp_path):
    from pyvmm.guestimage.stock_kernel import fetch_debian_kernel
    from pyvmm.guestimage.testaudio import ramp_wav

    stock = fetch_debian_kernel("debian:6.12", progress=None)
    image, qemu = guest_and_qemu()
    initrd = tmp_path / "initrd.cpio"
    initrd.write_bytes(overlay_initrd(image.initramfs, stock, SCRIPT))
    socket_path, log_path = str(tmp_path / "snd.sock"), tmp_path / "backend.log"
    out_wav = tmp_path / "out.wav"
    with open(log_path, "wb") as log:
        backend = subprocess.Popen(backend_argv(socket_path, {"backend.path": str(out_wav)}, 1),
                                   stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)
    try:
        _wait_for_socket(socket_path, backend, log_path)
        argv = [*qemu, "-M", "microvm,acpi=on,memory-backend=mem", "-accel", "tcg", "-cpu", "max", "-m", "512M",
                "-object", "memory-backend-memfd,id=mem,size=512M,share=on",
                "-global", "virtio-mmio.force-legacy=false",
                "-chardev", f"socket,id=snd,path={socket_path}", "-device", "vhost-user-snd,chardev=snd,controls=on",
                "-display", "none", "-serial", "stdio", "-monitor", "none", "-no-reboot",
                "-kernel", str(stock.kernel), "-initrd", str(initrd),
                "-append", "console=ttyS0 panic=-1 tsc_early_khz=2000000"]
        started = time.monotonic()
        proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=RUN_TIMEOUT)
        took = time.monotonic() - started
    finally:
        _stop(backend)
    out = proc.stdout.decode(errors="replace")
    assert "pyvmm-init: start" in out, out[-4000:]
    assert "insmod" not in out, out[-4000:]                     # /init says "insmod X failed" otherwise
    assert "VirtIO SoundCard at platform/LNRO0005:00/virtio0" in out, out[-4000:]
    loaded = out.split("modules: ", 1)[1].splitlines()[0].split()
    assert {"virtio_mmio", "virtio_snd", "snd_pcm"} <= set(loaded), loaded
    assert "virtio_mmio.device" not in out.split("cmdline: ", 1)[1].splitlines()[0]
    assert "aplay=0" in out, out[-4000:]
    with wave.open(io.BytesIO(ramp_wav(48000, 2, 4800))) as w:
        ramp = w.readframes(w.getnframes())
    with wave.open(str(out_wav)) as w:
        assert (w.getnchannels(), w.getframerate(), w.getsampwidth()) == (2, 48000, 2)
        data = w.readframes(w.getnframes())
    assert data[:len(ramp)] == ramp and data[len(ramp):] == bytes(len(data) - len(ramp))
    print(f"\nstock {stock.release} under QEMU TCG: boot + aplay + reboot {took:.1f} s; modules {loaded}")
