"""Recipe loading and cache keys: a change to an input changes exactly the keys that depend on it."""

import shutil

import pytest

from pyvmm.errors import VmmError
from pyvmm.guestimage.recipe import Recipe, default_recipe_dir

SOURCE = "linux-source-6.12_6.12.117-1_all.deb"
PACKAGES = ["busybox-static_1%3a1.37.0-6+b9_amd64.deb", "libc6_2.41-12_amd64.deb"]


@pytest.fixture
def recipe_dir(tmp_path):
    copy = tmp_path / "default"
    shutil.copytree(default_recipe_dir(), copy)
    return copy


def keys(directory):
    recipe = Recipe.load(directory)
    return (recipe.kernel_key(False, SOURCE), recipe.kernel_key(True, SOURCE),
            recipe.initramfs_key(PACKAGES))


def test_the_default_recipe_loads():
    recipe = Recipe.load()
    assert "console=ttyS0" in recipe.cmdline
    assert [p.name for p in recipe.kernel_config_fragments(debug=False)] == ["kernel.config"]
    assert recipe.kernel_patches(), "the platform patch is part of the recipe"
    assert "/init" in recipe.initramfs_files().values()


def test_keys_are_stable_and_independent_of_the_recipe_location(recipe_dir):
    assert keys(recipe_dir) == keys(default_recipe_dir())


def test_kernel_config_change_changes_only_kernel_keys(recipe_dir):
    before = keys(recipe_dir)
    with open(recipe_dir / "kernel.config", "a") as f:
        f.write("CONFIG_PRINTK_TIME=y\n")
    after = keys(recipe_dir)
    assert after[0] != before[0] and after[1] != before[1]
    assert after[2] == before[2]


def test_debug_fragment_change_changes_only_the_debug_key(recipe_dir):
    before = keys(recipe_dir)
    with open(recipe_dir / "kernel-debug.config", "a") as f:
        f.write("CONFIG_KASAN=y\n")
    after = keys(recipe_dir)
    assert after[1] != before[1]
    assert (after[0], after[2]) == (before[0], before[2])


def test_patch_change_changes_kernel_keys(recipe_dir):
    before = keys(recipe_dir)
    (recipe_dir / "patches" / "0002-extra.patch").write_text("--- a/x\n+++ b/x\n")
    assert keys(recipe_dir)[0] != before[0]


def test_init_change_changes_only_the_initramfs_key(recipe_dir):
    before = keys(recipe_dir)
    with open(recipe_dir / "init", "a") as f:
        f.write("# changed\n")
    after = keys(recipe_dir)
    assert after[2] != before[2]
    assert after[:2] == before[:2]


def test_package_versions_and_source_version_are_part_of_the_keys(recipe_dir):
    recipe = Recipe.load(recipe_dir)
    assert recipe.initramfs_key(PACKAGES) != recipe.initramfs_key(PACKAGES[:1] + ["libc6_2.41-13_amd64.deb"])
    assert recipe.kernel_key(False, SOURCE) != recipe.kernel_key(False, SOURCE.replace("117", "118"))


def test_cmdline_and_readme_do_not_rebuild_anything(recipe_dir):
    before = keys(recipe_dir)
    (recipe_dir / "README.md").write_text("edited")
    toml = recipe_dir / "recipe.toml"
    toml.write_text(toml.read_text().replace("panic=-1 quiet", "panic=-1"))
    assert keys(recipe_dir) == before
    assert "quiet" not in Recipe.load(recipe_dir).cmdline


def test_missing_recipe_file_is_a_clear_error(recipe_dir):
    (recipe_dir / "init").unlink()
    with pytest.raises(VmmError, match="missing file: init"):
        Recipe.load(recipe_dir).initramfs_files()


def test_missing_recipe_directory_is_a_clear_error(tmp_path):
    with pytest.raises(VmmError, match="recipe not found"):
        Recipe.load(tmp_path / "nowhere")
