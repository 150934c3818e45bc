"""Guest memory by virtual address, as a debugger sees it: translated page by page.

Translation uses ``KVM_TRANSLATE`` on a stopped vCPU, so it follows that vCPU's current
page tables and paging mode (identity when paging is off) exactly as the CPU would. Only
RAM is accessible: an unmapped page or an address outside guest RAM (MMIO) ends a read
there and fails a write, so a debugger can never make the VMM touch device registers.
"""

from __future__ import annotations

from typing import Callable

from pyvmm.errors import GuestMemoryError
from pyvmm.kvm.ioctls import KvmError

PAGE = 0x1000
#: The most one read or write may cover (bounded by the packet size anyway).
MAX_ACCESS = 0x10000


class GuestVirtualMemory:
    def __init__(self, memory, translate: Callable[[int], int | None]):
        self.memory = memory
        self._translate = translate

    def translate(self, address: int) -> int | None:
        try:
            return self._translate(address & 0xFFFF_FFFF_FFFF_FFFF)
        except KvmError:
            return None  # e.g. a non-canonical address

    def _pieces(self, address: int, length: int):
        while length > 0:
            chunk = min(length, PAGE - (address & (PAGE - 1)))
            yield address, chunk
            address += chunk
            length -= chunk

    def read(self, address: int, length: int) -> bytes:
        """Up to ``length`` bytes; shorter if a later page is unmapped; GuestMemoryError if the first is."""
        length = min(length, MAX_ACCESS)
        out = bytearray()
        for virt, chunk in self._pieces(address, length):
            phys = self.translate(virt)
            try:
                if phys is None:
                    raise GuestMemoryError(f"virtual address {virt:#x} is not mapped")
                out += self.memory.read(phys, chunk)
            except GuestMemoryError:
                if not out:
                    raise
                break
        return bytes(out)

    def write(self, address: int, data: bytes) -> None:
        """All of ``data`` or nothing (every page is translated before the first byte is written)."""
        if len(data) > MAX_ACCESS:
            raise GuestMemoryError(f"write of {len(data)} bytes is too large")
        targets = []
        offset = 0
        for virt, chunk in self._pieces(address, len(data)):
            phys = self.translate(virt)
            if phys is None or not self.memory.contains(phys, chunk):
                raise GuestMemoryError(f"virtual address {virt:#x} is not mapped to RAM")
            targets.append((phys, data[offset:offset + chunk]))
            offset += chunk
        for phys, piece in targets:
            self.memory.write(phys, piece)
