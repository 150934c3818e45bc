"""Build (or find in the cache) the default guest: kernel + initramfs from a recipe.

Cache layout under ``${XDG_CACHE_HOME:-~/.cache}/pyvmm/``::

    apt/                       private apt state, package lists and downloaded .debs
    sysroots/guest-<key>/      extracted guest userland packages
    sysroots/qemu-<key>/       extracted QEMU tool root (see qemu.py)
    kernel/<variant>-<key>/    vmlinux, bzImage, config, System.map, kernel.json
    kernel/<variant>-<key>.log the kernel build log
    kernel/src/<deb>/linux-source-*/   the extracted linux-source package (pristine, shared)
    kernel/<variant>-<deb>.tree/       the variant's kept build: src/ (patched shadow of the
                               pristine tree), build/ (make O=); a recipe change rebuilds here
                               incrementally. The debug variant's build/ has vmlinux-gdb.py.
    initramfs/<key>/           initramfs.cpio, contents.json

Kernel keys hash the config fragments, patches, the [apt]/[kernel] recipe tables, the
variant and the linux-source version; initramfs keys hash /init and the other recipe
files, the [apt]/[initramfs] tables and the exact versions of the guest packages.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .apt import AptError, PrivateApt
from .cache import building, cache_root, entry_lock
from .initramfs import build_initramfs
from .kernel import build_out_of_tree, default_outputs, extract_source, install_outputs
from .progress import Progress, format_duration
from .recipe import Recipe
from .sysroot import ensure_sysroot
from .testaudio import ramp_wav


@dataclass(frozen=True)
class GuestImage:
    vmlinux: Path
    bzimage: Path
    initramfs: Path
    cmdline: str
    kernel_version: str
    debug: bool = False
    kernel_config: Path | None = None
    source_dir: Path | None = None  # the debug variant's O= build tree: vmlinux-gdb.py, scripts


def _variant(debug: bool) -> str:
    return "debug" if debug else "default"


def _refresh_lists(apt: PrivateApt, force: bool, progress: Progress) -> None:
    if force or not apt.lists_fresh():
        progress(f"apt: updating package lists ({apt.source.suite})")
        apt.update(force=True)


def _kernel_source(apt: PrivateApt, package: str, progress: Progress) -> Path:
    deb = apt.candidate(package)
    try:
        if not (apt.archives / deb.filename).exists():
            progress(f"apt: downloading {deb.name} {deb.version}")
        return apt.download(deb)
    except AptError:
        progress("apt: download failed; refreshing the package lists and retrying")
        apt.update(force=True)
        return apt.download(apt.candidate(package))


def _deb_stem(deb_filename: str) -> str:
    return deb_filename.removesuffix(".deb").replace("%3a", "_")


def ensure_kernel_source(recipe: Recipe | None = None, progress: Callable[[str], object] | None = print) -> Path:
    """The pristine extracted tree of the recipe's ``linux-source`` package (cached; never modified).

    Also the stand-in for a user's kernel tree in the tests: copy it (``cp -al``) before editing.
    """
    recipe = recipe or Recipe.load()
    report = progress if isinstance(progress, Progress) else Progress(progress)
    root = cache_root()
    apt = PrivateApt(root / "apt", recipe.apt)
    _refresh_lists(apt, False, report)
    return _kernel_source_tree(recipe, apt, root / "kernel", report)


def _kernel_source_tree(recipe: Recipe, apt: PrivateApt, directory: Path, progress: Progress) -> Path:
    source = apt.candidate(recipe.kernel["source_package"])
    entry = directory / "src" / _deb_stem(source.filename)
    with entry_lock(entry):
        trees = sorted(entry.glob("linux-source-*")) if entry.is_dir() else []
        if len(trees) == 1:
            return trees[0]
        deb = _kernel_source(apt, recipe.kernel["source_package"], progress)
        with building(entry) as tmp:
            name = extract_source(deb, tmp, progress, tmp.parent / f"{entry.name}.log").name
        return entry / name


def _ensure_kernel(recipe: Recipe, apt: PrivateApt, directory: Path, debug: bool, force: bool,
                   progress: Progress) -> tuple[Path, dict]:
    source = apt.candidate(recipe.kernel["source_package"])
    key = recipe.kernel_key(debug, source.filename)
    entry = directory / f"{_variant(debug)}-{key}"
    with entry_lock(entry):
        if entry.is_dir() and not force:
            return entry, json.loads((entry / "kernel.json").read_text())
        tree = _kernel_source_tree(recipe, apt, directory, progress)
        log_path = directory / f"{entry.name}.log"
        log_path.write_text("")
        work = directory / f"{_variant(debug)}-{_deb_stem(source.filename)}.tree"
        with entry_lock(work):
            if force:
                shutil.rmtree(work, ignore_errors=True)
            targets = ["vmlinux", "bzImage"] + (["scripts_gdb"] if debug else [])
            built = build_out_of_tree(source=tree, work=work, patches=recipe.kernel_patches(),
                                      fragments=recipe.kernel_config_fragments(debug), targets=targets,
                                      log_path=log_path, progress=progress)
            outputs = default_outputs(built)
            info = {"version": outputs.version, "source_package": f"{source.name} {source.version}",
                    "source_dir": str(built.objtree) if debug else None,
                    "objects_compiled": built.objects}
            with building(entry) as tmp:
                install_outputs(outputs, tmp)
                (tmp / "kernel.json").write_text(json.dumps(info, indent=2) + "\n")
    size = (entry / "vmlinux").stat().st_size
    progress(f"kernel: {info['version']} built ({built.objects} objects compiled), vmlinux {size / 2**20:.1f} MiB")
    return entry, info


def _test_audio(recipe: Recipe) -> dict[str, bytes]:
    return {clip["path"]: ramp_wav(clip["rate"], clip["channels"], clip["frames"])
            for clip in recipe.initramfs.get("test_audio", [])}


def _busybox_links(recipe: Recipe) -> list[str] | None:
    links = recipe.initramfs.get("busybox_links", "all")
    return None if links == "all" else list(links)


def _ensure_initramfs(recipe: Recipe, apt: PrivateApt, root: Path, force: bool,
                      progress: Progress) -> Path:
    packages = list(recipe.initramfs["packages"])
    closure = apt.closure(packages)
    key = recipe.initramfs_key([p.filename for p in closure])
    entry = root / "initramfs" / key
    with entry_lock(entry):
        if (entry / "initramfs.cpio").is_file() and not force:
            return entry / "initramfs.cpio"
        sysroot = ensure_sysroot(apt, root / "sysroots", "guest", packages, progress)
        progress("initramfs: assembling")
        with building(entry) as tmp:
            contents = build_initramfs(sysroot, recipe.initramfs_files(), recipe.initramfs["busybox"],
                                       list(recipe.initramfs["programs"]),
                                       list(recipe.initramfs["data"]), tmp / "initramfs.cpio",
                                       generated=_test_audio(recipe),
                                       busybox_links=_busybox_links(recipe))
            (tmp / "contents.json").write_text(json.dumps(
                {"size": contents.size, "files": contents.files, "symlinks": contents.symlinks,
                 "packages": [f"{p.name} {p.version}" for p in closure]}, indent=2) + "\n")
        progress(f"initramfs: {contents.size / 2**20:.2f} MiB, {len(contents.files)} files, "
                 f"{len(contents.symlinks)} symlinks")
    return entry / "initramfs.cpio"


def build_default_guest(debug: bool = False, force: bool = False,
                        progress: Callable[[str], object] | None = print,
                        recipe_dir: Path | None = None) -> GuestImage:
    """The default guest image, built on first use (several minutes) and cached after.

    ``debug`` builds the variant with DWARF, lockdep and ALSA debugging (separate cache
    entry); ``force`` refreshes the package lists and rebuilds kernel and initramfs.
    """
    report = Progress(progress)
    recipe = Recipe.load(recipe_dir)
    root = cache_root()
    apt = PrivateApt(root / "apt", recipe.apt)
    _refresh_lists(apt, force, report)
    kernel_entry, info = _ensure_kernel(recipe, apt, root / "kernel", debug, force, report)
    initramfs = _ensure_initramfs(recipe, apt, root, force, report)
    image = GuestImage(vmlinux=kernel_entry / "vmlinux", bzimage=kernel_entry / "bzImage",
                       initramfs=initramfs, cmdline=recipe.cmdline, kernel_version=info["version"],
                       debug=debug, kernel_config=kernel_entry / "config",
                       source_dir=Path(info["source_dir"]) if info.get("source_dir") else None)
    report(f"guest image ready ({format_duration(report.elapsed)}): {image.vmlinux}")
    return image


def ensure_default_initramfs(progress: Callable[[str], object] | None = print,
                             recipe_dir: Path | None = None) -> tuple[Path, str]:
    """The default guest's initramfs and command line, without its kernel (for your own kernel)."""
    report = Progress(progress)
    recipe = Recipe.load(recipe_dir)
    root = cache_root()
    apt = PrivateApt(root / "apt", recipe.apt)
    _refresh_lists(apt, False, report)
    return _ensure_initramfs(recipe, apt, root, False, report), recipe.cmdline
