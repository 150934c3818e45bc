"""Synthetic kernel images for the boot tests: just enough ELF and bzImage structure."""

from __future__ import annotations

import struct

KERNEL_PADDR = 0x100_0000


def elf_note(name: bytes, note_type: int, desc: bytes) -> bytes:
    def pad(b: bytes) -> bytes:
        return b + b"\0" * (-len(b) % 4)
    return struct.pack("<III", len(name), len(desc), note_type) + pad(name) + pad(desc)


def build_elf(segments: list[tuple[int, bytes, int]], notes: bytes = b"", entry: int = KERNEL_PADDR,
              elf_class: int = 2, machine: int = 62, e_type: int = 2) -> bytes:
    """An ELF64 executable: ``segments`` are ``(paddr, file bytes, memsz)``; ``notes`` one PT_NOTE."""
    phdrs = [(1, paddr, data, memsz) for paddr, data, memsz in segments]
    if notes:
        phdrs.append((4, 0, notes, len(notes)))
    ehsize, phentsize = 64, 56
    offset = ehsize + phentsize * len(phdrs)
    table, blobs = b"", b""
    for p_type, paddr, data, memsz in phdrs:
        table += struct.pack("<IIQQQQQQ", p_type, 5, offset + len(blobs), paddr | 0xFFFF_FFFF_0000_0000 * (p_type == 1),
                             paddr, len(data), memsz, 0x1000)
        blobs += data
    ident = b"\x7fELF" + bytes([elf_class, 1, 1]) + bytes(9)
    header = struct.pack("<16sHHIQQQIHHHHHH", ident, e_type, machine, 1, entry, ehsize, 0, 0, ehsize,
                         phentsize, len(phdrs), 64, 0, 0)
    return header + table + blobs


def build_bzimage(payload: bytes, *, version: int = 0x020F, xloadflags: int = 1, setup_sects: int = 1,
                  pref_address: int = KERNEL_PADDR, init_size: int = 0x20_0000, cmdline_size: int = 2047,
                  initrd_addr_max: int = 0x7FFF_FFFF, magic: bytes = b"HdrS") -> bytes:
    """Setup sectors with a setup header at 0x1f1, then the protected-mode ``payload``."""
    image = bytearray((setup_sects + 1) * 512)
    image[0x1F1] = setup_sects
    struct.pack_into("<H", image, 0x1FE, 0xAA55)
    image[0x200:0x202] = bytes([0xEB, 0x6A])       # jmp over the header: it ends at 0x26c
    image[0x202:0x206] = magic
    struct.pack_into("<H", image, 0x206, version)
    image[0x211] = 0x01                            # LOADED_HIGH
    struct.pack_into("<I", image, 0x22C, initrd_addr_max)
    struct.pack_into("<I", image, 0x230, 0x20_0000)
    image[0x234] = 1
    struct.pack_into("<H", image, 0x236, xloadflags)
    struct.pack_into("<I", image, 0x238, cmdline_size)
    struct.pack_into("<Q", image, 0x258, pref_address)
    struct.pack_into("<I", image, 0x260, init_size)
    return bytes(image) + payload
