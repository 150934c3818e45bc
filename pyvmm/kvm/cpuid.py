"""CPUID entries as plain values, and their conversion to and from ``kvm_cpuid2`` buffers."""

from __future__ import annotations

import ctypes
from typing import NamedTuple

from pyvmm.kvm import structs as s


class CpuidEntry(NamedTuple):
    """One CPUID leaf as KVM sees it; a plain tuple, so ``(function, index, flags, eax, ebx, ecx, edx)`` works too."""

    function: int
    index: int
    flags: int
    eax: int
    ebx: int
    ecx: int
    edx: int


def cpuid_entry_from(value) -> CpuidEntry:
    """Accept a CpuidEntry, a 7-tuple or any object with the seven named attributes."""
    if hasattr(value, "function"):
        return CpuidEntry(value.function, value.index, value.flags, value.eax, value.ebx, value.ecx, value.edx)
    return CpuidEntry(*value)


def cpuid_to_struct(entries) -> ctypes.Structure:
    entries = [cpuid_entry_from(e) for e in entries]
    buf = s.cpuid2_with(len(entries))()
    buf.nent = len(entries)
    for dst, e in zip(buf.entries, entries):
        dst.function, dst.index, dst.flags, dst.eax, dst.ebx, dst.ecx, dst.edx = e
    return buf


def cpuid_from_struct(buf) -> list[CpuidEntry]:
    return [CpuidEntry(e.function, e.index, e.flags, e.eax, e.ebx, e.ecx, e.edx) for e in buf.entries[:buf.nent]]


#: What an unwritten slot of :func:`cpuid_read_buffer` holds: no leaf has function, index and
#: flags all ones, so a slot that still reads so was not written by the kernel.
UNWRITTEN = 0xFFFF_FFFF


def cpuid_read_buffer(capacity: int) -> ctypes.Structure:
    """A ``kvm_cpuid2`` with room for ``capacity`` entries, each slot marked unwritten."""
    buf = s.cpuid2_with(capacity)()
    buf.nent = capacity
    for slot in buf.entries:
        slot.function = slot.index = slot.flags = UNWRITTEN
    return buf


def cpuid_written(buf, capacity: int) -> list[CpuidEntry]:
    """The entries the kernel filled in after a ``KVM_GET_*CPUID*`` into :func:`cpuid_read_buffer`.

    Trust only what the kernel reported: the count it wrote back, and of those only the slots it
    wrote. Linux's KVM_GET_CPUID2 did not write the count back on success in older kernels (seen
    on Debian's 6.1: ``nent`` stayed at the buffer's capacity), so the marked slots are the proof.
    """
    entries = []
    for slot in buf.entries[:min(buf.nent, capacity)]:
        if slot.function == slot.index == slot.flags == UNWRITTEN:
            break
        entries.append(CpuidEntry(slot.function, slot.index, slot.flags, slot.eax, slot.ebx, slot.ecx, slot.edx))
    return entries
