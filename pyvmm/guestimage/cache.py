"""Cache entries under ``${XDG_CACHE_HOME:-~/.cache}/pyvmm/``: built in a temporary
directory, renamed into place on success, and guarded by a lock so that two builds of
the same entry (two test sessions, say) do not race."""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "pyvmm"


@contextmanager
def entry_lock(entry: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``<entry>.lock`` (blocks while another process builds it)."""
    entry.parent.mkdir(parents=True, exist_ok=True)
    with open(entry.parent / f"{entry.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


@contextmanager
def building(entry: Path) -> Iterator[Path]:
    """Yield an empty temporary directory that becomes ``entry`` if the block succeeds.

    Call with :func:`entry_lock` held. Leftovers of interrupted builds are removed first.
    """
    entry.parent.mkdir(parents=True, exist_ok=True)
    for stale in entry.parent.glob(f".{entry.name}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{entry.name}.tmp-", dir=entry.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the entry is an ordinary cache directory
    try:
        yield tmp
        if entry.exists():
            shutil.rmtree(entry)
        os.rename(tmp, entry)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
