import struct

import pytest

from pyvmm.arch.x86_64.elf import XEN_ELFNOTE_PHYS32_ENTRY, load_elf, parse_program_headers
from pyvmm.errors import VmmError

from arch_images import KERNEL_PADDR, build_elf, elf_note

TEXT = bytes(range(256)) * 16


def pvh_notes(entry: int) -> bytes:
    return (elf_note(b"GNU\0", 3, b"\x01" * 20)
            + elf_note(b"Xen\0", 1, b"xen-3.0\0")                      # another Xen note type first
            + elf_note(b"Xen\0", XEN_ELFNOTE_PHYS32_ENTRY, struct.pack("<I", entry)))


def test_loads_segments_and_zeroes_bss(memory):
    memory.fill(KERNEL_PADDR, 0x3000, 0xAA)
    image = load_elf(memory, build_elf([(KERNEL_PADDR, TEXT, 0x3000)]))
    assert memory.read(KERNEL_PADDR, len(TEXT)) == TEXT
    assert memory.read(KERNEL_PADDR + len(TEXT), 0x3000 - len(TEXT)) == bytes(0x3000 - len(TEXT))
    assert (image.start, image.end, image.entry) == (KERNEL_PADDR, KERNEL_PADDR + 0x3000, KERNEL_PADDR)
    assert image.pvh_entry is None


def test_two_segments_extent(memory):
    image = load_elf(memory, build_elf([(KERNEL_PADDR, TEXT, len(TEXT)), (KERNEL_PADDR + 0x10000, b"data", 0x2000)]))
    assert memory.read(KERNEL_PADDR + 0x10000, 4) == b"data"
    assert image.end == KERNEL_PADDR + 0x12000


def test_finds_pvh_entry(memory):
    image = load_elf(memory, build_elf([(KERNEL_PADDR, TEXT, len(TEXT))], notes=pvh_notes(0x1234567)))
    assert image.pvh_entry == 0x1234567


def test_ignores_pvh_note_of_other_owner(memory):
    notes = elf_note(b"Linux\0", XEN_ELFNOTE_PHYS32_ENTRY, struct.pack("<I", 0x1000000))
    image = load_elf(memory, build_elf([(KERNEL_PADDR, TEXT, len(TEXT))], notes=notes))
    assert image.pvh_entry is None


@pytest.mark.parametrize("data, message", [
    (b"MZ" + bytes(100), "not an ELF"),
    (build_elf([(KERNEL_PADDR, TEXT, 4096)], elf_class=1), "not 64-bit"),
    (build_elf([(KERNEL_PADDR, TEXT, 4096)], machine=3), "machine 3"),
    (build_elf([(KERNEL_PADDR, TEXT, 4096)], e_type=3), "not an executable"),
    (build_elf([]), "program headers"),
])
def test_rejects_bad_headers(memory, data, message):
    with pytest.raises(VmmError, match=message):
        load_elf(memory, data)


def test_rejects_segment_outside_ram(memory):
    with pytest.raises(VmmError, match="does not fit in guest RAM"):
        load_elf(memory, build_elf([(63 * 2**20, TEXT, 2 * 2**20)]))


def test_rejects_segment_in_low_memory(memory):
    with pytest.raises(VmmError, match="below 1 MiB"):
        load_elf(memory, build_elf([(0x7000, TEXT, len(TEXT))]))


def test_rejects_truncated_file(memory):
    data = build_elf([(KERNEL_PADDR, TEXT, len(TEXT))])
    with pytest.raises(VmmError, match="truncated"):
        load_elf(memory, data[:-100])
    with pytest.raises(VmmError, match="truncated"):
        parse_program_headers(data[:80])


def test_filesz_larger_than_memsz(memory):
    with pytest.raises(VmmError, match="malformed"):
        load_elf(memory, build_elf([(KERNEL_PADDR, TEXT, 16)]))
