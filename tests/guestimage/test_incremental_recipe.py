"""The default guest keeps its build tree: a recipe change rebuilds only what it touches.

Marked ``kernel_build``: the first build of a variant in a cache compiles the whole kernel
(minutes); after that, a change to the recipe's patch recompiles a handful of objects.
"""

from __future__ import annotations

import json
import shutil
import time

import pytest

from pyvmm.guestimage import build_default_guest
from pyvmm.guestimage.recipe import default_recipe_dir

pytestmark = [pytest.mark.kernel_build, pytest.mark.timeout(3 * 3600)]

COMMENT = "/* pyvmm: kernel-mode int3 is not emulated by kvm_pvm; skip the selftest. */"


def test_a_changed_patch_rebuilds_a_few_objects(tmp_path):
    recipe = tmp_path / "default"
    shutil.copytree(default_recipe_dir(), recipe)
    patch = next((recipe / "patches").glob("*.patch"))
    text = patch.read_text()
    assert COMMENT in text, "the patch changed: pick another line to edit"
    build_default_guest(progress=None, recipe_dir=recipe)  # the variant's build tree is warm now
    # a one-line change in the patch (a unique comment, so the cache entry is new every run)
    patch.write_text(text.replace(COMMENT, COMMENT[:-3] + f" ({time.time_ns()}) */"))
    image = build_default_guest(progress=None, recipe_dir=recipe)
    try:
        info = json.loads((image.vmlinux.parent / "kernel.json").read_text())
        assert 0 < info["objects_compiled"] < 20, info
        assert image.vmlinux.read_bytes()[:4] == b"\x7fELF"
    finally:
        shutil.rmtree(image.vmlinux.parent)  # one entry per run: do not let them pile up
