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
