"""The outer guest's boot files: a Debian stock kernel and a small busybox initramfs.

The kernel is Debian's, fetched by :func:`pyvmm.guestimage.stock_kernel.fetch_debian_kernel`
(``debian:6.1``: bookworm; ``debian:6.12``: trixie). The initramfs holds busybox (Debian's
``busybox-static``), ``guest-images/outer/init``, the kernel modules the outer guest needs
(decompressed, dependencies first per ``modules.dep``: virtio, 9p, overlay; then ``kvm`` +
``kvm_amd``) and two lists saying in which order to load them.
It is cached per kernel package, busybox package and init script; the command to run
is a second, per-run cpio archive (:func:`command_cpio`).
"""

from __future__ import annotations

import gzip
import hashlib
import lzma
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from pyvmm.cpio import CpioEntry, CpioWriter, build_cpio
from pyvmm.errors import VmmError
from pyvmm.guestimage.apt import PrivateApt
from pyvmm.guestimage.cache import building, cache_root, entry_lock
from pyvmm.guestimage.modules import ModuleIndex
from pyvmm.guestimage.progress import Progress
from pyvmm.guestimage.recipe import Recipe
from pyvmm.guestimage.stock_kernel import StockKernel, fetch_debian_kernel
from pyvmm.guestimage.sysroot import ensure_sysroot

OUTER_RECIPE = Path(__file__).resolve().parents[2] / "guest-images" / "outer"
BUSYBOX = "usr/bin/busybox"
#: Modules for the host share and the consoles (those built in are skipped), then KVM.
BASE_MODULES = ["virtio_pci", "virtio_console", "9pnet_virtio", "9p", "overlay"]
KVM_MODULES = ["kvm", "kvm_amd"]
MODULE_DIR = "lib/modules/realkvm"

#: Host environment variables passed to the command (plus every PYVMM_* and PYTEST_*).
PASSED_ENV = ("PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "TERM", "TZ", "CI",
              "XDG_CACHE_HOME", "VIRTUAL_ENV", "PYTHONPATH", "PYTHONHASHSEED", "PYTHONDONTWRITEBYTECODE")


@dataclass(frozen=True)
class OuterImage:
    kernel: StockKernel
    initramfs: Path

    @property
    def vmlinuz(self) -> Path:
        return self.kernel.kernel


def ensure_outer_image(series: str, sink: Callable[[str], object] | None) -> OuterImage:
    """The stock kernel of ``series`` (6.1 or 6.12) and the outer initramfs for it (built on first use)."""
    kernel = fetch_debian_kernel(f"debian:{series}", sink)
    progress = Progress(sink)
    recipe = Recipe.load()
    apt = PrivateApt(cache_root() / "apt", recipe.apt)
    if not apt.lists_fresh():
        progress(f"apt: updating package lists ({apt.source.suite})")
        apt.update(force=True)
    busybox_root = ensure_sysroot(apt, cache_root() / "sysroots", "busybox", ["busybox-static"], progress)
    init = (OUTER_RECIPE / "init").read_bytes()
    digest = hashlib.sha256()
    for part in (init, kernel.package.encode(), (busybox_root / "packages.txt").read_bytes(),
                 repr((BASE_MODULES, KVM_MODULES)).encode()):
        digest.update(part + b"\0")
    entry = cache_root() / "realkvm" / f"outer-{kernel.release}-{digest.hexdigest()[:16]}"
    with entry_lock(entry):
        if not entry.is_dir():
            progress(f"outer initramfs: busybox + modules of {kernel.release}")
            with building(entry) as tmp:
                _write_initramfs(tmp / "initramfs.cpio", kernel, busybox_root / BUSYBOX, init)
    return OuterImage(kernel, entry / "initramfs.cpio")


def _write_initramfs(path: Path, kernel: StockKernel, busybox: Path, init: bytes) -> None:
    index = ModuleIndex.load(kernel.modules)
    base = index.closure(BASE_MODULES)  # built-in ones (virtio_pci on 6.12) are left out
    kvm = [m for m in index.closure(KVM_MODULES) if m not in base]
    with open(path, "wb") as out, CpioWriter(out) as cpio:
        cpio.add_file("init", init, mode=0o755)
        cpio.add_file("bin/busybox", busybox.read_bytes(), mode=0o755)
        for name in base + kvm:
            cpio.add_file(f"{MODULE_DIR}/{name}.ko", decompressed(index.directory / index.paths[name]))
        cpio.add_file("realkvm/modules.base", "".join(f"{m}\n" for m in base).encode())
        cpio.add_file("realkvm/modules.kvm", "".join(f"{m}\n" for m in kvm).encode())


def decompressed(path: Path) -> bytes:
    """A module's ELF bytes: busybox's insmod then needs no decompressor, nor the kernel one."""
    data = path.read_bytes()
    if path.name.endswith(".ko.xz"):
        return lzma.decompress(data)
    if path.name.endswith(".ko.gz"):
        return gzip.decompress(data)
    if not path.name.endswith(".ko"):
        raise VmmError(f"{path.name}: only .ko, .ko.xz and .ko.gz modules are supported for the outer guest")
    return data


def command_script(argv: list[str], cwd: str, environ: dict[str, str], extra_env: dict[str, str]) -> str:
    """The shell script the outer guest runs in the chroot: same cwd, a chosen environment, the command."""
    env = {k: v for k, v in environ.items() if k in PASSED_ENV or k.startswith(("PYVMM_", "PYTEST_"))}
    env.update(extra_env)
    lines = [f"cd {shlex.quote(cwd)} || exit 125"]
    lines += [f"export {k}={shlex.quote(v)}" for k, v in sorted(env.items())]
    lines.append(f"exec {shlex.join(argv)}")
    return "\n".join(lines) + "\n"


def command_cpio(script: str, tty: bool) -> bytes:
    """The per-run archive: the command script, and ``realkvm/tty`` if its output should be terminals."""
    entries = [CpioEntry.file("realkvm/cmd", script.encode(), mode=0o755)]
    if tty:
        entries.append(CpioEntry.file("realkvm/tty", b""))
    return build_cpio(entries)
