"""QEMU from Debian (trixie: QEMU 10), run from an extracted package closure.

No chroot and no system installation: the closure's own dynamic loader starts
``qemu-system-x86_64`` with the closure's libraries. Tests use it to run the guest under
QEMU's software CPU (``-accel tcg``), which is much faster here than kvm_pvm's emulator
for guest kernel code, and as the front end for the vhost-user back end.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Callable

from pyvmm.errors import VmmError

from .apt import PrivateApt
from .cache import cache_root
from .progress import Progress
from .recipe import Recipe
from .sysroot import ensure_sysroot

QEMU_PACKAGES = ["qemu-system-x86"]
LIBDIR = "usr/lib/x86_64-linux-gnu"
# Firmware: -L may be given several times; Debian links bios-microvm.bin etc. into
# /usr/share/qemu from its postinst, which dpkg-deb -x does not run.
DATA_DIRS = ["usr/share/qemu", "usr/share/seabios"]


def qemu_argv(root: Path) -> list[str]:
    """The argv prefix that runs the QEMU in the extracted closure ``root``."""
    return [str(root / LIBDIR / "ld-linux-x86-64.so.2"), "--library-path", str(root / LIBDIR),
            str(root / "usr/bin/qemu-system-x86_64"),
            *(arg for d in DATA_DIRS for arg in ("-L", str(root / d)))]


def ensure_qemu(progress: Callable[[str], object] | None = print, force: bool = False) -> list[str]:
    """Argv prefix running Debian trixie's qemu-system-x86_64 (downloaded on first use)."""
    report = Progress(progress)
    recipe = Recipe.load()
    apt = PrivateApt(cache_root() / "apt", recipe.apt)
    if force or not apt.lists_fresh():
        report(f"apt: updating package lists ({apt.source.suite})")
        apt.update(force=True)
    root = ensure_sysroot(apt, cache_root() / "sysroots", "qemu", QEMU_PACKAGES, report, force)
    argv = qemu_argv(root)
    stamp = root / "qemu-version"
    if not stamp.exists():
        result = subprocess.run([*argv[:4], "--version"], capture_output=True, text=True)
        if result.returncode != 0:
            raise VmmError(f"the extracted QEMU in {root} does not run: {result.stderr.strip()}")
        stamp.write_text(result.stdout.splitlines()[0] + "\n")
        report(f"qemu: {result.stdout.splitlines()[0]}")
    return argv
