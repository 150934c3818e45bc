"""The shadow tree (hard-link farm + patched private copies), on small made-up trees."""

from __future__ import annotations

import os
import subprocess
import time

import pytest

from pyvmm.guestimage.kernel import source_is_clean
from pyvmm.guestimage.kernel_tree import find_linux_tree, host_needs_platform_patch, tree_work_dir
from pyvmm.guestimage.shadow import ShadowError, ShadowTree, patched_files
from pyvmm.errors import VmmError

PATCH = """\
--- a/arch/x86/mm/fault.c
+++ b/arch/x86/mm/fault.c
@@ -1,3 +1,3 @@
 int a;
-int b;
+int b_patched;
 int c;
"""


def make_tree(root):
    (root / "arch/x86/mm").mkdir(parents=True)
    (root / "arch/x86/mm/fault.c").write_text("int a;\nint b;\nint c;\n")
    (root / "sound/virtio").mkdir(parents=True)
    (root / "sound/virtio/virtio_card.c").write_text("probe\n")
    (root / "Makefile").write_text("all:\n")
    os.symlink("Makefile", root / "GNUmakefile")
    return root


@pytest.fixture
def setup(tmp_path):
    source = make_tree(tmp_path / "linux")
    patch = tmp_path / "0001.patch"
    patch.write_text(PATCH)
    return source, patch, ShadowTree(source, tmp_path / "work" / "src", [patch])


def test_patched_files_are_read_from_the_diff_headers(setup):
    _, patch, _ = setup
    assert patched_files(patch) == ["arch/x86/mm/fault.c"]


def test_unpatched_files_are_links_and_patched_ones_private_copies(setup):
    source, _, shadow = setup
    stats = shadow.sync()
    assert stats.patched == 1
    fault, card = "arch/x86/mm/fault.c", "sound/virtio/virtio_card.c"
    assert (shadow.shadow / fault).read_text() == "int a;\nint b_patched;\nint c;\n"
    assert (source / fault).read_text() == "int a;\nint b;\nint c;\n"  # the user's file is untouched
    assert (source / fault).stat().st_nlink == 1
    assert (shadow.shadow / card).stat().st_ino == (source / card).stat().st_ino
    assert os.readlink(shadow.shadow / "GNUmakefile") == "Makefile"


def test_a_patched_file_that_was_hard_linked_elsewhere_stays_pristine(tmp_path, setup):
    source, _, shadow = setup
    elsewhere = tmp_path / "pristine-fault.c"
    os.link(source / "arch/x86/mm/fault.c", elsewhere)  # like a cp -al copy of a cached extraction
    shadow.sync()
    assert elsewhere.read_text() == "int a;\nint b;\nint c;\n"


def test_second_sync_changes_nothing_and_keeps_mtimes(setup):
    _, _, shadow = setup
    shadow.sync()
    before = (shadow.shadow / "arch/x86/mm/fault.c").stat().st_mtime_ns
    stats = shadow.sync()
    assert (stats.linked, stats.removed, stats.patched) == (0, 0, 0)
    assert (shadow.shadow / "arch/x86/mm/fault.c").stat().st_mtime_ns == before


def test_edits_additions_and_deletions_reach_the_shadow(setup):
    source, _, shadow = setup
    shadow.sync()
    card = source / "sound/virtio/virtio_card.c"
    with open(card, "a") as f:  # edit in place: seen through the link at once
        f.write("in place\n")
    assert (shadow.shadow / "sound/virtio/virtio_card.c").read_text().endswith("in place\n")
    tmp = card.with_name(".new")  # an editor that writes a new file and renames it
    tmp.write_text("renamed\n")
    os.replace(tmp, card)
    (source / "sound/virtio/virtio_pcm.c").write_text("new file\n")
    (source / "Makefile").unlink()
    stats = shadow.sync()
    assert (shadow.shadow / "sound/virtio/virtio_card.c").read_text() == "renamed\n"
    assert (shadow.shadow / "sound/virtio/virtio_pcm.c").read_text() == "new file\n"
    assert not (shadow.shadow / "Makefile").exists()
    assert stats.linked == 2 and stats.removed == 1 and stats.patched == 0


