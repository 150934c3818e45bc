"""Loading a ``bzImage`` for the 64-bit Linux boot protocol (``Documentation/arch/x86/boot.rst``).

Only the protected-mode part is loaded; the real-mode setup code is skipped, and the
setup header is handed back so the zero page can start from the kernel's own copy.
"""

from __future__ import annotations

import ctypes
import logging
from dataclasses import dataclass

from pyvmm.arch.x86_64 import layout
from pyvmm.arch.x86_64.bootparams import (
    BOOT_FLAG_MAGIC, HDRS_MAGIC, SETUP_HEADER_OFFSET, XLF_KERNEL_64, SetupHeader,
)
from pyvmm.errors import VmmError
from pyvmm.memory import GuestMemory

log = logging.getLogger(__name__)

MIN_PROTOCOL_VERSION = 0x020C    # 2.12: first with xloadflags, which announces the 64-bit entry
ENTRY_64_OFFSET = 0x200          # startup_64 is 512 bytes into the protected-mode code
SECTOR_SIZE = 512
DEFAULT_SETUP_SECTS = 4          # setup_sects == 0 means 4 (ancient kernels)


@dataclass(frozen=True)
class BzImage:
    load_addr: int
    entry: int
    end: int                     # load_addr + the memory the kernel claims (init_size or its size)
    header: SetupHeader          # the kernel's setup header, to copy into the zero page


def parse_setup_header(data: bytes) -> SetupHeader:
    """Validate and return the setup header of a bzImage."""
    hdr_end = SETUP_HEADER_OFFSET + ctypes.sizeof(SetupHeader)
    if len(data) < hdr_end:
        raise VmmError("kernel image is too small to be a bzImage")
    raw = bytearray(data[SETUP_HEADER_OFFSET:hdr_end])
    # The header is only as long as the kernel says (0x202 + the jump's offset byte);
    # fields past that belong to code and must not be read as header.
    declared_end = 0x202 + data[0x201]
    if declared_end < hdr_end:
        raw[max(declared_end - SETUP_HEADER_OFFSET, 0):] = bytes(hdr_end - max(declared_end, SETUP_HEADER_OFFSET))
    header = SetupHeader.from_buffer_copy(raw)
    if header.boot_flag != BOOT_FLAG_MAGIC or header.header != HDRS_MAGIC:
        raise VmmError("kernel is neither an ELF vmlinux nor a bzImage (no HdrS setup header)")
    if header.version < MIN_PROTOCOL_VERSION:
        raise VmmError(
            f"bzImage boot protocol {header.version >> 8}.{header.version & 0xff:02} is too old"
            f" (need 2.12 for the 64-bit entry point)")
    if not header.xloadflags & XLF_KERNEL_64:
        raise VmmError("bzImage has no 64-bit entry point (XLF_KERNEL_64 not set in xloadflags)")
    return header


def load_bzimage(memory: GuestMemory, data: bytes) -> BzImage:
    header = parse_setup_header(data)
    setup_sects = header.setup_sects or DEFAULT_SETUP_SECTS
    pm_offset = (setup_sects + 1) * SECTOR_SIZE
    if pm_offset >= len(data):
        raise VmmError(f"bzImage is truncated (setup_sects={setup_sects}, file size {len(data)})")
    payload = data[pm_offset:]
    load_addr = header.pref_address if header.pref_address >= layout.HIMEM_START else layout.HIMEM_START
    claimed = max(len(payload), header.init_size)
    if not memory.contains(load_addr, claimed):
        raise VmmError(
            f"bzImage needs {load_addr:#x}..{load_addr + claimed:#x} in guest RAM (give the guest more memory)")
    memory.write(load_addr, payload)
    log.debug("bzImage protocol %#x loaded at %#x (%d bytes, init_size %#x)",
              header.version, load_addr, len(payload), header.init_size)
    return BzImage(load_addr=load_addr, entry=load_addr + ENTRY_64_OFFSET, end=load_addr + claimed, header=header)
