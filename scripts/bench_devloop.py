#!/usr/bin/env python3
"""The kernel developer's loop: touch a driver file, rebuild, boot, run a command, exit.

Each run touches ``sound/virtio/virtio_pcm_msg.c`` in the tree, then times one command,
``pyvmm run --kernel-tree TREE --device virtio-snd -- aplay -l``, from its start to its exit,
split at the build's summary line into build (shadow sync, make, link) and boot (default
initramfs, /init, aplay, exit). Prints each run and the medians.

Without ``--tree`` the tree is the stand-in kept in the cache (a copy of Debian's
linux-source; the touched file is first made a private copy so the cached extraction's
mtimes never change). ``--clean`` also times one build from an empty build directory first.

    .venv/bin/python scripts/bench_devloop.py [--runs 3] [--tree PATH] [--clean]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pyvmm.guestimage.kernel_tree import host_needs_platform_patch, tree_work_dir  # noqa: E402
from pyvmm.guestimage.standin import restore_file, standin_tree  # noqa: E402

TOUCHED = "sound/virtio/virtio_pcm_msg.c"
BUILT = re.compile(r"built in \S+, (\d+) objects rebuilt")
TIMEOUT = 3600


def pyvmm(*args: str) -> list[str]:
    return [sys.executable, "-m", "pyvmm", *args]


def one_loop(tree: Path) -> dict[str, float]:
    os.utime(tree / TOUCHED)
    argv = pyvmm("run", "--kernel-tree", str(tree), "--device", "virtio-snd", "--timeout", "1800",
                 "--", "aplay", "-l")
    start = time.monotonic()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    marks: dict[str, float] = {}
    stdout: list[str] = []
    stderr: list[str] = []
    reader = threading.Thread(target=lambda: stdout.extend(proc.stdout), daemon=True)
    reader.start()
    for line in proc.stderr:
        stderr.append(line)
        if (m := BUILT.search(line)) and "build" not in marks:
            marks["build"] = time.monotonic() - start
            marks["objects"] = int(m[1])
    status = proc.wait(timeout=TIMEOUT)
    total = time.monotonic() - start
    reader.join()
    if status != 0 or "build" not in marks or "virtio" not in "".join(stdout).lower():
        sys.exit(f"bench_devloop: run failed (status {status}):\n{''.join(stderr)[-2000:]}\n"
                 f"{''.join(stdout)[-2000:]}")
    return {"build": marks["build"], "boot": total - marks["build"], "total": total,
            "objects": marks["objects"]}


def clean_build(tree: Path) -> tuple[float, int]:
    work = tree_work_dir(tree)
    shutil.rmtree(work / "build", ignore_errors=True)
    (work / "config.key").unlink(missing_ok=True)
    start = time.monotonic()
    proc = subprocess.run(pyvmm("kernel", "build", "--tree", str(tree)), capture_output=True, text=True)
    seconds = time.monotonic() - start
    if proc.returncode != 0:
        sys.exit(f"bench_devloop: clean build failed:\n{proc.stderr[-2000:]}")
    return seconds, int(BUILT.search(proc.stderr)[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--tree", type=Path, help="Linux tree (default: the cached stand-in)")
    parser.add_argument("--clean", action="store_true", help="also time one build from an empty build dir")
    args = parser.parse_args()
    if args.tree is None:
        tree = standin_tree(progress=print)
        restore_file(tree, TOUCHED)  # a private inode: touching it leaves the cached extraction alone
    else:
        tree = args.tree.resolve()
    print(f"tree: {tree}  (platform patch: {'yes' if host_needs_platform_patch() else 'no'})")
    warm = subprocess.run(pyvmm("kernel", "build", "--tree", str(tree)), capture_output=True, text=True)
    if warm.returncode != 0:
        sys.exit(f"bench_devloop: build failed:\n{warm.stderr[-2000:]}")
    if args.clean:
        seconds, objects = clean_build(tree)
        print(f"clean build: {seconds:.1f} s, {objects} objects")
    runs = []
    for i in range(args.runs):
        r = one_loop(tree)
        runs.append(r)
        print(f"run {i + 1}: touch -> build {r['build']:.1f} s ({r['objects']:.0f} objects) + "
              f"boot and 'aplay -l' {r['boot']:.1f} s = {r['total']:.1f} s")
    med = {k: statistics.median(r[k] for r in runs) for k in ("build", "boot", "total", "objects")}
    print(f"median of {len(runs)}: build {med['build']:.1f} s ({med['objects']:.0f} objects), "
          f"boot {med['boot']:.1f} s, touch to exit {med['total']:.1f} s")


if __name__ == "__main__":
    main()
