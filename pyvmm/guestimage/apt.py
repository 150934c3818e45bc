"""A private apt: Debian package lists and downloads kept under the pyvmm cache.

It never touches the host's apt configuration or dpkg database: state, cache and sources
live in one directory, and an empty dpkg status file makes ``apt-get install -d`` fetch a
package's complete dependency closure, which is what an extracted sysroot needs.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from pyvmm.errors import VmmError

from .recipe import AptSource

log = logging.getLogger(__name__)

LISTS_MAX_AGE = 7 * 24 * 3600  # refresh package lists weekly (or with force)
_INST_LINE = re.compile(r"^Inst (\S+) \((\S+) .*\[(\S+)\]\)")


class AptError(VmmError):
    pass


@dataclass(frozen=True, order=True)
class DebPackage:
    name: str
    version: str
    architecture: str

    @property
    def filename(self) -> str:
        """The name apt gives the downloaded file (an epoch's ':' is escaped as %3a)."""
        return f"{self.name}_{self.version.replace(':', '%3a')}_{self.architecture}.deb"


class PrivateApt:
    def __init__(self, directory: Path, source: AptSource):
        self.directory = Path(directory)
        self.source = source
        self.archives = self.directory / "archives"
        self._state = self.directory / "state"
        self._cache = self.directory / "cache"
        for path in (self._state / "lists" / "partial", self._cache, self.archives / "partial"):
            path.mkdir(parents=True, exist_ok=True)
        status = self._state / "status"
        if not status.exists():
            status.write_bytes(b"")
        sources = self.directory / "sources.list"
        if not sources.exists() or sources.read_text() != source.sources_list():
            sources.write_text(source.sources_list())
            self._lists_stamp.unlink(missing_ok=True)

    @property
    def _lists_stamp(self) -> Path:
        return self._state / "lists.updated"

    def _options(self) -> list[str]:
        opts = {
            "Dir::State": self._state,
            "Dir::State::status": self._state / "status",
            "Dir::Cache": self._cache,
            "Dir::Cache::archives": self.archives,
            "Dir::Etc::SourceList": self.directory / "sources.list",
            "Dir::Etc::SourceParts": "/nonexistent",
            "Dir::Etc::Preferences": "/nonexistent",
            "Dir::Etc::PreferencesParts": "/nonexistent",
            "APT::Architecture": self.source.architecture,
            "APT::Architectures": self.source.architecture,
            "Debug::NoLocking": "1",
            # Downloads land in our own directories, which the _apt user may not reach.
            "APT::Sandbox::User": "root",
        }
        return [arg for key, value in opts.items() for arg in ("-o", f"{key}={value}")]

    def _run(self, tool: str, *args: str, cwd: Path | None = None) -> str:
        argv = [tool, *self._options(), *args]
        log.debug("running %s", " ".join(argv))
        result = subprocess.run(argv, capture_output=True, text=True, cwd=cwd,
                                env={**os.environ, "LC_ALL": "C", "DEBIAN_FRONTEND": "noninteractive"})
        if result.returncode != 0:
            detail = "\n".join(line for line in result.stderr.splitlines() if not line.startswith("W:"))
            raise AptError(f"{tool} {' '.join(args)} failed: {detail.strip() or result.stdout[-500:]}")
        return result.stdout

    def lists_fresh(self) -> bool:
        try:
            return time.time() - self._lists_stamp.stat().st_mtime < LISTS_MAX_AGE
        except FileNotFoundError:
            return False

    def update(self, force: bool = False) -> bool:
        """Download package lists if missing, older than a week or ``force``; True if updated."""
        if not force and self.lists_fresh():
            return False
        try:
            self._run("apt-get", "update")
        except AptError:
            if self._lists_stamp.exists():
                log.warning("apt-get update failed; using the package lists from %s",
                            time.ctime(self._lists_stamp.stat().st_mtime))
                return False
            raise
        self._lists_stamp.touch()
        self._memo_path.unlink(missing_ok=True)
        return True

    # Resolving versions costs a second of apt's time per query; the answers only change
    # when the lists do, so they are remembered until the next update.
    @property
    def _memo_path(self) -> Path:
        return self._state / "resolved.json"

    def _memo(self, key: str, compute):
        try:
            memo = json.loads(self._memo_path.read_text())
        except (FileNotFoundError, ValueError):
            memo = {}
        if key not in memo:
            memo[key] = compute()
            tmp = self._memo_path.with_suffix(f".tmp{os.getpid()}")
            tmp.write_text(json.dumps(memo))
            os.replace(tmp, self._memo_path)
        return memo[key]

    def closure(self, packages: list[str]) -> list[DebPackage]:
        """Every package (with version) needed to unpack ``packages`` on an empty system."""
        found = self._memo("closure " + " ".join(packages), lambda: self._resolve_closure(packages))
        return [DebPackage(*p) for p in found]

    def _resolve_closure(self, packages: list[str]) -> list[tuple[str, str, str]]:
        out = self._run("apt-get", "install", "-s", "-y", "--no-install-recommends", *packages)
        found = sorted(DebPackage(*m.groups()) for m in map(_INST_LINE.match, out.splitlines()) if m)
        if not found:
            raise AptError(f"apt resolved no packages for {' '.join(packages)}")
        return [(p.name, p.version, p.architecture) for p in found]

    def candidate(self, package: str) -> DebPackage:
        """The version ``apt-get download`` would fetch."""
        return DebPackage(*self._memo("candidate " + package, lambda: self._resolve_candidate(package)))

    def _resolve_candidate(self, package: str) -> tuple[str, str, str]:
        out = self._run("apt-cache", "show", "--no-all-versions", package)
        fields = dict(re.findall(r"^(Version|Architecture): (\S+)$", out, re.M))
        if "Version" not in fields:
            raise AptError(f"apt knows no version of {package}")
        return (package, fields["Version"], fields["Architecture"])

    def download_closure(self, packages: list[str]) -> list[Path]:
        """Download the closure (as ``apt-get install -d``) and return its .deb files."""
        wanted = self.closure(packages)
        self._run("apt-get", "install", "-d", "-y", "--no-install-recommends", *packages)
        return self._archive_files(wanted)

    def download(self, package: DebPackage) -> Path:
        """``apt-get download`` one package (no dependencies) into the archive directory."""
        path = self.archives / package.filename
        if not path.exists():
            self._run("apt-get", "download", f"{package.name}={package.version}", cwd=self.archives)
        return self._archive_files([package])[0]

    def _archive_files(self, packages: list[DebPackage]) -> list[Path]:
        paths = [self.archives / p.filename for p in packages]
        missing = [p.name for p in paths if not p.exists()]
        if missing:
            raise AptError(f"apt did not download: {', '.join(missing)}")
        return paths
