import struct

import pytest

from pyvmm.arch.x86_64 import layout
from pyvmm.arch.x86_64.boot import load_kernel, setup_boot
from pyvmm.arch.x86_64.bootparams import BootParams
from pyvmm.arch.x86_64.cpu_state import CR0_PE, CR0_PG, CR4_PAE, EFER_LMA, EFER_LME
from pyvmm.arch.x86_64.e820 import e820_map
from pyvmm.arch.x86_64.elf import XEN_ELFNOTE_PHYS32_ENTRY
from pyvmm.arch.x86_64.pvh import HVM_START_MAGIC, HvmMemmapTableEntry, HvmModlistEntry, HvmStartInfo
from pyvmm.errors import VmmError

from arch_images import KERNEL_PADDR, build_bzimage, build_elf, elf_note

PVH_ENTRY = KERNEL_PADDR + 0x40
CMDLINE = "console=ttyS0 quiet"


@pytest.fixture
def vmlinux(tmp_path):
    notes = elf_note(b"Xen\0", XEN_ELFNOTE_PHYS32_ENTRY, struct.pack("<I", PVH_ENTRY))
    path = tmp_path / "vmlinux"
    path.write_bytes(build_elf([(KERNEL_PADDR, b"\xf4" * 4096, 0x40_0000)], notes=notes))
    return path


@pytest.fixture
def bzimage(tmp_path):
    path = tmp_path / "bzImage"
    path.write_bytes(build_bzimage(b"\x90" * 0x1000, initrd_addr_max=0x37FF_FFFF))
    return path


def read_cstring(memory, addr):
    data = memory.read(addr, layout.COMMAND_LINE_SIZE)
    return data[:data.index(b"\0")].decode()


def test_pvh_boot_writes_start_info(memory, vmlinux):
    kernel = load_kernel(memory, vmlinux)
    initrd = b"07070100" + bytes(5000)
    state = setup_boot(memory, kernel, CMDLINE, initrd, ncpus=2)

    info = memory.read_struct(layout.PVH_START_INFO, HvmStartInfo)
    assert info.magic == HVM_START_MAGIC and info.version == 1
    assert read_cstring(memory, info.cmdline_paddr) == CMDLINE
    assert info.nr_modules == 1
    module = memory.read_struct(info.modlist_paddr, HvmModlistEntry)
    assert module.size == len(initrd)
    assert memory.read(module.paddr, len(initrd)) == initrd
    assert module.paddr % 4096 == 0 and module.paddr >= kernel.end
    assert module.paddr + module.size <= memory.size      # high in RAM...
    assert memory.size - (module.paddr + module.size) < 4096   # ...as high as it goes

    expected = e820_map(layout.ram_layout(memory.size))
    assert info.memmap_entries == len(expected)
    for i, entry in enumerate(expected):
        got = memory.read_struct(info.memmap_paddr + 24 * i, HvmMemmapTableEntry)
        assert (got.addr, got.size, got.type) == (entry.addr, entry.size, entry.type)
    assert info.rsdp_paddr == 0

    assert state.rip == PVH_ENTRY and state.rbx == layout.PVH_START_INFO
    assert state.cr0 & CR0_PE and not state.cr0 & CR0_PG and state.efer == 0
    assert state.cs.db == 1 and state.cs.l == 0 and state.cs.type == 0xB and state.cs.limit == 0xFFFF_FFFF
    assert state.ss.db == 1 and state.ds.type == 3 and state.tr.type == 0xB and state.tr.s == 0
    assert state.rflags == 2


def test_pvh_without_initrd_has_no_modules(memory, vmlinux):
    setup_boot(memory, load_kernel(memory, vmlinux), CMDLINE, None, ncpus=1)
    info = memory.read_struct(layout.PVH_START_INFO, HvmStartInfo)
    assert info.nr_modules == 0 and info.modlist_paddr == 0


