"""Acceptance of the kernel-tree loop: edit, ``pyvmm kernel build``, ``pyvmm run --kernel-tree``.

The user's tree is a stand-in: a hard-link copy of Debian's linux-source in the cache
(pyvmm/guestimage/standin.py). Marked ``kernel_build``: the first run compiles a whole
tinyconfig kernel (minutes on two cores); later runs rebuild a few objects.
"""

from __future__ import annotations

import re
import subprocess
import time

import pytest

from pyvmm.guestimage.standin import pristine_of, replace_file, restore_file, standin_tree
from vmm_cli import pyvmm_argv

pytestmark = [pytest.mark.kernel_build, pytest.mark.guest, pytest.mark.kvm,
              pytest.mark.timeout(3 * 3600)]  # a cold build took over 15 min on a loaded machine

CARD = "sound/virtio/virtio_card.c"
ANCHOR = "\tsnd->vdev = vdev;\n"
BUILD_TIMEOUT = 3600
BOOT_TIMEOUT = 600
_REBUILT = re.compile(r"built in \S+, (\d+) objects rebuilt")


def _with_probe_line(text: str, token: str) -> str:
    assert text.count(ANCHOR) == 1, f"{CARD} changed: no unique {ANCHOR!r}"
    line = f'\tpr_info("pyvmm-devloop: virtsnd_probe %s {token}\\n", dev_name(&vdev->dev));\n'
    return text.replace(ANCHOR, ANCHOR + line)


def _build(tree) -> tuple[int, str]:
    proc = subprocess.run(pyvmm_argv("kernel", "build", "--tree", str(tree)), capture_output=True,
                          text=True, timeout=BUILD_TIMEOUT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    match = _REBUILT.search(proc.stderr)
    assert match, proc.stderr[-2000:]
    return int(match[1]), proc.stderr


@pytest.fixture(scope="module")
def tree():
    tree = standin_tree()
    yield tree
    restore_file(tree, CARD)


def test_edit_build_boot_and_rebuild_a_few_objects(tree):
    pristine = restore_file(tree, CARD)
    token = f"t{time.time_ns()}"
    replace_file(tree / CARD, _with_probe_line(pristine, token))
    listing_before = sorted(p.name for p in tree.iterdir())

    _, log = _build(tree)
    if "kvm_pvm detected" in log:
        assert "shadow copy" in log
    # nothing written into the user's tree, and the pristine extraction behind its links intact
    assert sorted(p.name for p in tree.iterdir()) == listing_before
    for rel in ("arch/x86/mm/fault.c", "arch/x86/kernel/alternative.c"):
        assert "pyvmm" not in (tree / rel).read_text()
        assert "pyvmm" not in (pristine_of(tree) / rel).read_text()

    proc = subprocess.run(pyvmm_argv("run", "--kernel-tree", str(tree), "--device", "virtio-snd",
                                     "--timeout", str(BOOT_TIMEOUT), "--", "dmesg"),
                          capture_output=True, text=True, timeout=BOOT_TIMEOUT + BUILD_TIMEOUT)
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-2000:])
    assert "0 objects rebuilt" in proc.stderr  # run --kernel-tree builds only if needed
    user_space = proc.stdout.split("pyvmm-init: start", 1)
    assert len(user_space) == 2, proc.stdout[-3000:]
    assert re.search(rf"pyvmm-devloop: virtsnd_probe virtio\d+ {token}", user_space[1]), user_space[1][-3000:]

    # another one-line change: only that object, the link and its bookkeeping are rebuilt
    token2 = f"t{time.time_ns()}"
    replace_file(tree / CARD, _with_probe_line(pristine, token2))
    objects, log = _build(tree)
    assert 0 < objects < 20, log[-2000:]
    assert token2.encode() in _vmlinux(log).read_bytes()


def _vmlinux(log: str):
    from pathlib import Path

    return Path(re.search(r"objects rebuilt[^:]*: (\S+/vmlinux)", log)[1])
