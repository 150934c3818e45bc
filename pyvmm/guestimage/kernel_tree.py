"""Your own kernel tree: ``pyvmm kernel build`` and ``pyvmm run --kernel-tree``.

The tree is built out of tree, in a build directory under the pyvmm cache keyed by the tree's
real path and its configuration choices (``trees/<name>-<key>/``: ``build/`` is the ``O=``
tree, ``src/`` the shadow copy when there is one, ``build.log``, ``tree.json``). Nothing is
ever written into the user's tree. The configuration is ``make tinyconfig`` (or the tree's own
``.config``) plus the default guest's fragment, so the kernel boots with the default initramfs.

Where the host's KVM is ``kvm_pvm`` (``/sys/module/kvm_pvm`` exists), guest user space needs the
default guest's platform patch, so the build compiles a shadow copy with the patch applied
(see shadow.py); on hardware KVM the user's tree is compiled as it is.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from pyvmm.errors import VmmError

from .cache import cache_root, entry_lock
from .kernel import build_out_of_tree
from .progress import Progress, format_duration
from .recipe import Recipe

PVM_MODULE = Path("/sys/module/kvm_pvm")
PLATFORM_PATCH_CHOICES = ("auto", "yes", "no")
TREES_DIR = "trees"


@dataclass(frozen=True)
class TreeBuild:
    """A built tree: what ``pyvmm run --kernel-tree`` boots and ``pyvmm gdb --tree`` loads."""

    tree: Path          # the user's tree
    build_dir: Path     # make O=: vmlinux, .config, System.map, vmlinux-gdb.py (debug)
    srctree: Path       # what was compiled: the tree itself or its patched shadow
    version: str
    debug: bool
    platform_patch: bool
    objects: int = 0    # objects compiled by this build
    seconds: float = 0.0

    @property
    def vmlinux(self) -> Path:
        return self.build_dir / "vmlinux"

    @property
    def gdb_script(self) -> Path:
        """``vmlinux-gdb.py`` (the kernel's ``lx-*`` commands); only a ``--debug`` build has it."""
        return self.build_dir / "vmlinux-gdb.py"


def find_linux_tree(path: Path | str | None = None) -> Path:
    """``path`` (default: the current directory) if it is a Linux source tree, else a VmmError."""
    tree = Path(path or os.getcwd()).resolve()
    if not tree.is_dir():
        raise VmmError(f"kernel tree {tree} is not a directory")
    if not all((tree / name).exists() for name in ("Makefile", "Kconfig", "arch/x86/Kconfig", "scripts/kconfig")):
        where = "the current directory" if path is None else str(tree)
        raise VmmError(f"{where} is not a Linux source tree (no Makefile, Kconfig, arch/x86); "
                       "give one with --tree PATH")
    return tree


def host_needs_platform_patch(choice: str = "auto") -> bool:
    """Whether guest kernels need the default guest's platform patch on this host.

    ``auto``: yes when the host's /dev/kvm is ``kvm_pvm`` (its module is loaded), no on a
    hardware KVM (``kvm_intel``/``kvm_amd``) or without KVM.
    """
    if choice not in PLATFORM_PATCH_CHOICES:
        raise VmmError(f"--platform-patch {choice!r}: use one of {', '.join(PLATFORM_PATCH_CHOICES)}")
    if choice != "auto":
        return choice == "yes"
    return PVM_MODULE.is_dir()


def _build_key(tree: Path, debug: bool, config_from_tree: bool, fragments: list[Path], patched: bool) -> str:
    parts = [str(tree), f"debug={debug}", f"from_tree={config_from_tree}", f"patched={patched}",
             *(str(f.resolve()) for f in fragments)]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:12]


def tree_work_dir(tree: Path, *, debug: bool = False, config_from_tree: bool = False,
                  fragments: list[Path] = (), platform_patch: bool | None = None) -> Path:
    """The cache directory of one configuration of ``tree`` (``build/`` inside is ``O=``)."""
    tree = Path(tree).resolve()
    patched = host_needs_platform_patch() if platform_patch is None else platform_patch
    key = _build_key(tree, debug, config_from_tree, list(fragments), patched)
    return cache_root() / TREES_DIR / f"{tree.name}-{key}"


def find_tree_build(tree: Path | str, debug: bool | None = None) -> TreeBuild | None:
    """The newest finished build of ``tree`` (a ``--debug`` one if ``debug``), or None.

    For tools that need a tree's ``vmlinux`` without building it, e.g. ``pyvmm gdb --tree``.
    """
    tree = Path(tree).resolve()
    found = []
    for info_path in (cache_root() / TREES_DIR).glob("*/tree.json"):
        try:
            info = json.loads(info_path.read_text())
        except (OSError, ValueError):
            continue
        if info.get("tree") != str(tree) or (debug is not None and info.get("debug") != debug):
            continue
        build = _from_info(info)
        if build.vmlinux.is_file():
            found.append((build.vmlinux.stat().st_mtime, build))
    return max(found, key=lambda item: item[0])[1] if found else None


