"""Identity page tables for the 64-bit boot protocol: the first 4 GiB with 2 MiB pages.

The kernel's 64-bit entry expects paging on and identity mapped the kernel, the zero
page, the command line and the initrd; 4 GiB covers all of them wherever they sit in
low RAM (the MMIO hole included, which the kernel remaps itself soon after).
"""

from __future__ import annotations

import numpy as np

from pyvmm.arch.x86_64 import layout
from pyvmm.memory import GuestMemory

PTE_PRESENT = 1 << 0
PTE_WRITABLE = 1 << 1
PTE_PAGE_SIZE = 1 << 7   # in a PD entry: maps a 2 MiB page
ENTRIES_PER_TABLE = 512
LARGE_PAGE_SIZE = 2 * layout.MiB


def write_identity_map(memory: GuestMemory) -> int:
    """Write PML4, PDPT and PDs at their layout addresses; return the CR3 value."""
    table = np.zeros(ENTRIES_PER_TABLE, dtype="<u8")
    table[0] = layout.PDPT_START | PTE_PRESENT | PTE_WRITABLE
    memory.write(layout.PML4_START, table)

    table[:] = 0
    for i in range(layout.PD_COUNT):
        table[i] = (layout.PD_START + i * layout.PAGE_SIZE) | PTE_PRESENT | PTE_WRITABLE
    memory.write(layout.PDPT_START, table)

    pages = np.arange(layout.PD_COUNT * ENTRIES_PER_TABLE, dtype="<u8")
    pds = pages * LARGE_PAGE_SIZE | (PTE_PRESENT | PTE_WRITABLE | PTE_PAGE_SIZE)
    memory.write(layout.PD_START, pds)
    return layout.PML4_START