def test_linux64_boot_of_a_vmlinux(memory, vmlinux):
    kernel = load_kernel(memory, vmlinux)
    state = setup_boot(memory, kernel, CMDLINE, b"initrd", ncpus=1, protocol="linux64")
    params = memory.read_struct(layout.ZERO_PAGE_START, BootParams)
    assert params.hdr.boot_flag == 0xAA55 and params.hdr.header == 0x53726448
    assert params.hdr.type_of_loader == 0xFF
    assert read_cstring(memory, params.hdr.cmd_line_ptr) == CMDLINE
    assert memory.read(params.hdr.ramdisk_image, 6) == b"initrd" and params.hdr.ramdisk_size == 6
    assert params.e820_entries == 3
    assert params.e820_table[2].addr == 0x100000 and params.e820_table[2].type == 1
    assert state.rip == KERNEL_PADDR and state.rsi == layout.ZERO_PAGE_START
    assert state.cr0 & CR0_PG and state.cr4 & CR4_PAE and state.efer == EFER_LME | EFER_LMA
    assert state.cr3 == layout.PML4_START
    assert state.cs.selector == 0x10 and state.cs.l == 1 and state.cs.db == 0
    assert state.ds.selector == 0x18 and state.rsp == layout.BOOT_STACK_POINTER


def test_bzimage_boot_copies_setup_header(memory, bzimage):
    kernel = load_kernel(memory, bzimage)
    assert kernel.format == "bzimage" and kernel.pvh_entry is None
    state = setup_boot(memory, kernel, CMDLINE, bytes(8192), ncpus=1)      # auto -> linux64
    params = memory.read_struct(layout.ZERO_PAGE_START, BootParams)
    assert params.hdr.version == 0x020F and params.hdr.xloadflags == 1
    assert params.hdr.setup_sects == 1 and params.hdr.loadflags & 1
    assert params.hdr.type_of_loader == 0xFF
    assert params.hdr.ramdisk_size == 8192 and params.ext_ramdisk_image == 0
    assert state.rip == KERNEL_PADDR + 0x200


def test_bzimage_initrd_respects_initrd_addr_max(tmp_path):
    from pyvmm.memory import GuestMemory
    memory = GuestMemory.create(layout.ram_layout(64 * layout.MiB))
    try:
        path = tmp_path / "bzImage"
        path.write_bytes(build_bzimage(b"\x90" * 0x1000, initrd_addr_max=0x02FF_FFFF))
        setup_boot(memory, load_kernel(memory, path), CMDLINE, bytes(4096), ncpus=1)
        params = memory.read_struct(layout.ZERO_PAGE_START, BootParams)
        assert params.hdr.ramdisk_image + 4096 <= 0x0300_0000
    finally:
        memory.close()


def test_pvh_requested_without_note(memory, bzimage):
    with pytest.raises(VmmError, match="no PVH entry"):
        setup_boot(memory, load_kernel(memory, bzimage), CMDLINE, None, ncpus=1, protocol="pvh")


def test_cmdline_too_long(memory, vmlinux):
    kernel = load_kernel(memory, vmlinux)
    setup_boot(memory, kernel, "x" * 2047, None, ncpus=1)
    with pytest.raises(VmmError, match="at most 2047"):
        setup_boot(memory, kernel, "x" * 2048, None, ncpus=1)


def test_initrd_too_large(memory, vmlinux):
    kernel = load_kernel(memory, vmlinux)
    with pytest.raises(VmmError, match="initrd of 60.0 MiB does not fit"):
        setup_boot(memory, kernel, CMDLINE, bytes(60 * layout.MiB), ncpus=1)


def test_missing_and_bad_kernels(memory, tmp_path):
    with pytest.raises(VmmError, match="not found"):
        load_kernel(memory, tmp_path / "nope")
    with pytest.raises(VmmError, match="cannot read"):
        load_kernel(memory, tmp_path)
    junk = tmp_path / "junk"
    junk.write_bytes(b"#!/bin/sh\necho hi\n" * 100)
    with pytest.raises(VmmError, match="neither an ELF vmlinux nor a bzImage"):
        load_kernel(memory, junk)
