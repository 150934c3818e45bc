"""Boot the default guest under QEMU's software CPU with pyvmm's vhost-user sound back end.

QEMU is the front end here: its ``vhost-user-snd`` device on a microvm virtio-mmio
transport forwards the guest's rings to ``pyvmm vhost-user virtio-snd`` running in a
subprocess, so the guest's real ``virtio_snd`` driver talks to pyvmm's device without
KVM. Used as::

    with qemu_sound_guest({"playback": "1", "capture": "0"}) as guest:
        print(guest.session.check("cat /proc/asound/cards", timeout=30))
        print(guest.backend_log.read_text())

Everything is bounded: the back end must listen within ``BACKEND_START_TIMEOUT``, the
guest must reach its session shell within ``boot_timeout``, and on the way out both
processes are stopped (politely, then killed) and the socket directory removed.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Mapping, Sequence

from pyvmm.guest.session import GuestSession, SessionError

BACKEND_START_TIMEOUT = 30.0
DEFAULT_BOOT_TIMEOUT = 300.0
SESSION_ARG = "pyvmm.session"


class HarnessUnavailable(Exception):
    """QEMU or the guest image cannot be had here (tests skip with this message)."""


@dataclass
class SoundGuest:
    session: GuestSession
    backend: subprocess.Popen
    backend_log: Path
    qemu_argv: list[str]
    boot_seconds: float
    """From starting QEMU to the guest's ``session-ready`` line."""


def guest_and_qemu(image=None, qemu: list[str] | None = None):
    """The guest image and QEMU argv prefix (defaults: the cached default guest and Debian's
    QEMU), or :class:`HarnessUnavailable`."""
    try:
        from pyvmm.guestimage import build_default_guest, ensure_qemu
    except ImportError as exc:
        raise HarnessUnavailable(f"guest image builder not available: {exc}") from None
    # A failing build or download is a test failure, not a skip: the project installs both itself.
    if image is None:
        image = build_default_guest(progress=None)
    if qemu is None:
        qemu = list(ensure_qemu(progress=None))
    return image, qemu


def guest_and_qemu_or_skip():
    """:func:`guest_and_qemu` for a pytest fixture: a harness that cannot be had skips the test."""
    import pytest

    try:
        return guest_and_qemu()
    except HarnessUnavailable as exc:
        pytest.skip(str(exc))


def backend_argv(socket_path: str, device_options: Mapping[str, str], verbosity: int = 1,
                 extra_args: Sequence[str] = ()) -> list[str]:
    options = [f"{key}={value}" for key, value in device_options.items()]
    return [sys.executable, "-m", "pyvmm", "vhost-user", "virtio-snd", "--socket", socket_path,
            *(["-" + "v" * min(verbosity, 2)] if verbosity else []), *(["--trace"] if verbosity > 2 else []),
            *extra_args, *options]


def qemu_argv(qemu: list[str], image, socket_path: str, smp: int = 1, memory_mb: int = 256,
              extra_cmdline: str = "") -> list[str]:
    """QEMU microvm, TCG, guest RAM in a shared memfd (the back end maps it), vhost-user-snd.

    ``acpi=off``: the guest kernel has no ACPI, so interrupts are routed through one IOAPIC
    and the MP table, and QEMU appends ``virtio_mmio.device=...`` for the transport it used.
    ``force-legacy=false``: QEMU's virtio-mmio defaults to the legacy (version 1) register
    layout, which hides feature bit 32 (VERSION_1) that virtio_snd requires.
    """
    cmdline = " ".join(part for part in (image.cmdline, SESSION_ARG, extra_cmdline) if part)
    return [
        *qemu,
        "-M", "microvm,acpi=off,memory-backend=mem",
        "-accel", "tcg",
        "-cpu", "max",
        "-smp", str(smp),
        "-m", f"{memory_mb}M",
        "-object", f"memory-backend-memfd,id=mem,size={memory_mb}M,share=on",
        "-global", "virtio-mmio.force-legacy=false",
        "-chardev", f"socket,id=snd,path={socket_path}",
        "-device", "vhost-user-snd,chardev=snd,controls=on",
        "-display", "none",
        "-serial", "stdio",
        "-monitor", "none",
        "-no-reboot",
        "-kernel", str(image.vmlinux),
        "-initrd", str(image.initramfs),
        "-append", cmdline,
    ]


def _wait_for_socket(path: str, backend: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + BACKEND_START_TIMEOUT
    while not os.path.exists(path):
        if backend.poll() is not None:
            raise RuntimeError(f"vhost-user back end exited with {backend.returncode}:\n{log.read_text()}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"vhost-user back end did not listen within {BACKEND_START_TIMEOUT:.0f} s:\n"
                               f"{log.read_text()}")
        time.sleep(0.05)


def _stop(process: subprocess.Popen, timeout: float = 10.0) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5.0)


@contextlib.contextmanager
def qemu_sound_guest(device_options: Mapping[str, str] | None = None, smp: int = 1, memory_mb: int = 256,
                     boot_timeout: float = DEFAULT_BOOT_TIMEOUT, extra_cmdline: str = "",
                     keep_dir: bool = False, backend_verbosity: int = 1, image=None,
                     qemu: list[str] | None = None, backend_args: Sequence[str] = (),
                     before_boot: Callable[[], object] | None = None) -> Iterator[SoundGuest]:
    """A booted guest with a shell session and the vhost-user sound back end behind QEMU.

    Raises :class:`HarnessUnavailable` when QEMU or the guest image cannot be had, and
    :class:`~pyvmm.guest.session.SessionError` (with the console tail and the back end's
    log) when the boot fails. ``keep_dir`` leaves the socket directory and log behind;
    ``backend_verbosity`` 2 logs every vhost-user message (DEBUG), 3 every kick and call.
    ``image`` (a :class:`~pyvmm.guestimage.GuestImage`) and ``qemu`` (an argv prefix) default
    to ``build_default_guest()`` and ``ensure_qemu()``; ``backend_args`` are extra options of
    ``pyvmm vhost-user`` (e.g. ``--monitor PATH``). ``before_boot`` runs once the back end
    listens, before QEMU starts (to arm faults that must reach the driver's probe).
    """
    image, qemu = guest_and_qemu(image, qemu)
    workdir = Path(tempfile.mkdtemp(prefix="pyvmm-vhost-snd-"))
    socket_path = str(workdir / "snd.sock")
    log_path = workdir / "backend.log"
    session = None
    with open(log_path, "wb") as log_file:
        # cwd: the device's default playback WAV lands in the work dir, not the caller's.
        backend = subprocess.Popen(backend_argv(socket_path, device_options or {}, backend_verbosity, backend_args),
                                   stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
                                   cwd=workdir)
    try:
        _wait_for_socket(socket_path, backend, log_path)
        if before_boot is not None:
            before_boot()
        argv = qemu_argv(qemu, image, socket_path, smp, memory_mb, extra_cmdline)
        started = time.monotonic()
        try:
            session = GuestSession.start(argv, timeout=boot_timeout)
        except SessionError as exc:
            raise SessionError(f"{exc}\n--- vhost-user back end log ---\n{log_path.read_text()}") from None
        yield SoundGuest(session, backend, log_path, argv, time.monotonic() - started)
    finally:
        if session is not None:
            session.close(timeout=15.0)
        _stop(backend)
        if not keep_dir:
            shutil.rmtree(workdir, ignore_errors=True)
