"""Breakpoints and watchpoints: the four x86 debug registers, and int3 software breakpoints.

:class:`DebugRegisters` allocates DR0-DR3 for gdb's ``Z1`` (execution), ``Z2`` (write),
``Z3`` (read: x86 has no read-only watchpoints, so it watches accesses and gdb filters out
writes) and ``Z4`` (access) requests and builds DR7 for ``KVM_SET_GUEST_DEBUG``. A
watchpoint whose address or length is not one x86 can watch (1, 2, 4 or 8 bytes, aligned)
is split into aligned pieces, each taking a register, as gdb's native x86 code does.
:class:`SoftwareBreakpoints` remembers the bytes an ``int3`` replaced.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Kind(enum.Enum):
    EXEC = 1    # Z1
    WRITE = 2   # Z2
    READ = 3    # Z3 (implemented as access)
    ACCESS = 4  # Z4

    @property
    def stop_reason(self) -> str:
        return {Kind.EXEC: "hwbreak", Kind.WRITE: "watch", Kind.READ: "rwatch", Kind.ACCESS: "awatch"}[self]


_RW_BITS = {Kind.EXEC: 0b00, Kind.WRITE: 0b01, Kind.READ: 0b11, Kind.ACCESS: 0b11}
_LEN_BITS = {1: 0b00, 2: 0b01, 8: 0b10, 4: 0b11}
SLOTS = 4
#: DR7 bits always set while we own the registers: GE (bit 9) and the reserved bit 10.
DR7_BASE = 0x600
#: The largest watched range we split into pieces (all four registers of 8 bytes).
MAX_WATCH = 32


@dataclass(frozen=True)
class Slot:
    kind: Kind
    address: int   # where this piece starts
    length: int    # 1, 2, 4 or 8
    request: tuple[Kind, int, int]  # the Z request it belongs to: (kind, address, length)


class NoDebugRegister(Exception):
    """All four debug registers are in use (or the request needs more than are free)."""


def aligned_pieces(address: int, length: int) -> list[tuple[int, int]]:
    """Cover ``[address, address + length)`` with naturally aligned 1/2/4/8-byte pieces."""
    if not 0 < length <= MAX_WATCH:
        raise ValueError(f"cannot watch {length} bytes (1 to {MAX_WATCH})")
    pieces = []
    end = address + length
    while address < end:
        size = 8
        while size > 1 and (address % size or address + size > end):
            size //= 2
        pieces.append((address, size))
        address += size
    return pieces


class DebugRegisters:
    """What DR0-DR3 and DR7 hold for gdb's hardware breakpoints and watchpoints."""

    def __init__(self):
        self.slots: list[Slot | None] = [None] * SLOTS
        self._refs: dict[tuple[Kind, int, int], int] = {}

    def insert(self, kind: Kind, address: int, length: int = 1) -> None:
        """Take registers for a request (a repeated request is counted, not duplicated)."""
        request = (kind, address, length)
        if request in self._refs:
            self._refs[request] += 1
            return
        pieces = [(address, 1)] if kind is Kind.EXEC else aligned_pieces(address, length)
        free = [i for i, slot in enumerate(self.slots) if slot is None]
        if len(pieces) > len(free):
            raise NoDebugRegister(f"{len(pieces)} debug register(s) needed, {len(free)} free")
        for (piece_address, piece_length), index in zip(pieces, free):
            self.slots[index] = Slot(kind, piece_address, piece_length, request)
        self._refs[request] = 1

    def remove(self, kind: Kind, address: int, length: int = 1) -> bool:
        request = (kind, address, length)
        if request not in self._refs:
            return False
        self._refs[request] -= 1
        if self._refs[request] == 0:
            del self._refs[request]
            self.slots = [None if s is not None and s.request == request else s for s in self.slots]
        return True

    def clear(self) -> None:
        self.slots = [None] * SLOTS
        self._refs.clear()

    def __bool__(self) -> bool:
        return any(self.slots)

    @property
    def free(self) -> int:
        return sum(slot is None for slot in self.slots)

    def debugreg(self) -> tuple[int, ...]:
        """DR0-DR7 for ``KVM_SET_GUEST_DEBUG`` (DR4/DR5 unused, DR6 0)."""
        dr7 = DR7_BASE
        addresses = [0] * SLOTS
        for i, slot in enumerate(self.slots):
            if slot is None:
                continue
            addresses[i] = slot.address
            length = 1 if slot.kind is Kind.EXEC else slot.length  # execution breakpoints need LEN 00
            dr7 |= (0b10 << (2 * i)) | (_RW_BITS[slot.kind] << (16 + 4 * i)) | (_LEN_BITS[length] << (18 + 4 * i))
        return (*addresses, 0, 0, 0, dr7)

    def hits(self, dr6: int) -> list[Slot]:
        """The slots DR6's B0-B3 bits say triggered."""
        return [slot for i, slot in enumerate(self.slots) if slot is not None and dr6 & (1 << i)]


class SoftwareBreakpoints:
    """``int3`` breakpoints: address -> the original byte, written back on removal."""

    INT3 = 0xCC

    def __init__(self):
        self.saved: dict[int, int] = {}

    def __contains__(self, address: int) -> bool:
        return address in self.saved

    def __bool__(self) -> bool:
        return bool(self.saved)

    def shadow(self, address: int, data: bytes) -> bytes:
        """``data`` read from guest memory at ``address`` with our int3 bytes replaced by the originals."""
        if not self.saved:
            return data
        out = bytearray(data)
        for bp, original in self.saved.items():
            if address <= bp < address + len(data):
                out[bp - address] = original
        return bytes(out)