def test_an_edited_patched_file_is_recopied_and_repatched(setup):
    source, _, shadow = setup
    shadow.sync()
    (source / "arch/x86/mm/fault.c").write_text("int a;\nint b;\nint c;\nint d;\n")
    time.sleep(0.01)
    assert shadow.sync().patched == 1
    assert (shadow.shadow / "arch/x86/mm/fault.c").read_text() == "int a;\nint b_patched;\nint c;\nint d;\n"


def test_dropping_the_patch_relinks_the_original(setup):
    source, _, shadow = setup
    shadow.sync()
    plain = ShadowTree(source, shadow.shadow, [])
    plain.sync()
    assert (shadow.shadow / "arch/x86/mm/fault.c").stat().st_ino == (source / "arch/x86/mm/fault.c").stat().st_ino


def test_in_tree_configuration_and_git_stay_out(setup):
    source, _, shadow = setup
    (source / ".config").write_text("CONFIG_X=y\n")
    (source / ".git").mkdir()
    (source / "include/config").mkdir(parents=True)
    (source / "arch/x86/include/generated").mkdir(parents=True)
    assert not source_is_clean(source)
    shadow.sync()
    for name in (".config", ".git", "include/config", "arch/x86/include/generated"):
        assert not (shadow.shadow / name).exists(), name
    assert source_is_clean(shadow.shadow)


def test_a_patch_that_does_not_fit_is_one_clear_error(setup):
    source, _, shadow = setup
    (source / "arch/x86/mm/fault.c").write_text("something else entirely\n")
    with pytest.raises(ShadowError, match="does not apply to"):
        shadow.sync()
    (source / "arch/x86/mm/fault.c").unlink()
    with pytest.raises(ShadowError, match="has no arch/x86/mm/fault.c"):
        shadow.sync()


def test_platform_patch_choice(monkeypatch, tmp_path):
    import pyvmm.guestimage.kernel_tree as kt

    monkeypatch.setattr(kt, "PVM_MODULE", tmp_path / "kvm_pvm")
    assert host_needs_platform_patch() is False
    (tmp_path / "kvm_pvm").mkdir()
    assert host_needs_platform_patch() is True
    assert host_needs_platform_patch("no") is False
    assert host_needs_platform_patch("yes") is True
    with pytest.raises(VmmError, match="--platform-patch"):
        host_needs_platform_patch("maybe")


def test_not_a_linux_tree_is_one_line(tmp_path):
    with pytest.raises(VmmError, match="is not a Linux source tree"):
        find_linux_tree(tmp_path)


def test_build_directory_is_keyed_by_tree_and_config(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    a = tree_work_dir(tmp_path / "linux", platform_patch=True)
    assert a.parent == tmp_path / "pyvmm" / "trees" and a.name.startswith("linux-")
    assert a == tree_work_dir(tmp_path / "linux", platform_patch=True)
    assert a != tree_work_dir(tmp_path / "linux", debug=True, platform_patch=True)
    assert a != tree_work_dir(tmp_path / "linux2", platform_patch=True)
    assert a != tree_work_dir(tmp_path / "linux", platform_patch=False)
    assert a != tree_work_dir(tmp_path / "linux", platform_patch=True, fragments=[tmp_path / "x.config"])


def test_links_are_broken_before_patching_even_by_an_in_place_patcher(monkeypatch, setup):
    """GNU patch writes a new file, but the farm must not rely on it: simulate one that writes in place."""
    source, _, shadow = setup

    def patch_in_place(self, patch):
        with open(self.shadow / "arch/x86/mm/fault.c", "r+") as f:
            f.write("int X;")

    monkeypatch.setattr(ShadowTree, "_apply", patch_in_place)
    shadow.sync()
    assert (shadow.shadow / "arch/x86/mm/fault.c").read_text().startswith("int X;")
    assert (source / "arch/x86/mm/fault.c").read_text() == "int a;\nint b;\nint c;\n"
