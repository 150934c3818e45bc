"""Build the guest kernel from Debian's linux-source package: extract, patch, configure, make.

Every command's output goes to one log file; the caller sees a line per step and, during
the long ``make``, a line every half minute. On failure the log's tail is shown.
"""

from __future__ import annotations

import os
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

ARCH = "x86_64"
JOBS = 2  # the machines here have 2 cores shared by everyone
PROGRESS_INTERVAL = 30.0
LOG_TAIL_LINES = 30


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

    def run(self, argv: list[str], cwd: Path, label: str, *, report_every: float | None = None) -> None:
        with open(self.log_path, "a") as log:
            log.write(f"\n$ {shlex.join(argv)}\n")
            log.flush()
            start = time.monotonic()
            proc = subprocess.Popen(argv, cwd=cwd, stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL)
            try:
                while True:
                    try:
                        code = proc.wait(timeout=report_every)
                        break
                    except subprocess.TimeoutExpired:
                        self.progress(f"{label}: {self._compiled()} objects compiled "
                                      f"({format_duration(time.monotonic() - start)})")
            except BaseException:
                proc.terminate()
                proc.wait()
                raise
        if code != 0:
            for line in _tail(self.log_path, LOG_TAIL_LINES):
                self.progress("  | " + line.rstrip())
            raise KernelBuildError(f"{label} failed (exit status {code}); full log: {self.log_path}")

    def _compiled(self) -> int:
        with open(self.log_path, errors="replace") as f:
            return sum(1 for line in f if line.startswith("  CC "))


def build_kernel(*, source_deb: Path, patches: list[Path], fragments: list[Path], work_dir: Path,
                 log_path: Path, progress: Progress, debug: bool = False) -> KernelOutputs:
    """Build in ``work_dir`` (created empty) and return the version and the built files."""
    runner = _LoggedRunner(log_path, progress)
    work_dir.mkdir(parents=True)

    progress(f"kernel: extracting {source_deb.name}")
    runner.run(["bash", "-o", "pipefail", "-c",
                f"dpkg-deb --fsys-tarfile {shlex.quote(str(source_deb))}"
                " | tar -xO --wildcards '*/linux-source-*.tar.xz' | tar -xJ"],
               cwd=work_dir, label="kernel source extraction")
    trees = sorted(work_dir.glob("linux-source-*"))
    if len(trees) != 1:
        raise KernelBuildError(f"expected one linux-source-* tree in {work_dir}, found {len(trees)}")
    tree = trees[0]

    for patch in patches:
        progress(f"kernel: applying {patch.name}")
        runner.run(["patch", "-p1", "--forward", "--batch", "-i", str(patch)], cwd=tree,
                   label=f"patch {patch.name}")

    progress(f"kernel: configuring (tinyconfig + {', '.join(f.name for f in fragments)})")
    make = ["make", f"ARCH={ARCH}"]
    runner.run([*make, "tinyconfig"], cwd=tree, label="make tinyconfig")
    runner.run(["scripts/kconfig/merge_config.sh", "-m", "-O", ".", ".config", *map(str, fragments)],
               cwd=tree, label="merge_config.sh")
    runner.run([*make, "olddefconfig"], cwd=tree, label="make olddefconfig")
    verify_config(fragments, tree / ".config")

    targets = ["vmlinux", "bzImage"] + (["scripts_gdb"] if debug else [])
    progress(f"kernel: building {' '.join(targets)} with make -j{JOBS} (log: {log_path})")
    runner.run(["nice", "-n", "10", *make, f"-j{JOBS}", *targets], cwd=tree,
               label="kernel build", report_every=PROGRESS_INTERVAL)

    version = subprocess.run([*make, "-s", "kernelrelease"], cwd=tree, capture_output=True,
                             text=True, check=True).stdout.strip()
    files = {"vmlinux": tree / "vmlinux", "bzImage": tree / "arch/x86/boot/bzImage",
             "config": tree / ".config", "System.map": tree / "System.map"}
    return KernelOutputs(version, files)


def install_outputs(outputs: KernelOutputs, entry: Path, *, link: bool) -> None:
    """Put the built files into the cache entry (hard links when the tree is kept)."""
    for name, path in outputs.files.items():
        if link:
            try:
                os.link(path, entry / name)
                continue
            except OSError:
                pass
        shutil.copy2(path, entry / name)
