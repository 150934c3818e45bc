"""Kernel modules for a stock kernel: the closure the VMM's devices need, as an initramfs overlay.

Distribution kernels build ``virtio_mmio`` and the device drivers (``snd_virtio`` ...) as
modules. Given the kernel's ``/lib/modules/RELEASE``, the VMM asks which modules bind its
devices through the kernel's own ``modules.alias`` (``acpi*:LNRO0005:*`` for the
virtio-mmio transport found through ACPI, ``virtio:dNNNNNNNNv*`` for a virtio device id),
adds their dependencies from ``modules.dep`` (depth first: a module after what it needs),
and packs them, compressed or not as they are, into a cpio that the default ``/init``
loads with ``insmod`` before the command (``/etc/pyvmm/modules`` lists them in order).
Modules built into the kernel (``modules.builtin``) need nothing.
"""

from __future__ import annotations

import fnmatch
import logging
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from pyvmm.cpio import CpioEntry, build_cpio
from pyvmm.errors import VmmError

log = logging.getLogger(__name__)

GUEST_DIR = "lib/modules/pyvmm"
LIST_PATH = "etc/pyvmm/modules"
MAX_MODULES = 64                       # a sound card needs about a dozen; bound a bad modules.dep
MAX_MODULE_BYTES = 64 << 20
_WILDCARD = re.compile(r"[*?\[]")
_KO = re.compile(r"\.ko(\.(xz|gz|zst|bz2|lz4))?$")


def module_name(path: str) -> str:
    """``kernel/sound/virtio/virtio_snd.ko.xz`` -> ``virtio_snd`` (dashes become underscores)."""
    base = PurePosixPath(path).name
    return _KO.sub("", base).replace("-", "_")


def virtio_modalias(device_type: int, vendor: int = 0xFFFFFFFF) -> str:
    """The modalias the kernel gives a virtio device (``virtio:d%08Xv%08X``)."""
    return f"virtio:d{device_type:08X}v{vendor:08X}"


#: The modalias of a virtio-mmio transport described in the DSDT (see acpi.py).
VIRTIO_MMIO_ACPI_MODALIAS = "acpi:LNRO0005:"
#: Its module name, for kernels given the device on the command line instead.
VIRTIO_MMIO_MODULE = "virtio_mmio"


@dataclass
class ModuleIndex:
    """What ``depmod`` wrote about one kernel's modules."""

    directory: Path
    paths: dict[str, str]                 # module name -> path relative to directory
    deps: dict[str, list[str]]            # module name -> names it needs
    aliases: list[tuple[str, str]]        # (pattern, module name)
    builtin: set[str]

    @classmethod
    def load(cls, directory: Path) -> ModuleIndex:
        directory = Path(directory)
        dep_file = directory / "modules.dep"
        try:
            dep_text = dep_file.read_text()
        except OSError as exc:
            raise VmmError(f"cannot read {dep_file}: {exc.strerror} (run depmod for this kernel)") from None
        paths, raw_deps = {}, {}
        for line in dep_text.splitlines():
            module, sep, rest = line.partition(":")
            if not sep:
                continue
            name = module_name(module)
            paths[name] = module.strip()
            raw_deps[name] = rest.split()
        deps = {name: [module_name(d) for d in items] for name, items in raw_deps.items()}
        aliases = []
        alias_file = directory / "modules.alias"
        if alias_file.is_file():
            for line in alias_file.read_text(errors="replace").splitlines():
                parts = line.split()
                if len(parts) == 3 and parts[0] == "alias":
                    aliases.append((parts[1], parts[2].replace("-", "_")))
        builtin = set()
        builtin_file = directory / "modules.builtin"
        if builtin_file.is_file():
            builtin = {module_name(line) for line in builtin_file.read_text().split()}
        return cls(directory, paths, deps, aliases, builtin)

    def resolve_alias(self, modalias: str) -> list[str]:
        """Module names whose alias pattern matches ``modalias`` (as modprobe does)."""
        found = []
        for pattern, name in self.aliases:
            literal = _WILDCARD.split(pattern, 1)[0]      # cheap test first: a distro has ~30k aliases
            if not modalias.startswith(literal):
                continue
            if fnmatch.fnmatchcase(modalias, pattern) and name not in found:
                found.append(name)
        return found

    def closure(self, names: list[str]) -> list[str]:
        """``names`` and everything they depend on, each after its dependencies."""
        order: list[str] = []
        visiting: set[str] = set()

        def visit(name: str) -> None:
            if name in order or name in self.builtin and name not in self.paths:
                return
            if name not in self.paths:
                raise VmmError(f"module {name} is neither in {self.directory / 'modules.dep'} nor built in")
            if name in visiting:
                raise VmmError(f"module dependency cycle through {name} in {self.directory / 'modules.dep'}")
            visiting.add(name)
            for dep in self.deps.get(name, []):
                visit(dep)
            visiting.discard(name)
            order.append(name)
            if len(order) > MAX_MODULES:
                raise VmmError(f"more than {MAX_MODULES} modules needed from {self.directory}")

        for name in names:
            visit(name)
        return order


@dataclass(frozen=True)
class ModuleOverlay:
    modules: list[str]                   # load order
    cpio: bytes


def wanted_modules(index: ModuleIndex, modaliases: list[str], names: list[str]) -> list[str]:
    """Module names for the devices' modaliases plus explicit ``names``; unknown ones are logged."""
    wanted = []
    for modalias in modaliases:
        found = index.resolve_alias(modalias)
        if not found:
            log.info("no module in %s matches %s (built in, or not available)", index.directory, modalias)
        wanted.extend(n for n in found if n not in wanted)
    for name in names:
        if name in index.paths and name not in wanted:
            wanted.append(name)
        elif name not in index.paths and name not in index.builtin:
            log.info("module %s is not in %s", name, index.directory)
    return wanted


def build_overlay(directory: Path, modaliases: list[str], names: list[str] = ()) -> ModuleOverlay:
    """The cpio overlay with the module closure for ``modaliases`` and ``names``."""
    index = ModuleIndex.load(directory)
    order = index.closure(wanted_modules(index, modaliases, list(names)))
    entries, listing, total = [], [], 0
    for name in order:
        source = index.directory / index.paths[name]
        try:
            data = source.read_bytes()
        except OSError as exc:
            raise VmmError(f"cannot read module {source}: {exc.strerror}") from None
        total += len(data)
        if total > MAX_MODULE_BYTES:
            raise VmmError(f"modules for the devices exceed {MAX_MODULE_BYTES >> 20} MiB")
        guest_path = f"{GUEST_DIR}/{PurePosixPath(index.paths[name]).name}"
        entries.append(CpioEntry.file(guest_path, data))
        listing.append("/" + guest_path)
    entries.append(CpioEntry.file(LIST_PATH, "".join(p + "\n" for p in listing).encode()))
    log.info("modules overlay: %s (%d KiB)", " ".join(order) or "nothing to load", total >> 10)
    return ModuleOverlay(order, build_cpio(entries))
