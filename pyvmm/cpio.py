"""The "newc" cpio format (SVR4 without checksums), the format Linux unpacks as an initramfs.

The kernel accepts several archives concatenated back to back; the CLI relies on that to
append a small archive (e.g. ``/etc/pyvmm/cmd``) to the cached default initramfs.
Entries are written with fixed owner (root) and mtime so the same input gives the same bytes.
"""

from __future__ import annotations

import io
import stat
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import BinaryIO, Iterable

NEWC_MAGIC = b"070701"
HEADER_SIZE = 110  # magic + 13 fields of 8 hex digits
TRAILER_NAME = "TRAILER!!!"
_FIELDS = ("ino", "mode", "uid", "gid", "nlink", "mtime", "filesize",
           "devmajor", "devminor", "rdevmajor", "rdevminor", "namesize", "check")


def _pad4(n: int) -> int:
    return (4 - n % 4) % 4


def _archive_path(path: str | PurePosixPath) -> str:
    """Archive names are relative ("usr/bin/aplay"); "." is the root itself."""
    name = str(PurePosixPath("/", path)).lstrip("/")
    if not name:
        raise ValueError("the archive root has no entry of its own")
    if any(part == ".." for part in PurePosixPath(name).parts):
        raise ValueError(f"cpio path escapes the archive: {path!r}")
    return name


@dataclass(frozen=True)
class CpioEntry:
    """One archive member. ``mode`` includes the file-type bits (``stat.S_IFREG`` ...)."""

    path: str
    mode: int
    data: bytes = b""
    rdev_major: int = 0
    rdev_minor: int = 0

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)

    @property
    def is_file(self) -> bool:
        return stat.S_ISREG(self.mode)

    @property
    def is_symlink(self) -> bool:
        return stat.S_ISLNK(self.mode)

    @property
    def symlink_target(self) -> str:
        if not self.is_symlink:
            raise ValueError(f"{self.path} is not a symlink")
        return self.data.decode()

    @classmethod
    def file(cls, path: str, data: bytes, mode: int = 0o644) -> "CpioEntry":
        return cls(_archive_path(path), stat.S_IFREG | (mode & 0o7777), bytes(data))

    @classmethod
    def directory(cls, path: str, mode: int = 0o755) -> "CpioEntry":
        return cls(_archive_path(path), stat.S_IFDIR | (mode & 0o7777))

    @classmethod
    def symlink(cls, path: str, target: str) -> "CpioEntry":
        return cls(_archive_path(path), stat.S_IFLNK | 0o777, target.encode())

    @classmethod
    def device(cls, path: str, kind: str, major: int, minor: int, mode: int = 0o600) -> "CpioEntry":
        type_bits = {"c": stat.S_IFCHR, "b": stat.S_IFBLK}[kind]
        return cls(_archive_path(path), type_bits | (mode & 0o7777), b"", major, minor)


class CpioWriter:
    """Streams newc entries to a binary file object; call :meth:`finish` to write the trailer.

    With ``make_parents`` (the default) missing parent directories are added first, since
    the kernel's unpacker does not create them.
    """

    def __init__(self, fileobj: BinaryIO, *, make_parents: bool = True, mtime: int = 0):
        self._out = fileobj
        self._make_parents = make_parents
        self._mtime = mtime
        self._next_ino = 1
        self._seen: set[str] = set()
        self._finished = False
        self.bytes_written = 0

    def __enter__(self) -> "CpioWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.finish()

    def add_file(self, path: str, data: bytes, mode: int = 0o644) -> None:
        self.add(CpioEntry.file(path, data, mode))

    def add_dir(self, path: str, mode: int = 0o755) -> None:
        self.add(CpioEntry.directory(path, mode))

    def add_symlink(self, path: str, target: str) -> None:
        self.add(CpioEntry.symlink(path, target))

    def add_device(self, path: str, kind: str, major: int, minor: int, mode: int = 0o600) -> None:
        self.add(CpioEntry.device(path, kind, major, minor, mode))

    def add(self, entry: CpioEntry) -> None:
        if self._finished:
            raise ValueError("cpio archive already finished")
        if entry.path in self._seen:
            if entry.is_dir:
                return  # already created (often as someone's parent)
            raise ValueError(f"duplicate cpio entry: {entry.path}")
        if self._make_parents:
            for parent in reversed(PurePosixPath(entry.path).parents[:-1]):
                if str(parent) not in self._seen:
                    self._write(CpioEntry.directory(str(parent)))
        self._write(entry)

    def finish(self) -> None:
        if not self._finished:
            self._write_raw(TRAILER_NAME, ino=0, mode=0, nlink=1, data=b"")
            self._finished = True

    def _write(self, entry: CpioEntry) -> None:
        self._seen.add(entry.path)
        ino = self._next_ino
        self._next_ino += 1
        self._write_raw(entry.path, ino=ino, mode=entry.mode, nlink=2 if entry.is_dir else 1,
                        data=entry.data, rdev=(entry.rdev_major, entry.rdev_minor))

    def _write_raw(self, name: str, *, ino: int, mode: int, nlink: int, data: bytes,
                   rdev: tuple[int, int] = (0, 0)) -> None:
        encoded = name.encode() + b"\0"
        values = (ino, mode, 0, 0, nlink, self._mtime, len(data), 0, 0, rdev[0], rdev[1], len(encoded), 0)
        header = NEWC_MAGIC + b"".join(b"%08X" % v for v in values)
        chunk = b"".join((header, encoded, b"\0" * _pad4(HEADER_SIZE + len(encoded)),
                          data, b"\0" * _pad4(len(data))))
        self._out.write(chunk)
        self.bytes_written += len(chunk)


def build_cpio(entries: Iterable[CpioEntry], *, make_parents: bool = True) -> bytes:
    """A complete archive (with trailer) holding ``entries`` in order."""
    buf = io.BytesIO()
    with CpioWriter(buf, make_parents=make_parents) as writer:
        for entry in entries:
            writer.add(entry)
    return buf.getvalue()


def read_cpio(data: bytes) -> list[CpioEntry]:
    """Parse one or more concatenated newc archives (zero padding between them is skipped).

    Later entries with the same path replace earlier ones, as when the kernel unpacks them.
    """
    entries: dict[str, CpioEntry] = {}
    pos = 0
    while pos < len(data):
        if data[pos] == 0:
            pos += 1
            continue
        if data[pos:pos + 6] != NEWC_MAGIC:
            raise ValueError(f"bad cpio magic at offset {pos}")
        fields = {name: int(data[pos + 6 + 8 * i:pos + 14 + 8 * i], 16) for i, name in enumerate(_FIELDS)}
        name_start = pos + HEADER_SIZE
        name_end = name_start + fields["namesize"]
        name = data[name_start:name_end - 1].decode()
        data_start = name_end + _pad4(HEADER_SIZE + fields["namesize"])
        data_end = data_start + fields["filesize"]
        if data_end > len(data):
            raise ValueError(f"truncated cpio entry {name!r}")
        pos = data_end + _pad4(fields["filesize"])
        if name == TRAILER_NAME:
            continue
        entries.pop(name, None)
        entries[name] = CpioEntry(name, fields["mode"], data[data_start:data_end],
                                  fields["rdevmajor"], fields["rdevminor"])
    return list(entries.values())
