"""The BIOS e820 memory map, shared by the zero page and the PVH memmap."""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

from pyvmm.arch.x86_64 import layout
from pyvmm.errors import VmmError


class E820Type(IntEnum):
    RAM = 1
    RESERVED = 2
    ACPI = 3
    NVS = 4
    UNUSABLE = 5


@dataclass(frozen=True)
class E820Entry:
    addr: int
    size: int
    type: E820Type

    @property
    def end(self) -> int:
        return self.addr + self.size


def e820_map(ram: list[tuple[int, int]]) -> list[E820Entry]:
    """The map for guest RAM ranges ``[(gpa, size)]`` (as :func:`layout.ram_layout` returns).

    The range at 0 is split as a PC BIOS would: conventional memory below the EBDA, the
    EBDA/VGA/BIOS area 0x9fc00..1 MiB reserved (the MP table lives there), RAM from 1 MiB.
    """
    if not any(start == 0 for start, _ in ram):
        raise VmmError("guest RAM must start at address 0 (the boot structures live below 1 MiB)")
    entries: list[E820Entry] = []
    for start, size in sorted(ram):
        end = start + size
        if start < layout.HIMEM_START:
            if start != 0 or end <= layout.HIMEM_START:
                raise VmmError(f"RAM range {start:#x}..{end:#x} must start at 0 and extend past 1 MiB")
            entries.append(E820Entry(0, layout.EBDA_START, E820Type.RAM))
            entries.append(E820Entry(layout.EBDA_START, layout.HIMEM_START - layout.EBDA_START, E820Type.RESERVED))
            start = layout.HIMEM_START
        if end > start:
            entries.append(E820Entry(start, end - start, E820Type.RAM))
    for a, b in zip(entries, entries[1:]):
        if a.end > b.addr:
            raise VmmError(f"RAM ranges overlap at {b.addr:#x}")
    return entries
