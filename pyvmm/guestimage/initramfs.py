"""Assemble the guest's uncompressed initramfs from an extracted Debian sysroot.

Only what the recipe names goes in: busybox and its applet links, the listed programs with
the shared libraries the sysroot's own dynamic loader resolves for them, a few data files
and the recipe's own files (``/init`` ...). The kernel copies every byte of the archive in
its slow early boot on kvm_pvm (~4-5 s per MB), so size is the cost to watch.
"""

from __future__ import annotations

import glob
import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from pyvmm.cpio import CpioWriter
from pyvmm.errors import VmmError

LIBDIR = "/usr/lib/x86_64-linux-gnu"
LOADER = f"{LIBDIR}/ld-linux-x86-64.so.2"

# Debian's merged-/usr layout, so programs find /bin/sh and /lib64/ld-linux-x86-64.so.2.
BASE_DIRS = {"/dev": 0o755, "/proc": 0o555, "/sys": 0o555, "/tmp": 0o1777, "/run": 0o755,
             "/root": 0o700, "/etc": 0o755, "/etc/pyvmm": 0o755, "/usr/bin": 0o755,
             "/usr/sbin": 0o755, LIBDIR: 0o755, "/lib64": 0o755, "/var": 0o755}
BASE_SYMLINKS = {"/bin": "usr/bin", "/sbin": "usr/sbin", "/lib": "usr/lib",
                 "/lib64/ld-linux-x86-64.so.2": "../usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"}
# Needed before devtmpfs is mounted: the kernel opens it for /init's stdin/stdout/stderr.
CONSOLE = ("/dev/console", "c", 5, 1, 0o600)


@dataclass
class InitramfsContents:
    """What went into the archive, for the build manifest and the tests."""

    size: int = 0
    files: dict[str, int] = field(default_factory=dict)  # guest path -> bytes
    symlinks: dict[str, str] = field(default_factory=dict)


class SysrootError(VmmError):
    pass


class _Assembler:
    def __init__(self, sysroot: Path, writer: CpioWriter):
        self.sysroot = sysroot
        self.writer = writer
        self.contents = InitramfsContents()
        self._done: set[str] = set()

    def host_path(self, guest_path: str) -> Path:
        return self.sysroot / guest_path.lstrip("/")

    def add_dir(self, guest_path: str, mode: int = 0o755) -> None:
        if guest_path not in self._done:
            self._done.add(guest_path)
            self.writer.add_dir(guest_path, mode)

    def add_symlink(self, guest_path: str, target: str) -> None:
        if guest_path not in self._done:
            self._done.add(guest_path)
            self.writer.add_symlink(guest_path, target)
            self.contents.symlinks[guest_path] = target

    def add_bytes(self, guest_path: str, data: bytes, mode: int) -> None:
        if guest_path in self._done:
            raise SysrootError(f"initramfs: {guest_path} added twice")
        self._done.add(guest_path)
        self.writer.add_file(guest_path, data, mode)
        self.contents.files[guest_path] = len(data)

    def add_from_sysroot(self, guest_path: str) -> None:
        """Copy a sysroot file; a symlink is copied as a link and its target follows."""
        guest_path = os.path.normpath(guest_path)
        if guest_path in self._done:
            return
        host = self.host_path(guest_path)
        if host.is_symlink():
            target = os.readlink(host)
            self.add_symlink(guest_path, target)
            resolved = os.path.normpath(os.path.join(os.path.dirname(guest_path), target))
            self.add_from_sysroot(resolved)
        elif host.is_file():
            self.add_bytes(guest_path, host.read_bytes(), host.stat().st_mode & 0o7777)
        else:
            raise SysrootError(f"initramfs: {guest_path} is not in the guest sysroot {self.sysroot}")


def busybox_applets(sysroot: Path, busybox: str) -> list[str]:
    """Guest paths of busybox's applet links, mapped into /usr (merged-/usr layout)."""
    result = subprocess.run([str(sysroot / busybox.lstrip("/")), "--list-full"],
                            capture_output=True, text=True, check=True)
    paths = []
    for line in result.stdout.split():
        if "/" not in line:
            continue  # "linuxrc": a root-level alternative to /init we do not want
        if line.startswith(("bin/", "sbin/")):
            line = "usr/" + line
        paths.append("/" + line)
    return paths


def shared_libraries(sysroot: Path, program: str) -> list[str]:
    """Guest paths of the libraries the sysroot's loader would map for ``program``."""
    loader = sysroot / LOADER.lstrip("/")
    libdir = sysroot / LIBDIR.lstrip("/")
    result = subprocess.run([str(loader), "--library-path", str(libdir), "--list",
                             str(sysroot / program.lstrip("/"))],
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise SysrootError(f"cannot resolve the libraries of {program}: {result.stderr.strip()}")
    libs = []
    root = os.path.abspath(sysroot)
    for line in result.stdout.splitlines():
        if "=>" not in line:
            continue  # linux-vdso.so.1 is provided by the kernel
        name, _, rest = line.partition("=>")
        host = os.path.abspath(rest.strip().rsplit(" (", 1)[0])
        if rest.strip().startswith("not found"):
            raise SysrootError(f"{program}: library {name.strip()} not found in the guest sysroot")
        if not host.startswith(root + "/"):
            raise SysrootError(f"{program}: library {host} resolved outside the guest sysroot")
        libs.append("/" + os.path.relpath(host, root))
    return libs


def build_initramfs(sysroot: Path, recipe_files: dict[Path, str], busybox: str,
                    programs: list[str], data_globs: list[str], out: Path,
                    generated: dict[str, bytes] | None = None,
                    busybox_links: list[str] | None = None) -> InitramfsContents:
    """Write the archive to ``out`` and return what it holds.

    ``busybox_links``: the applet links to make (each must be an applet); None: all of them.
    """
    sysroot = Path(sysroot)
    with open(out, "wb") as fileobj, CpioWriter(fileobj) as writer:
        asm = _Assembler(sysroot, writer)
        for path, mode in BASE_DIRS.items():
            for parent in reversed(PurePosixPath(path).parents[:-1]):
                asm.add_dir(str(parent))
            asm.add_dir(path, mode)
        for path, target in BASE_SYMLINKS.items():
            asm.add_symlink(path, target)
        path, kind, major, minor, mode = CONSOLE
        writer.add_device(path, kind, major, minor, mode)

        asm.add_from_sysroot(busybox)
        applets = busybox_applets(sysroot, busybox)
        if busybox_links is not None:
            unknown = sorted(set(busybox_links) - set(applets))
            if unknown:
                raise SysrootError(f"initramfs: not busybox applets: {', '.join(unknown)}")
            applets = [a for a in applets if a in busybox_links]
        for applet in applets:
            if applet not in programs:
                asm.add_symlink(applet, os.path.relpath(busybox, os.path.dirname(applet)))

        asm.add_from_sysroot(LOADER)
        for program in programs:
            asm.add_from_sysroot(program)
            for lib in shared_libraries(sysroot, program):
                asm.add_from_sysroot(lib)

        for pattern in data_globs:
            matches = sorted(glob.glob(str(sysroot / pattern.lstrip("/"))))
            if not matches:
                raise SysrootError(f"initramfs: no file in the guest sysroot matches {pattern}")
            for match in matches:
                asm.add_from_sysroot("/" + os.path.relpath(match, sysroot))

        for source, dest in recipe_files.items():
            asm.add_bytes(dest, source.read_bytes(), source.stat().st_mode & 0o7777)
        for dest, data in (generated or {}).items():
            asm.add_bytes(dest, data, 0o644)
    asm.contents.size = out.stat().st_size
    return asm.contents
