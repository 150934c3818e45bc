"""Port-I/O and MMIO address maps: a guest access is routed to the device that owns it.

A device sees offsets relative to its own base, never absolute addresses. Accesses that
hit no device read as all-ones and are dropped on write (like real hardware), logged at
trace level so a user can see what a guest probes.
"""

from __future__ import annotations

import bisect
import logging
import threading
from typing import Protocol

log = logging.getLogger(__name__)


class BusDevice(Protocol):
    """What a device on a bus implements. Called from vCPU threads: devices lock their own state."""

    def read(self, offset: int, size: int) -> bytes: ...

    def write(self, offset: int, data: bytes) -> None: ...


class BusConflictError(ValueError):
    pass


class Bus:
    """A sorted map of ``[base, base+length)`` ranges to devices."""

    def __init__(self, name: str):
        self.name = name
        self._bases: list[int] = []
        self._entries: list[tuple[int, int, BusDevice]] = []
        self._lock = threading.Lock()

    def insert(self, device: BusDevice, base: int, length: int) -> None:
        if length <= 0:
            raise BusConflictError(f"{self.name}: empty range at {base:#x}")
        with self._lock:
            for b, n, other in self._entries:
                if base < b + n and b < base + length:
                    raise BusConflictError(
                        f"{self.name}: {base:#x}+{length:#x} overlaps {other!r} at {b:#x}+{n:#x}"
                    )
            i = bisect.bisect(self._bases, base)
            self._bases.insert(i, base)
            self._entries.insert(i, (base, length, device))

    def remove(self, device: BusDevice) -> None:
        with self._lock:
            keep = [e for e in self._entries if e[2] is not device]
            self._entries = keep
            self._bases = [e[0] for e in keep]

    def resolve(self, addr: int) -> tuple[BusDevice, int] | None:
        """The device owning ``addr`` and the offset into it."""
        i = bisect.bisect(self._bases, addr) - 1
        if i < 0:
            return None
        base, length, device = self._entries[i]
        if addr >= base + length:
            return None
        return device, addr - base

    def read(self, addr: int, size: int) -> bytes:
        hit = self.resolve(addr)
        if hit is None:
            log.log(5, "%s read %#x/%d: no device", self.name, addr, size)
            return b"\xff" * size
        device, offset = hit
        data = device.read(offset, size)
        return data

    def write(self, addr: int, data: bytes) -> None:
        hit = self.resolve(addr)
        if hit is None:
            log.log(5, "%s write %#x=%s: no device", self.name, addr, data.hex())
            return
        device, offset = hit
        device.write(offset, data)
