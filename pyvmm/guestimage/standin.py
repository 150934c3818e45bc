"""A stand-in for a user's kernel tree: a hard-link copy of the cached Debian ``linux-source``.

The tests and ``scripts/bench_devloop.py`` edit it like a developer would. It lives in the
cache (``test-trees/``) so its build directory, and therefore the rebuild after an edit, stays
warm between runs. Edits go through :func:`replace_file`, which writes a new file and renames
it over the old name: writing through the link would change the pristine extraction too.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Callable

from .builder import ensure_kernel_source
from .cache import cache_root, entry_lock


def standin_tree(progress: Callable[[str], object] | None = None) -> Path:
    """The stand-in tree (made on first use from the cached extraction; a few seconds)."""
    pristine = ensure_kernel_source(progress=progress)
    tree = cache_root() / "test-trees" / pristine.parent.name / pristine.name
    with entry_lock(tree.parent):
        if not tree.is_dir():
            tmp = Path(tempfile.mkdtemp(prefix=".standin-", dir=tree.parent.parent))
            subprocess.run(["cp", "-al", str(pristine), str(tmp / pristine.name)], check=True)
            tree.parent.mkdir(parents=True, exist_ok=True)
            os.rename(tmp / pristine.name, tree)
            shutil.rmtree(tmp)
    return tree


def pristine_of(tree: Path) -> Path:
    """The cached extraction a stand-in tree was copied from."""
    return cache_root() / "kernel" / "src" / tree.parent.name / tree.name


def replace_file(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` as a new inode (never through a hard link)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def restore_file(tree: Path, rel: str) -> str:
    """Put back the pristine ``rel`` in ``tree`` (as a new file); return its text."""
    text = (pristine_of(tree) / rel).read_text()
    replace_file(tree / rel, text)
    return text
