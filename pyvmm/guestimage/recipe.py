"""A guest recipe: the directory ``guest-images/<name>/`` with ``recipe.toml`` and the files it names."""

from __future__ import annotations

import hashlib
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from pyvmm.errors import VmmError

# Bump when the builder changes what it produces from the same recipe.
BUILDER_VERSION = "1"


def default_recipe_dir() -> Path:
    """``guest-images/default`` of the source tree this package runs from."""
    return Path(__file__).resolve().parents[2] / "guest-images" / "default"


@dataclass(frozen=True)
class AptSource:
    mirror: str
    suite: str
    components: tuple[str, ...]
    keyring: str
    architecture: str

    def sources_list(self) -> str:
        return (f"deb [signed-by={self.keyring}] {self.mirror} {self.suite} "
                f"{' '.join(self.components)}\n")


@dataclass(frozen=True)
class Recipe:
    directory: Path
    apt: AptSource
    kernel: dict
    initramfs: dict
    raw: dict = field(repr=False)

    @classmethod
    def load(cls, directory: Path | None = None) -> "Recipe":
        directory = Path(directory or default_recipe_dir())
        path = directory / "recipe.toml"
        try:
            raw = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise VmmError(f"guest recipe not found: {path}") from None
        except tomllib.TOMLDecodeError as exc:
            raise VmmError(f"{path}: {exc}") from None
        apt = raw["apt"]
        return cls(directory=directory,
                   apt=AptSource(apt["mirror"], apt["suite"], tuple(apt["components"]),
                                 apt["keyring"], apt["architecture"]),
                   kernel=raw["kernel"], initramfs=raw["initramfs"], raw=raw)

    @property
    def cmdline(self) -> str:
        return self.kernel["cmdline"]

    def kernel_config_fragments(self, debug: bool) -> list[Path]:
        names = list(self.kernel["config"]) + (list(self.kernel.get("debug_config", [])) if debug else [])
        return [self._file(name) for name in names]

    def kernel_patches(self) -> list[Path]:
        patches_dir = self.directory / self.kernel.get("patches_dir", "patches")
        return sorted(patches_dir.glob("*.patch"))

    def initramfs_files(self) -> dict[Path, str]:
        """Recipe-directory files to install in the guest: source path -> guest path."""
        return {self._file(src): dest for src, dest in self.initramfs.get("files", {}).items()}

    def kernel_inputs(self, debug: bool) -> list[Path]:
        return self.kernel_config_fragments(debug) + self.kernel_patches()

    def initramfs_inputs(self) -> list[Path]:
        return sorted(self.initramfs_files())

    def kernel_key(self, debug: bool, source_filename: str) -> str:
        """Cache key of the kernel: everything that changes what ``make`` produces.

        The command line is left out: it is passed at boot, not built in.
        """
        table = {k: v for k, v in self.kernel.items() if k != "cmdline"}
        return content_key(self.kernel_inputs(debug), self.directory, self.raw["apt"], table,
                           "debug" if debug else "default", source_filename)

    def initramfs_key(self, package_filenames: list[str]) -> str:
        """Cache key of the initramfs: its recipe files, its table and the exact packages."""
        return content_key(self.initramfs_inputs(), self.directory, self.raw["apt"],
                           self.initramfs, sorted(package_filenames))

    def _file(self, name: str) -> Path:
        path = self.directory / name
        if not path.is_file():
            raise VmmError(f"guest recipe {self.directory} names a missing file: {name}")
        return path


def content_key(files: list[Path], base: Path, *extra: object) -> str:
    """A short hash of the files' names (relative to ``base``) and contents plus ``extra`` values."""
    digest = hashlib.sha256(BUILDER_VERSION.encode())
    for path in sorted(files):
        digest.update(b"\0file\0" + str(path.relative_to(base)).encode() + b"\0")
        digest.update(path.read_bytes())
    for value in extra:
        digest.update(b"\0extra\0" + repr(value).encode())
    return digest.hexdigest()[:16]
