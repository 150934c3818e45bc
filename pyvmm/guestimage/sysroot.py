"""Extracted Debian package closures ("sysroots"): the guest userland and the QEMU tool root.

Packages are unpacked with ``dpkg-deb -x`` (no maintainer scripts run), one cache entry
per exact set of package versions.
"""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

from .apt import AptError, PrivateApt
from .cache import building, entry_lock
from .progress import Progress

MANIFEST = "packages.txt"


def ensure_sysroot(apt: PrivateApt, directory: Path, name: str, packages: list[str],
                   progress: Progress, force: bool = False) -> Path:
    """The cached sysroot holding the dependency closure of ``packages``."""
    for attempt in (1, 2):
        closure = apt.closure(packages)
        key = hashlib.sha256("\n".join(p.filename for p in closure).encode()).hexdigest()[:16]
        entry = directory / f"{name}-{key}"
        with entry_lock(entry):
            if entry.is_dir() and not force:
                return entry
            progress(f"{name} sysroot: downloading {len(closure)} packages ({', '.join(packages)})")
            try:
                debs = apt.download_closure(packages)
            except AptError:
                if attempt == 2:
                    raise
            else:
                progress(f"{name} sysroot: extracting {len(debs)} packages")
                with building(entry) as tmp:
                    for deb in debs:
                        subprocess.run(["dpkg-deb", "-x", str(deb), str(tmp)], check=True)
                    (tmp / MANIFEST).write_text("".join(f"{p.name} {p.version}\n" for p in closure))
                return entry
        progress("apt: download failed; refreshing the package lists and retrying")
        apt.update(force=True)
    raise AssertionError("unreachable")
