"""Guest RAM: shared mmaps addressed by guest-physical address, exposed as numpy views.

Every access is bounds-checked against the regions, so a bad address coming from the
guest (or a bug in a device) raises :class:`GuestMemoryError` instead of touching
host memory. RAM is backed by a memfd so the same pages can be handed to another
process (a vhost-user back end) or mapped from one (``MemoryRegion.from_fd``).
"""

from __future__ import annotations

import ctypes
import mmap
import os
import struct
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np

from pyvmm.errors import GuestMemoryError


@dataclass(eq=False)
class MemoryRegion:
    """One contiguous piece of guest-physical RAM backed by a host mapping."""

    guest_addr: int
    size: int
    fd: int | None
    fd_offset: int
    _map: mmap.mmap = field(repr=False)
    array: np.ndarray = field(repr=False)
    buffer: memoryview = field(init=False, repr=False)
    """The same bytes as ``array``, as a memoryview: what the per-message paths slice
    (descriptor chains, ring fields), because a memoryview slice or a struct read on one runs
    far less C code than numpy's, which shows when the loop wakes with cold caches."""

    def __post_init__(self) -> None:
        self.buffer = memoryview(self.array)

    @classmethod
    def from_fd(cls, guest_addr: int, size: int, fd: int, fd_offset: int = 0) -> MemoryRegion:
        """Map ``size`` bytes of ``fd`` starting at ``fd_offset`` (which need not be page aligned)."""
        if size <= 0:
            raise GuestMemoryError(f"memory region at {guest_addr:#x} has size {size}")
        mapped = mmap.mmap(fd, fd_offset + size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        array = np.frombuffer(mapped, dtype=np.uint8)[fd_offset:fd_offset + size]
        return cls(guest_addr, size, fd, fd_offset, mapped, array)

    @classmethod
    def create(cls, guest_addr: int, size: int, name: str = "pyvmm-ram") -> MemoryRegion:
        """Allocate fresh zeroed RAM in a new memfd."""
        fd = os.memfd_create(name, os.MFD_CLOEXEC)
        os.ftruncate(fd, size)
        return cls.from_fd(guest_addr, size, fd)

    @property
    def end(self) -> int:
        return self.guest_addr + self.size

    @property
    def host_addr(self) -> int:
        """Host virtual address of the region's first byte (for KVM_SET_USER_MEMORY_REGION)."""
        return self.array.ctypes.data

    def close(self) -> bool:
        """Unmap the RAM now and close the fd; False if views handed out earlier were still alive.

        Those views keep the mmap object from closing; its pages are then replaced in place by
        private zero pages, so the RAM (and the file a vhost-user front end shared) is released
        at once whatever still refers to it: a stale view reads zeros, and Python unmaps the
        placeholder when the last view goes."""
        base = self.array.ctypes.data - self.fd_offset if self.array.size else None
        self.array = np.empty(0, dtype=np.uint8)
        self.buffer = memoryview(self.array)
        unmapped = True
        if not self._map.closed:
            try:
                self._map.close()
            except BufferError:
                unmapped = False
                if base is not None:
                    _replace_with_zero_pages(base, len(self._map))
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        return unmapped


_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
_MAP_FIXED, _MAP_NORESERVE = 0x10, 0x4000


def _replace_with_zero_pages(addr: int, length: int) -> None:
    flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | _MAP_FIXED | _MAP_NORESERVE
    if _libc.mmap(addr, length, mmap.PROT_READ | mmap.PROT_WRITE, flags, -1, 0) != addr:
        raise OSError(ctypes.get_errno(), f"cannot replace guest RAM at {addr:#x}+{length:#x}")


_INT_FORMATS = {1: struct.Struct("<B"), 2: struct.Struct("<H"), 4: struct.Struct("<I"), 8: struct.Struct("<Q")}


class GuestMemory:
    """All guest RAM regions, addressed by guest-physical address.

    Accesses that fall inside one region (nearly all: rings, descriptors, a period of audio)
    take a fast path: the region found last is tried first and small values go through
    ``struct`` on the region's array, with no generator or temporary view per access. Only
    accesses spanning regions or falling outside RAM walk :meth:`_segments`."""

    def __init__(self, regions: list[MemoryRegion]):
        self.regions = sorted(regions, key=lambda r: r.guest_addr)
        for a, b in zip(self.regions, self.regions[1:]):
            if a.end > b.guest_addr:
                raise GuestMemoryError(f"memory regions overlap at {b.guest_addr:#x}")
        self._last = self.regions[0] if self.regions else None

    @classmethod
    def create(cls, layout: list[tuple[int, int]]) -> GuestMemory:
        """Allocate RAM for each ``(guest_addr, size)`` range."""
        return cls([MemoryRegion.create(addr, size) for addr, size in layout])

    @property
    def size(self) -> int:
        return sum(r.size for r in self.regions)

    def close(self) -> None:
        for region in self.regions:
            region.close()

    # -- address checks -------------------------------------------------------------

    def contains(self, addr: int, length: int = 1) -> bool:
        try:
            for _ in self._segments(addr, length):
                pass
        except GuestMemoryError:
            return False
        return True

    def _region_at(self, addr: int) -> MemoryRegion | None:
        for region in self.regions:
            if region.guest_addr <= addr < region.end:
                return region
        return None

    def _within(self, addr: int, length: int) -> tuple[MemoryRegion, int] | None:
        """``(region, offset)`` when ``[addr, addr+length)`` lies in one region (the fast path
        of every access); None otherwise (the caller walks :meth:`_segments`, which also
        raises the error for a bad range). A closed region's buffer is empty, so it never
        matches here."""
        if length < 0:
            return None
        region = self._last
        if region is not None:
            off = addr - region.guest_addr
            if 0 <= off and off + length <= len(region.buffer):
                return region, off
        for region in self.regions:  # (a front end may have swapped the list: _last is only a hint)
            off = addr - region.guest_addr
            if 0 <= off and off + length <= len(region.buffer):
                self._last = region
                return region, off
        return None

    def _segments(self, addr: int, length: int) -> Iterator[tuple[MemoryRegion, int, int]]:
        """Yield ``(region, offset, count)`` pieces covering ``[addr, addr+length)``."""
        if length < 0 or addr < 0:
            raise GuestMemoryError(f"bad guest access {addr:#x}+{length:#x}")
        end = addr + length
        while addr < end:
            region = self._region_at(addr)
            if region is None:
                raise GuestMemoryError(
                    f"guest access {addr:#x}..{end:#x} is outside guest RAM"
                    f" ({self._describe()})"
                )
            count = min(end, region.end) - addr
            yield region, addr - region.guest_addr, count
            addr += count

    def _describe(self) -> str:
        return ", ".join(f"{r.guest_addr:#x}-{r.end:#x}" for r in self.regions)

    # -- access ---------------------------------------------------------------------

    def single_view(self, addr: int, length: int) -> np.ndarray | None:
        """A zero-copy uint8 view of ``[addr, addr+length)`` if one region holds it, else None
        (the range crosses regions or leaves RAM): the fast path of buffer lookups."""
        hit = self._within(addr, length)
        if hit is None:
            return None
        region, off = hit
        return region.array[off:off + length]

    def single_buffer(self, addr: int, length: int) -> memoryview | None:
        """:meth:`single_view` as a zero-copy memoryview (see :attr:`MemoryRegion.buffer`).
        Called for every descriptor, so the last region's check is repeated here (the
        :meth:`_within` call and its tuple cost as much as the rest of the lookup)."""
        region = self._last
        if region is not None and length >= 0:
            buffer = region.buffer
            off = addr - region.guest_addr
            if 0 <= off and off + length <= len(buffer):
                return buffer[off:off + length]
        hit = self._within(addr, length)
        if hit is None:
            return None
        region, off = hit
        return region.buffer[off:off + length]

    def view(self, addr: int, length: int) -> np.ndarray:
        """A zero-copy uint8 view of guest memory; the range must lie in one region."""
        pieces = list(self._segments(addr, length))
        if not pieces:
            return np.empty(0, dtype=np.uint8)
        if len(pieces) > 1:
            raise GuestMemoryError(f"guest range {addr:#x}+{length:#x} spans two memory regions")
        region, offset, count = pieces[0]
        return region.array[offset:offset + count]

    def read(self, addr: int, length: int) -> bytes:
        hit = self._within(addr, length)
        if hit is not None:
            region, off = hit
            return region.buffer[off:off + length].tobytes()
        return b"".join(region.array[off:off + n].tobytes() for region, off, n in self._segments(addr, length))

    def read_into(self, addr: int, out: np.ndarray) -> None:
        """Copy guest memory into a uint8 array (no intermediate ``bytes``)."""
        pos = 0
        for region, off, n in self._segments(addr, len(out)):
            out[pos:pos + n] = region.array[off:off + n]
            pos += n

    def write(self, addr: int, data: bytes | bytearray | memoryview | np.ndarray) -> None:
        src = np.frombuffer(data, dtype=np.uint8) if not isinstance(data, np.ndarray) else data.view(np.uint8).ravel()
        hit = self._within(addr, len(src))
        if hit is not None:
            region, off = hit
            region.array[off:off + len(src)] = src
            return
        pos = 0
        for region, off, n in self._segments(addr, len(src)):
            region.array[off:off + n] = src[pos:pos + n]
            pos += n

    def fill(self, addr: int, length: int, value: int = 0) -> None:
        for region, off, n in self._segments(addr, length):
            region.array[off:off + n] = value

    def read_int(self, addr: int, size: int) -> int:
        fmt = _INT_FORMATS.get(size)
        hit = self._within(addr, size)
        if fmt is not None and hit is not None:
            return fmt.unpack_from(hit[0].buffer, hit[1])[0]
        return int.from_bytes(self.read(addr, size), "little")

    def write_int(self, addr: int, size: int, value: int) -> None:
        fmt = _INT_FORMATS.get(size)
        hit = self._within(addr, size)
        if fmt is not None and hit is not None and 0 <= value < 1 << (size * 8):
            fmt.pack_into(hit[0].buffer, hit[1], value)
            return
        self.write(addr, value.to_bytes(size, "little"))  # OverflowError for a value that does not fit

    def read_u8(self, addr: int) -> int:
        return self.read_int(addr, 1)

    def read_u16(self, addr: int) -> int:
        return self.read_int(addr, 2)

    def read_u32(self, addr: int) -> int:
        return self.read_int(addr, 4)

    def read_u64(self, addr: int) -> int:
        return self.read_int(addr, 8)

    def write_u8(self, addr: int, value: int) -> None:
        self.write_int(addr, 1, value)

    def write_u16(self, addr: int, value: int) -> None:
        self.write_int(addr, 2, value)

    def write_u32(self, addr: int, value: int) -> None:
        self.write_int(addr, 4, value)

    def write_u64(self, addr: int, value: int) -> None:
        self.write_int(addr, 8, value)

    def read_struct(self, addr: int, struct_type: type[ctypes.Structure]) -> ctypes.Structure:
        """Read a ``ctypes.Structure`` (a copy: later guest writes do not change it)."""
        return struct_type.from_buffer_copy(self.read(addr, ctypes.sizeof(struct_type)))

    def write_struct(self, addr: int, value: ctypes.Structure) -> None:
        self.write(addr, bytes(value))