def _from_info(info: dict) -> TreeBuild:
    return TreeBuild(tree=Path(info["tree"]), build_dir=Path(info["build_dir"]), srctree=Path(info["srctree"]),
                     version=info["version"], debug=info["debug"], platform_patch=info["platform_patch"],
                     objects=info.get("objects", 0), seconds=info.get("seconds", 0.0))


def build_tree(tree: Path | str | None = None, *, debug: bool = False, fragments: list[Path] = (),
               config_from_tree: bool = False, platform_patch: str = "auto",
               progress: Callable[[str], object] | None = print,
               recipe_dir: Path | None = None) -> TreeBuild:
    """Build ``tree`` (default: the current directory) incrementally; see the module docstring."""
    report = Progress(progress)
    tree = find_linux_tree(tree)
    fragments = [Path(f) for f in fragments]
    for fragment in fragments:
        if not fragment.is_file():
            raise VmmError(f"config fragment {fragment} does not exist")
    base_config = None
    if config_from_tree:
        base_config = tree / ".config"
        if not base_config.is_file():
            raise VmmError(f"--config-from-tree: {tree} has no .config")
    if (tree / "include/config").exists() or any((tree / "arch").glob("*/include/generated")):
        raise VmmError(f"{tree} holds an in-tree build (include/config): pyvmm builds out of tree; "
                       "run 'make mrproper' there first (save .config and use --config-from-tree)")
    recipe = Recipe.load(recipe_dir)
    patched = host_needs_platform_patch(platform_patch)
    patches = recipe.kernel_patches() if patched else []
    all_fragments = recipe.kernel_config_fragments(debug) + fragments
    work = tree_work_dir(tree, debug=debug, config_from_tree=config_from_tree, fragments=fragments,
                         platform_patch=patched)
    if patched:
        why = "kvm_pvm detected" if platform_patch == "auto" else "--platform-patch yes"
        report(f"kernel: {why}: building a shadow copy of {tree} with the default guest's platform "
               f"patch ({', '.join(p.name for p in patches)}) in {work / 'src'}")
    started = time.monotonic()
    with entry_lock(work):
        work.mkdir(parents=True, exist_ok=True)
        log_path = work / "build.log"
        log_path.write_text("")
        targets = ["vmlinux"] + (["scripts_gdb"] if debug else [])
        built = build_out_of_tree(source=tree, work=work, patches=patches, fragments=all_fragments,
                                  targets=targets, log_path=log_path, progress=report,
                                  base_config=base_config)
        seconds = time.monotonic() - started
        result = TreeBuild(tree=tree, build_dir=built.objtree, srctree=built.srctree, version=built.version,
                           debug=debug, platform_patch=patched, objects=built.objects, seconds=seconds)
        info = {"tree": str(tree), "build_dir": str(built.objtree), "srctree": str(built.srctree),
                "version": built.version, "debug": debug, "platform_patch": patched,
                "config_from_tree": config_from_tree, "fragments": [str(f.resolve()) for f in fragments],
                "platform_patch_choice": platform_patch,
                "objects": built.objects, "seconds": round(seconds, 1)}
        (work / "tree.json").write_text(json.dumps(info, indent=2) + "\n")
    report(f"kernel: {result.version} built in {format_duration(seconds)}, {result.objects} objects "
           f"rebuilt{' (platform patch in a shadow copy)' if patched else ''}: {result.vmlinux}")
    return result


def rebuild_tree(tree: Path | str, progress: Callable[[str], object] | None = print,
                 recipe_dir: Path | None = None) -> TreeBuild:
    """Build ``tree`` again with the options of its newest build (``pyvmm run --kernel-tree``).

    So ``pyvmm kernel build --debug`` followed by ``pyvmm run --kernel-tree .`` boots the debug
    kernel, rebuilt if the tree changed. A tree never built gets the default configuration.
    """
    tree = find_linux_tree(tree)
    info = {}
    last = find_tree_build(tree)
    if last is not None:
        info = json.loads((last.build_dir.parent / "tree.json").read_text())
    fragments = [Path(f) for f in info.get("fragments", [])]
    return build_tree(tree, debug=info.get("debug", False), fragments=fragments,
                      config_from_tree=info.get("config_from_tree", False),
                      platform_patch=info.get("platform_patch_choice", "auto"),
                      progress=progress, recipe_dir=recipe_dir)
