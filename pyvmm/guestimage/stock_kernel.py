"""Stock distribution kernels: fetch Debian's, and find a kernel's modules.

``pyvmm guest fetch-kernel debian[:VERSION]`` downloads one ``linux-image-*-amd64`` package
through the project's private apt (never the host's), unpacks it with ``dpkg-deb -x`` and
runs ``depmod`` on the result, so that the cache entry looks like a small root file system::

    stock-kernels/<package>_<version>/boot/vmlinuz-RELEASE, boot/config-RELEASE
    stock-kernels/<package>_<version>/lib/modules/RELEASE/   (modules.dep, modules.alias ...)

VERSION is a kernel series (``6.1``: bookworm, ``6.12``: trixie, the default) or a Debian
suite name. ``pyvmm run --kernel .../vmlinuz-RELEASE`` then finds the modules beside it.
"""

from __future__ import annotations

import json
import logging
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from pyvmm.errors import VmmError

from .apt import AptError, PrivateApt
from .cache import building, cache_root, entry_lock
from .progress import Progress
from .recipe import AptSource, Recipe

log = logging.getLogger(__name__)

#: Kernel series -> the Debian suite whose ``linux-image-amd64`` carries it.
SERIES_SUITES = {"6.1": "bookworm", "6.12": "trixie"}
DEFAULT_SERIES = "6.12"
KNOWN_SUITES = ("bookworm", "bookworm-backports", "trixie")
META_PACKAGE = "linux-image-amd64"
_IMAGE_PACKAGE = re.compile(r"^linux-image-\d+\.\d+.*-amd64$")
MANIFEST = "stock-kernel.json"


@dataclass(frozen=True)
class StockKernel:
    kernel: Path            # boot/vmlinuz-RELEASE (a bzImage)
    modules: Path           # lib/modules/RELEASE, with depmod's index files
    config: Path            # boot/config-RELEASE
    release: str
    package: str            # "name version"


def parse_spec(spec: str) -> str:
    """``debian[:SERIES|:SUITE]`` -> the Debian suite to fetch from."""
    distro, _, version = spec.partition(":")
    if distro != "debian":
        raise VmmError(f"unknown kernel source {spec!r}: only 'debian[:VERSION]' is supported"
                       f" (VERSION: {', '.join(SERIES_SUITES)} or {', '.join(KNOWN_SUITES)})")
    version = version or DEFAULT_SERIES
    if version in SERIES_SUITES:
        return SERIES_SUITES[version]
    if version in KNOWN_SUITES:
        return version
    raise VmmError(f"unknown Debian kernel version {version!r}: use one of "
                   f"{', '.join(SERIES_SUITES)} (kernel series) or {', '.join(KNOWN_SUITES)} (suites)")


def _apt_for(suite: str) -> PrivateApt:
    recipe = Recipe.load()
    if suite == recipe.apt.suite:
        return PrivateApt(cache_root() / "apt", recipe.apt)   # share lists and downloads with the guest build
    source = AptSource(recipe.apt.mirror, suite, recipe.apt.components, recipe.apt.keyring,
                       recipe.apt.architecture)
    return PrivateApt(cache_root() / f"apt-{suite}", source)


def _image_package(apt: PrivateApt):
    images = [p for p in apt.closure([META_PACKAGE]) if _IMAGE_PACKAGE.match(p.name)]
    if len(images) != 1:
        raise AptError(f"cannot tell which kernel package {META_PACKAGE} stands for in {apt.source.suite}: "
                       f"{', '.join(p.name for p in images) or 'none'}")
    return images[0]


def _modules_root(root: Path) -> Path:
    for candidate in (root / "lib" / "modules", root / "usr" / "lib" / "modules"):
        if candidate.is_dir():
            return candidate
    raise VmmError(f"no lib/modules in the unpacked kernel package {root}")


def _unpack(deb: Path, tmp: Path, progress: Progress) -> str:
    progress(f"stock kernel: unpacking {deb.name}")
    subprocess.run(["dpkg-deb", "-x", str(deb), str(tmp)], check=True)
    releases = [p.name for p in _modules_root(tmp).iterdir() if p.is_dir()]
    if len(releases) != 1:
        raise VmmError(f"{deb.name} holds modules for {releases or 'no'} kernel releases, expected one")
    release = releases[0]
    if not (tmp / "lib").exists():
        (tmp / "lib").symlink_to("usr/lib")       # merged /usr (trixie): depmod -b looks in lib/modules
    progress(f"stock kernel: depmod {release}")
    result = subprocess.run(["depmod", "-b", str(tmp), release], capture_output=True, text=True)
    if result.returncode != 0:
        raise VmmError(f"depmod failed for {release}: {result.stderr.strip()}")
    return release


def fetch_debian_kernel(spec: str = "debian", progress: Callable[[str], object] | None = print,
                        force: bool = False) -> StockKernel:
    """Download (first time) and return Debian's stock kernel for ``spec``."""
    report = Progress(progress)
    suite = parse_spec(spec)
    apt = _apt_for(suite)
    if force or not apt.lists_fresh():
        report(f"apt: updating package lists ({suite})")
        apt.update(force=True)
    package = _image_package(apt)
    entry = cache_root() / "stock-kernels" / f"{package.name}_{package.version}"
    with entry_lock(entry):
        if not (entry / MANIFEST).is_file() or force:
            if not (apt.archives / package.filename).exists():
                report(f"apt: downloading {package.name} {package.version} (about 100 MB)")
            deb = apt.download(package)
            with building(entry) as tmp:
                release = _unpack(deb, tmp, report)
                (tmp / MANIFEST).write_text(json.dumps(
                    {"release": release, "package": f"{package.name} {package.version}", "suite": suite},
                    indent=2) + "\n")
        info = json.loads((entry / MANIFEST).read_text())
    release = info["release"]
    kernel = StockKernel(kernel=entry / "boot" / f"vmlinuz-{release}", modules=entry / "lib" / "modules" / release,
                         config=entry / "boot" / f"config-{release}", release=release, package=info["package"])
    if not kernel.kernel.is_file():
        raise VmmError(f"{kernel.kernel} is missing from the cached kernel package (fetch again with --force)")
    report(f"stock kernel ready: {release} ({info['package']})")
    return kernel


def find_modules_dir(kernel: Path) -> Path | None:
    """``/lib/modules/RELEASE`` for a ``vmlinuz-RELEASE``: beside it in a root-like tree, or the host's."""
    kernel = Path(kernel)
    if not kernel.name.startswith("vmlinuz-"):
        return None
    release = kernel.name[len("vmlinuz-"):]
    root = kernel.resolve().parent.parent
    for candidate in (root / "lib" / "modules" / release, root / "usr" / "lib" / "modules" / release,
                      Path("/lib/modules") / release):
        if (candidate / "modules.dep").is_file():
            log.info("modules for %s: %s", kernel.name, candidate)
            return candidate
    return None


def default_initrds(progress: Callable[[str], object] | None = print) -> list[Path]:
    """The default guest's initramfs, whose /init runs commands and loads module overlays.

    Quiet when it is cached (a user booting their own kernel did not ask about the default guest).
    """
    from .builder import build_default_guest

    said: list[str] = []

    def relay(message: str) -> None:
        if said or "guest image ready" not in message:
            said.append(message)
            if progress is not None:
                progress(message)

    return [build_default_guest(progress=relay).initramfs]
