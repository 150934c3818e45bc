"""PVH boot: ``struct hvm_start_info`` and its module list and memory map (Xen's
``include/xen/interface/hvm/start_info.h``), which Linux's ``pvh_start_xen`` reads."""

from __future__ import annotations

import ctypes

from pyvmm.arch.x86_64.e820 import E820Entry

u32, u64 = ctypes.c_uint32, ctypes.c_uint64

HVM_START_MAGIC = 0x336EC578
HVM_START_INFO_VERSION = 1       # version 1 adds memmap_paddr/memmap_entries


class _Packed(ctypes.LittleEndianStructure):
    _pack_ = 1


class HvmStartInfo(_Packed):
    _fields_ = [
        ("magic", u32),
        ("version", u32),
        ("flags", u32),
        ("nr_modules", u32),
        ("modlist_paddr", u64),
        ("cmdline_paddr", u64),
        ("rsdp_paddr", u64),
        ("memmap_paddr", u64),
        ("memmap_entries", u32),
        ("reserved", u32),
    ]


class HvmModlistEntry(_Packed):
    _fields_ = [("paddr", u64), ("size", u64), ("cmdline_paddr", u64), ("reserved", u64)]


class HvmMemmapTableEntry(_Packed):
    _fields_ = [("addr", u64), ("size", u64), ("type", u32), ("reserved", u32)]


def memmap_table(entries: list[E820Entry]) -> bytes:
    """The e820 map as an ``hvm_memmap_table_entry`` array (types are e820 types)."""
    return b"".join(bytes(HvmMemmapTableEntry(e.addr, e.size, int(e.type), 0)) for e in entries)


assert ctypes.sizeof(HvmStartInfo) == 56
assert ctypes.sizeof(HvmModlistEntry) == 32
assert ctypes.sizeof(HvmMemmapTableEntry) == 24
