"""Loading an uncompressed ``vmlinux`` (ELF64) at its physical addresses, and finding its PVH entry."""

from __future__ import annotations

import logging
import struct
from dataclasses import dataclass

from pyvmm.arch.x86_64 import layout
from pyvmm.errors import GuestMemoryError, VmmError
from pyvmm.memory import GuestMemory

log = logging.getLogger(__name__)

ELF_MAGIC = b"\x7fELF"
ELFCLASS64 = 2
ELFDATA2LSB = 1
EM_X86_64 = 62
ET_EXEC = 2
PT_LOAD = 1
PT_NOTE = 4

ELF64_HEADER = struct.Struct("<16sHHIQQQIHHHHHH")   # Elf64_Ehdr
ELF64_PHDR = struct.Struct("<IIQQQQQQ")             # Elf64_Phdr
ELF_NOTE_HEADER = struct.Struct("<III")             # namesz, descsz, type

XEN_ELFNOTE_PHYS32_ENTRY = 18   # 32-bit physical entry point for PVH boot
XEN_NOTE_NAME = b"Xen"


@dataclass(frozen=True)
class ProgramHeader:
    type: int
    flags: int
    offset: int
    vaddr: int
    paddr: int
    filesz: int
    memsz: int
    align: int


@dataclass(frozen=True)
class ElfImage:
    """What loading a vmlinux placed in guest memory."""

    entry: int                  # e_entry: vmlinux links it as the physical address of startup_64
    pvh_entry: int | None       # XEN_ELFNOTE_PHYS32_ENTRY, when the kernel was built with CONFIG_PVH
    start: int                  # lowest byte written
    end: int                    # one past the highest byte (including .bss)


def is_elf(data: bytes) -> bool:
    return data[:4] == ELF_MAGIC


def _round4(n: int) -> int:
    return (n + 3) & ~3


def parse_program_headers(data: bytes) -> tuple[int, list[ProgramHeader]]:
    """Validate the ELF header; return ``(e_entry, program headers)``."""
    if len(data) < ELF64_HEADER.size or not is_elf(data):
        raise VmmError("kernel is not an ELF file")
    ident, e_type, machine, _version, entry, phoff, _shoff, _flags, _ehsize, phentsize, phnum, *_ = \
        ELF64_HEADER.unpack_from(data)
    if ident[4] != ELFCLASS64:
        raise VmmError(f"kernel ELF is not 64-bit (EI_CLASS={ident[4]})")
    if ident[5] != ELFDATA2LSB:
        raise VmmError("kernel ELF is not little-endian")
    if machine != EM_X86_64:
        raise VmmError(f"kernel ELF is for machine {machine}, not x86-64 ({EM_X86_64})")
    if e_type != ET_EXEC:
        raise VmmError(f"kernel ELF is not an executable (e_type={e_type})")
    if phentsize != ELF64_PHDR.size or phnum == 0:
        raise VmmError(f"kernel ELF has bad program headers (phentsize={phentsize}, phnum={phnum})")
    if phoff + phnum * phentsize > len(data):
        raise VmmError("kernel ELF is truncated (program headers past the end of the file)")
    headers = [ProgramHeader(*ELF64_PHDR.unpack_from(data, phoff + i * phentsize)) for i in range(phnum)]
    return entry, headers


def find_pvh_entry(data: bytes, headers: list[ProgramHeader]) -> int | None:
    """The address in the ``Xen`` note of type PHYS32_ENTRY, if any PT_NOTE segment has one."""
    for ph in headers:
        if ph.type != PT_NOTE:
            continue
        pos, end = ph.offset, ph.offset + ph.filesz
        if end > len(data):
            raise VmmError("kernel ELF is truncated (note segment past the end of the file)")
        while pos + ELF_NOTE_HEADER.size <= end:
            namesz, descsz, note_type = ELF_NOTE_HEADER.unpack_from(data, pos)
            name_at = pos + ELF_NOTE_HEADER.size
            desc_at = name_at + _round4(namesz)
            pos = desc_at + _round4(descsz)
            if pos > end:
                break
            name = data[name_at:name_at + namesz].rstrip(b"\0")
            if name == XEN_NOTE_NAME and note_type == XEN_ELFNOTE_PHYS32_ENTRY and descsz in (4, 8):
                return int.from_bytes(data[desc_at:desc_at + descsz], "little")
    return None


def load_elf(memory: GuestMemory, data: bytes) -> ElfImage:
    """Copy every PT_LOAD segment to its physical address (zero-filling .bss)."""
    entry, headers = parse_program_headers(data)
    loads = [ph for ph in headers if ph.type == PT_LOAD and ph.memsz > 0]
    if not loads:
        raise VmmError("kernel ELF has no loadable segments")
    for ph in loads:
        if ph.filesz > ph.memsz or ph.offset + ph.filesz > len(data):
            raise VmmError(f"kernel ELF segment at {ph.paddr:#x} is truncated or malformed")
        if ph.paddr < layout.HIMEM_START:
            raise VmmError(f"kernel ELF segment at {ph.paddr:#x} is below 1 MiB (the boot structures live there)")
        if not memory.contains(ph.paddr, ph.memsz):
            raise VmmError(
                f"kernel ELF segment {ph.paddr:#x}..{ph.paddr + ph.memsz:#x} does not fit in guest RAM"
                " (give the guest more memory)")
    for ph in loads:
        try:
            memory.write(ph.paddr, data[ph.offset:ph.offset + ph.filesz])
            memory.fill(ph.paddr + ph.filesz, ph.memsz - ph.filesz)
        except GuestMemoryError as exc:  # contains() passed, so this is a bug; keep the message clear
            raise VmmError(f"cannot load kernel segment at {ph.paddr:#x}: {exc}") from exc
        log.debug("ELF segment %#x..%#x (file %#x bytes)", ph.paddr, ph.paddr + ph.memsz, ph.filesz)
    pvh_entry = find_pvh_entry(data, headers)
    start = min(ph.paddr for ph in loads)
    end = max(ph.paddr + ph.memsz for ph in loads)
    if not start <= entry < end and pvh_entry is None:
        raise VmmError(f"kernel ELF entry {entry:#x} is outside its loaded segments")
    return ElfImage(entry=entry, pvh_entry=pvh_entry, start=start, end=end)
