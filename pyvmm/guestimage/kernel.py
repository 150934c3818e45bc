"""Build a Linux kernel out of tree (``make O=``), incrementally, from any source tree.

Used both for the default guest (Debian's ``linux-source``, extracted once into the cache,
with the recipe's patches) and for a user's own tree (``pyvmm kernel build``). A build
directory ``work`` holds the ``O=`` tree (``work/build``), and when patches are applied or the
source tree must be mirrored, the shadow source (``work/src``, see shadow.py). Both are kept:
the next build after a one-line change recompiles only what depends on it, and a changed
config fragment goes through ``olddefconfig``, which kbuild turns into an incremental rebuild.

Every command's output goes to one log file; the caller sees a line per step and, during
the long ``make``, a line every half minute. On failure the log's tail is shown.
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import shutil
import subprocess
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from pyvmm.errors import VmmError

from .kconfig import verify_config
from .progress import Progress, format_duration
from .shadow import ShadowTree

ARCH = "x86_64"
JOBS = 2  # the machines here have 2 cores shared by everyone
PROGRESS_INTERVAL = 30.0
LOG_TAIL_LINES = 30
_OBJECT_LINE = re.compile(r"^  (CC|AS)(?: \[M\])? ")


class KernelBuildError(VmmError):
    pass


@dataclass(frozen=True)
class KernelOutputs:
    version: str
    files: dict[str, Path]  # name in the cache entry -> path in the build tree


def _tail(path: Path, lines: int) -> list[str]:
    with open(path, errors="replace") as f:
        return list(deque(f, maxlen=lines))


class _LoggedRunner:
    def __init__(self, log_path: Path, progress: Progress):
        self.log_path = log_path
        self.progress = progress

    def run(self, argv: list[str], cwd: Path, label: str, *, report_every: float | None = None) -> int:
        """Run ``argv`` with its output in the log; return the number of objects it compiled."""
        with open(self.log_path, "a") as log:
            log.write(f"\n$ {shlex.join(argv)}\n")
            log.flush()
            offset = log.tell()
            start = time.monotonic()
            proc = subprocess.Popen(argv, cwd=cwd, stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL)
            try:
                while True:
                    try:
                        code = proc.wait(timeout=report_every)
                        break
                    except subprocess.TimeoutExpired:
                        self.progress(f"{label}: {self._compiled(offset)} objects compiled "
                                      f"({format_duration(time.monotonic() - start)})")
            except BaseException:
                proc.terminate()
                proc.wait()
                raise
        if code != 0:
            for line in _tail(self.log_path, LOG_TAIL_LINES):
                self.progress("  | " + line.rstrip())
            raise KernelBuildError(f"{label} failed (exit status {code}); full log: {self.log_path}")
        return self._compiled(offset)

    def _compiled(self, offset: int = 0) -> int:
        """Target objects compiled or assembled (kbuild's ``CC``/``AS`` lines) after ``offset``."""
        with open(self.log_path, errors="replace") as f:
            f.seek(offset)
            return sum(1 for line in f if _OBJECT_LINE.match(line))


@dataclass(frozen=True)
class OutOfTreeBuild:
    srctree: Path       # what make compiled: the source itself, or its shadow copy
    objtree: Path       # the O= directory: vmlinux, .config, System.map, vmlinux-gdb.py
    version: str
    objects: int        # objects compiled by this build (0: nothing had changed)
    shadowed: bool

    @property
    def vmlinux(self) -> Path:
        return self.objtree / "vmlinux"


def extract_source(source_deb: Path, dest: Path, progress: Progress, log_path: Path) -> Path:
    """Extract the kernel tree of a ``linux-source-*`` .deb into the empty ``dest``; return it."""
    runner = _LoggedRunner(log_path, progress)
    dest.mkdir(parents=True, exist_ok=True)
    progress(f"kernel: extracting {source_deb.name}")
    runner.run(["bash", "-o", "pipefail", "-c",
                f"dpkg-deb --fsys-tarfile {shlex.quote(str(source_deb))}"
                " | tar -xO --wildcards '*/linux-source-*.tar.xz' | tar -xJ"],
               cwd=dest, label="kernel source extraction")
    trees = sorted(dest.glob("linux-source-*"))
    if len(trees) != 1:
        raise KernelBuildError(f"expected one linux-source-* tree in {dest}, found {len(trees)}")
    return trees[0]


def _config_key(base_config: Path | None, fragments: list[Path]) -> str:
    digest = hashlib.sha256(b"tinyconfig" if base_config is None else base_config.read_bytes())
    for fragment in fragments:
        # names, not paths: the same recipe in another checkout is the same configuration
        digest.update(b"\0" + fragment.name.encode() + b"\0" + fragment.read_bytes())
    return digest.hexdigest()[:16]


def source_is_clean(source: Path) -> bool:
    """kbuild's own test before an O= build: no in-tree configuration or generated headers."""
    return not ((source / ".config").exists() or (source / "include/config").exists()
                or any((source / "arch").glob("*/include/generated")))


def build_out_of_tree(*, source: Path, work: Path, patches: list[Path], fragments: list[Path],
                      targets: list[str], log_path: Path, progress: Progress,
                      base_config: Path | None = None, shadow: bool | None = None) -> OutOfTreeBuild:
    """Configure and build ``source`` into ``work/build``, reusing what earlier builds left there.

    ``source`` is only read. With ``patches`` (or ``shadow=True``, or a source tree that is not
    clean for an O= build) the build compiles a shadow copy in ``work/src``. The configuration
    is ``make tinyconfig`` (or ``base_config``) plus ``fragments``; it is redone only when one
    of them changed, and every requested option is verified.
    """
    runner = _LoggedRunner(log_path, progress)
    objtree = work / "build"
    objtree.mkdir(parents=True, exist_ok=True)
    if shadow is None:
        shadow = bool(patches) or not source_is_clean(source)
    srctree = source
    if shadow:
        srctree = work / "src"
        tree = ShadowTree(source, srctree, patches, log_path=log_path)
        started = time.monotonic()
        stats = tree.sync()
        progress(f"kernel: shadow tree {srctree} in sync ({stats}; "
                 f"{format_duration(time.monotonic() - started)})")
    make = ["make", "-C", str(srctree), f"O={objtree}", f"ARCH={ARCH}"]

    key_file = work / "config.key"
    key = _config_key(base_config, fragments)
    config = objtree / ".config"
    if not config.exists() or not key_file.exists() or key_file.read_text() != key:
        key_file.unlink(missing_ok=True)
        names = ", ".join(f.name for f in fragments)
        progress(f"kernel: configuring ({'tinyconfig' if base_config is None else base_config} + {names})")
        if base_config is None:
            runner.run([*make, "tinyconfig"], cwd=objtree, label="make tinyconfig")
        else:
            shutil.copyfile(base_config, config)
        runner.run([str(srctree / "scripts/kconfig/merge_config.sh"), "-m", "-O", str(objtree),
                    str(config), *map(str, fragments)], cwd=objtree, label="merge_config.sh")
        runner.run([*make, "olddefconfig"], cwd=objtree, label="make olddefconfig")
        verify_config(fragments, config)
        key_file.write_text(key)

    progress(f"kernel: make -j{JOBS} {' '.join(targets)} in {objtree} (log: {log_path})")
    objects = runner.run(["nice", "-n", "10", *make, f"-j{JOBS}", *targets], cwd=objtree,
                         label="kernel build", report_every=PROGRESS_INTERVAL)
    version = subprocess.run([*make, "-s", "kernelrelease"], cwd=objtree, capture_output=True,
                             text=True, check=True).stdout.strip()
    return OutOfTreeBuild(srctree=srctree, objtree=objtree, version=version, objects=objects,
                          shadowed=shadow)


def default_outputs(build: OutOfTreeBuild) -> KernelOutputs:
    """The files a default guest cache entry holds."""
    o = build.objtree
    return KernelOutputs(build.version, {"vmlinux": o / "vmlinux", "bzImage": o / "arch/x86/boot/bzImage",
                                         "config": o / ".config", "System.map": o / "System.map"})


def install_outputs(outputs: KernelOutputs, entry: Path) -> None:
    """Copy the built files into the cache entry (the build tree goes on changing)."""
    for name, path in outputs.files.items():
        shutil.copy2(path, entry / name)
