"""A shadow source tree: a hard-link farm of a kernel tree, with patches applied to private copies.

Why a hard-link farm: building a user's tree with the platform patch must never write into
that tree, and a full copy of a kernel tree is ~1.5 GB and slow. A farm costs one directory
entry per file, shares every unpatched file with the original (an edit the user makes in place
is seen at once, with its mtime, so ``make`` notices it), and is re-synchronised before each
build for edits that replaced a file (editors that write a new file and rename it), files
added and files deleted. ``git worktree`` would only see committed work; overlayfs needs
mount rights.

A file a patch touches is never a link: its link is removed and replaced by a private copy of
the original before ``patch`` runs, so the user's file (and any other link to it, e.g. a
cached pristine extraction) keeps its content. Patched copies are re-made only when an
original or the patch set changes, so their mtimes stay put and ``make`` does not rebuild them
for nothing. On another file system than the cache, files are copied (mtimes preserved).

Left out of the farm: ``.git`` (git would write its index through a link) and kbuild's
in-tree configuration (``.config``, ``include/config``, generated headers), which would make
kbuild refuse the out-of-tree build.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path

from pyvmm.errors import VmmError

MANIFEST = "shadow.json"
#: Relative paths never mirrored (kbuild's "is the source tree clean" checks, and git).
EXCLUDED_TOP = frozenset({".git", ".config", ".config.old"})
EXCLUDED_DIRS = frozenset({"include/config", "include/generated"})
_GENERATED_ARCH = re.compile(r"^arch/[^/]+/include/generated$")
_PATCH_TARGET = re.compile(r"^\+\+\+ (?:b/)?(\S+)")


class ShadowError(VmmError):
    pass


@dataclass
class SyncStats:
    linked: int = 0     # files (re)linked or copied from the original
    removed: int = 0    # entries deleted because the original is gone
    patched: int = 0    # files re-copied and patched (0: the patched copies were current)

    def __str__(self) -> str:
        return f"{self.linked} updated, {self.removed} removed, {self.patched} patched"


def patched_files(patch: Path) -> list[str]:
    """Paths (relative to the tree) that a ``-p1`` unified diff modifies."""
    names = []
    for line in patch.read_text(errors="replace").splitlines():
        if m := _PATCH_TARGET.match(line):
            if m[1] != "/dev/null" and m[1] not in names:
                names.append(m[1])
    return names


def _excluded(rel: str) -> bool:
    return rel in EXCLUDED_TOP or rel in EXCLUDED_DIRS or bool(_GENERATED_ARCH.match(rel))


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


class ShadowTree:
    """``shadow`` mirrors ``source`` (read only) with ``patches`` applied; see the module docstring."""

    def __init__(self, source: Path, shadow: Path, patches: list[Path], log_path: Path | None = None):
        self.source = Path(source)
        self.shadow = Path(shadow)
        self.patches = list(patches)
        self.log_path = log_path
        self.manifest_path = self.shadow.parent / f"{self.shadow.name}.{MANIFEST}"
        self._can_link = True

    def sync(self) -> SyncStats:
        """Bring the shadow up to date with the source and the patches."""
        stats = SyncStats()
        patched = {name for p in self.patches for name in patched_files(p)}
        for name in patched:
            if not (self.source / name).is_file():
                raise ShadowError(f"{self.source} has no {name}, which the platform patch changes "
                                  f"(is it a Linux tree of a version the patch fits?)")
        manifest = self._load_manifest()
        self.shadow.mkdir(parents=True, exist_ok=True)
        self._sync_dir("", patched | set(manifest.get("patched", {})), stats)
        self._sync_patched(patched, manifest, stats)
        return stats

    # -- the link farm -------------------------------------------------------------------------

    def _sync_dir(self, rel: str, skip: set[str], stats: SyncStats) -> None:
        src_dir = self.source / rel if rel else self.source
        dst_dir = self.shadow / rel if rel else self.shadow
        wanted = {}
        with os.scandir(src_dir) as it:
            for entry in it:
                child = f"{rel}/{entry.name}" if rel else entry.name
                if not _excluded(child):
                    wanted[entry.name] = entry
        with os.scandir(dst_dir) as it:
            existing = {entry.name: entry for entry in it}
        for name, entry in existing.items():
            child = f"{rel}/{name}" if rel else name
            if name not in wanted and child not in skip:
                _remove(dst_dir / name)
                stats.removed += 1
        for name, entry in wanted.items():
            child = f"{rel}/{name}" if rel else name
            if child in skip:
                continue
            target = dst_dir / name
            have = existing.get(name)
            if entry.is_symlink():
                link = os.readlink(entry.path)
                if have is not None and (not have.is_symlink() or os.readlink(have.path) != link):
                    _remove(target)
                    have = None
                if have is None:
                    os.symlink(link, target)
                    stats.linked += 1
            elif entry.is_dir(follow_symlinks=False):
                if have is not None and not have.is_dir(follow_symlinks=False):
                    _remove(target)
                    have = None
                if have is None:
                    target.mkdir()
                self._sync_dir(child, skip, stats)
            elif entry.is_file(follow_symlinks=False):
                if have is not None and self._same_file(entry, have):
                    continue
                if have is not None:
                    _remove(target)
                self._link(Path(entry.path), target)
                stats.linked += 1

    def _same_file(self, entry: os.DirEntry, have: os.DirEntry) -> bool:
        if not have.is_file(follow_symlinks=False):
            return False
        a = entry.stat(follow_symlinks=False)
        b = have.stat(follow_symlinks=False)
        if a.st_ino == b.st_ino and a.st_dev == b.st_dev:
            return True
        # a copy (other file system): same size, mtime and mode
        return (a.st_size, a.st_mtime_ns, stat.S_IMODE(a.st_mode)) == \
               (b.st_size, b.st_mtime_ns, stat.S_IMODE(b.st_mode))

    def _link(self, original: Path, target: Path) -> None:
        if self._can_link:
            try:
                os.link(original, target)
                return
            except OSError as exc:
                if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK):
                    raise
                self._can_link = False
        shutil.copy2(original, target)

    # -- patched copies ------------------------------------------------------------------------

    def _patch_state(self, patched: set[str]) -> dict[str, list[int]]:
        state = {}
        for name in sorted(patched):
            st = (self.source / name).stat()
            state[name] = [st.st_ino, st.st_size, st.st_mtime_ns]
        return state

    def _patches_key(self) -> str:
        digest = hashlib.sha256()
        for patch in self.patches:
            digest.update(patch.name.encode() + b"\0" + patch.read_bytes() + b"\0")
        return digest.hexdigest()[:16]

    def _sync_patched(self, patched: set[str], manifest: dict, stats: SyncStats) -> None:
        state = self._patch_state(patched)
        current = (manifest.get("patches") == self._patches_key() and manifest.get("patched") == state
                   and all((self.shadow / n).is_file() and not self._is_link_to_source(n) for n in patched))
        if current:
            return
        self.manifest_path.unlink(missing_ok=True)  # an interrupted re-patch is redone next time
        for name in sorted(set(manifest.get("patched", {})) | patched):
            target = self.shadow / name
            if target.exists() or target.is_symlink():
                _remove(target)  # break the link: never patch (or truncate) a shared inode
            original = self.source / name
            if not original.is_file():
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            if name in patched:
                shutil.copyfile(original, target)
                shutil.copymode(original, target)
            else:
                self._link(original, target)  # no longer patched: a plain mirror again
        for patch in self.patches:
            self._apply(patch)
        stats.patched = len(patched)
        self.manifest_path.write_text(json.dumps(
            {"source": str(self.source), "patches": self._patches_key(), "patched": state}, indent=1))

    def _is_link_to_source(self, name: str) -> bool:
        a, b = (self.source / name).stat(), (self.shadow / name).stat()
        return a.st_ino == b.st_ino and a.st_dev == b.st_dev

    def _apply(self, patch: Path) -> None:
        argv = ["patch", "-p1", "--forward", "--batch", "--no-backup-if-mismatch", "-i", str(patch)]
        result = subprocess.run(argv, cwd=self.shadow, capture_output=True, text=True)
        if self.log_path is not None:
            with open(self.log_path, "a") as log:
                log.write(f"\n$ (cd {self.shadow} && {' '.join(argv)})\n{result.stdout}{result.stderr}")
        if result.returncode != 0:
            first = next((l for l in (result.stdout + result.stderr).splitlines() if "FAILED" in l
                          or "error" in l.lower()), "patch failed")
            raise ShadowError(f"{patch.name} does not apply to {self.source}: {first.strip()}")

    def _load_manifest(self) -> dict:
        try:
            data = json.loads(self.manifest_path.read_text())
        except (OSError, ValueError):
            return {}
        return data if data.get("source") == str(self.source) else {}
