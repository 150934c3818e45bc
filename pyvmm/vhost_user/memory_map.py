"""The front end's guest RAM as the back end sees it: mapped region fds plus address translation.

The front end describes each region by three addresses: guest-physical, its own
user-space address and the offset in the fd. Ring addresses arrive as front-end
user-space addresses and are translated to guest-physical here; descriptors carry
guest-physical addresses, which :class:`~pyvmm.memory.GuestMemory` resolves.
"""

from __future__ import annotations

import fcntl
import logging
import os
from dataclasses import dataclass
from typing import Callable

from pyvmm.errors import GuestMemoryError
from pyvmm.memory import GuestMemory, MemoryRegion
from pyvmm.vhost_user.connection import RequestError
from pyvmm.vhost_user.messages import MemoryRegionDesc

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RegionInfo:
    guest_addr: int
    size: int
    user_addr: int
    mmap_offset: int

    @classmethod
    def from_desc(cls, desc: MemoryRegionDesc) -> RegionInfo:
        return cls(desc.guest_phys_addr, desc.memory_size, desc.userspace_addr, desc.mmap_offset)

    def same_range(self, other: RegionInfo) -> bool:
        """REM_MEM_REG identifies a region by guest address, user address and size."""
        return (self.guest_addr, self.user_addr, self.size) == (other.guest_addr, other.user_addr, other.size)

    def __str__(self) -> str:
        return (f"gpa {self.guest_addr:#x}+{self.size:#x} (front-end va {self.user_addr:#x},"
                f" fd offset {self.mmap_offset:#x})")


def _check_cannot_shrink(info: RegionInfo, fd: int) -> int:
    """Refuse a file the front end could truncate while it is mapped here.

    Touching a mapped page past the end of its file raises SIGBUS, which would kill the back
    end without a word (Python cannot recover from it). Only a memfd sealed with F_SEAL_SHRINK
    is guaranteed never to shrink; QEMU's memory-backend-memfd seals its RAM so by default.
    """
    try:
        seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
    except OSError:
        seals = None  # not a memfd or shmem file: any writer may truncate it
    if seals is None or not seals & fcntl.F_SEAL_SHRINK:
        raise RequestError(f"memory region {info} can shrink under the back end: its fd is not a memfd "
                           f"sealed with F_SEAL_SHRINK (use QEMU's memory-backend-memfd, which seals)")
    return seals


class FrontendMemoryMap:
    """Regions shared by the front end, exposed as one long-lived :class:`GuestMemory`.

    ``memory`` stays the same object for the life of the map: when the front end changes
    the table, its regions are swapped in place so a running device and its queues see the
    new mappings without being rebuilt.
    """

    def __init__(self, max_regions: int, on_change: Callable[[], None] = lambda: None):
        self.max_regions = max_regions
        self.on_change = on_change
        """Called once the new regions are in place and before the old ones are unmapped, so
        users of the memory (the running rings) can move their views over first."""
        self.memory = GuestMemory([])
        self._entries: list[tuple[RegionInfo, MemoryRegion]] = []

    @property
    def regions(self) -> list[RegionInfo]:
        return [info for info, _ in self._entries]

    def __len__(self) -> int:
        return len(self._entries)

    # -- changes --------------------------------------------------------------------

    def set_table(self, infos: list[RegionInfo], fds: list[int]) -> None:
        """SET_MEM_TABLE: replace every region. Takes ownership of ``fds`` (closed on failure)."""
        if len(infos) != len(fds):
            for fd in fds:
                os.close(fd)
            raise RequestError(f"memory table has {len(infos)} regions but {len(fds)} fds")
        new_entries = []
        try:
            for i, info in enumerate(infos):
                new_entries.append((info, self._map(info, fds[i])))
                fds[i] = -1
            self._install(new_entries, retire=[region for _, region in self._entries])
        except BaseException:
            for fd in fds:
                if fd >= 0:
                    os.close(fd)
            for _, region in new_entries:
                region.close()
            raise

    def add(self, info: RegionInfo, fd: int) -> None:
        """ADD_MEM_REG. Takes ownership of ``fd``."""
        if len(self._entries) >= self.max_regions:
            os.close(fd)
            raise RequestError(f"no free memory slot for {info} (limit {self.max_regions})")
        try:
            region = self._map(info, fd)
        except BaseException:
            os.close(fd)
            raise
        try:
            self._install([*self._entries, (info, region)], retire=[])
        except BaseException:
            region.close()
            raise

    def remove(self, info: RegionInfo) -> None:
        """REM_MEM_REG."""
        for i, (known, region) in enumerate(self._entries):
            if known.same_range(info):
                self._install(self._entries[:i] + self._entries[i + 1:], retire=[region])
                return
        raise RequestError(f"REM_MEM_REG for unknown region {info}")

    def clear(self) -> None:
        self._install([], retire=[region for _, region in self._entries])

    @staticmethod
    def _map(info: RegionInfo, fd: int) -> MemoryRegion:
        """Map ``fd``; on success the region owns it, on failure the caller still does."""
        if info.size == 0:
            raise RequestError(f"empty memory region {info}")
        seals = _check_cannot_shrink(info, fd)
        try:
            region = MemoryRegion.from_fd(info.guest_addr, info.size, fd, info.mmap_offset)
        except (OSError, ValueError, OverflowError) as exc:
            raise RequestError(f"cannot map memory region {info}: {exc}") from None
        log.debug("mapped %s (memfd seals %#x)", info, seals)
        return region

    def _install(self, entries: list[tuple[RegionInfo, MemoryRegion]], retire: list[MemoryRegion]) -> None:
        try:
            checked = GuestMemory([region for _, region in entries])
        except GuestMemoryError as exc:
            raise RequestError(str(exc)) from None
        self._entries = sorted(entries, key=lambda entry: entry[0].guest_addr)
        self.memory.regions = checked.regions
        try:
            self.on_change()
        finally:
            for region in retire:
                if not region.close():
                    log.warning("memory region at gpa %#x+%#x was still in use when the front end let go of "
                                "it (a device kept a view): its pages were replaced by zero pages",
                                region.guest_addr, region.size)

    # -- translation ----------------------------------------------------------------

    def user_to_guest(self, user_addr: int, length: int = 1) -> int:
        """Translate a front-end user-space range to guest-physical (one region only)."""
        for info, _ in self._entries:
            if info.user_addr <= user_addr and user_addr + length <= info.user_addr + info.size:
                return info.guest_addr + (user_addr - info.user_addr)
        raise RequestError(f"front-end address {user_addr:#x}+{length:#x} is in no memory region")
