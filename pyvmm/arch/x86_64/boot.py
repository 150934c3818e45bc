"""Laying out a Linux x86-64 boot in guest memory: load the kernel, then write everything
the chosen entry protocol expects and return the boot vCPU's initial state.

Two protocols: PVH (the default when the vmlinux carries the Xen PHYS32_ENTRY note:
32-bit protected mode, ``hvm_start_info``) and the 64-bit Linux boot protocol (long mode,
identity page tables, the zero page), which bzImages and any vmlinux can use.
"""

from __future__ import annotations

import ctypes
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pyvmm.arch.x86_64 import layout
from pyvmm.arch.x86_64.acpi import AcpiTables
from pyvmm.arch.x86_64.bootparams import (
    BOOT_FLAG_MAGIC, HDRS_MAGIC, TYPE_OF_LOADER_UNDEFINED, BootParams, SetupHeader,
)
from pyvmm.arch.x86_64.bzimage import load_bzimage
from pyvmm.arch.x86_64.cpu_state import CpuState, long_mode_entry, pvh_entry
from pyvmm.arch.x86_64.e820 import E820Entry, e820_map
from pyvmm.arch.x86_64.elf import is_elf, load_elf
from pyvmm.arch.x86_64.gdt import write_boot_gdt
from pyvmm.arch.x86_64.mptable import write_mptable
from pyvmm.arch.x86_64.paging import write_identity_map
from pyvmm.arch.x86_64.pvh import (
    HVM_START_INFO_VERSION, HVM_START_MAGIC, HvmModlistEntry, HvmStartInfo, memmap_table,
)
from pyvmm.errors import VmmError
from pyvmm.memory import GuestMemory

log = logging.getLogger(__name__)

Protocol = Literal["pvh", "linux64", "auto"]
KERNEL_ALIGNMENT = 0x1000000   # what a vmlinux is linked for (CONFIG_PHYSICAL_ALIGN default)


@dataclass(frozen=True)
class LoadedKernel:
    path: str
    format: Literal["elf", "bzimage"]
    start: int                     # lowest guest address the kernel occupies
    end: int                       # one past the highest (incl. .bss, or the bzImage's init_size)
    entry64: int                   # 64-bit boot protocol entry point
    pvh_entry: int | None          # PVH 32-bit entry, when the vmlinux has one
    setup_header: SetupHeader | None = None   # bzImage only


def load_kernel(memory: GuestMemory, kernel_path: str | Path) -> LoadedKernel:
    """Load a vmlinux (ELF) or a bzImage into guest memory."""
    path = Path(kernel_path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise VmmError(f"kernel image not found: {path}") from None
    except OSError as exc:
        raise VmmError(f"cannot read kernel image {path}: {exc.strerror}") from None
    if is_elf(data):
        image = load_elf(memory, data)
        kernel = LoadedKernel(str(path), "elf", image.start, image.end, image.entry, image.pvh_entry)
    else:
        image = load_bzimage(memory, data)
        kernel = LoadedKernel(str(path), "bzimage", image.load_addr, image.end, image.entry, None, image.header)
    log.info("kernel %s (%s) at %#x..%#x, entry %#x%s", path.name, kernel.format, kernel.start, kernel.end,
             kernel.entry64, f", PVH entry {kernel.pvh_entry:#x}" if kernel.pvh_entry is not None else "")
    return kernel


def choose_protocol(kernel: LoadedKernel, protocol: Protocol) -> Literal["pvh", "linux64"]:
    if protocol == "auto":
        return "pvh" if kernel.pvh_entry is not None else "linux64"
    if protocol == "pvh" and kernel.pvh_entry is None:
        raise VmmError(f"kernel {kernel.path} has no PVH entry note (build it with CONFIG_PVH=y, or boot it"
                       " with the linux64 protocol)")
    if protocol not in ("pvh", "linux64"):
        raise VmmError(f"unknown boot protocol {protocol!r} (pvh, linux64 or auto)")
    return protocol


def write_cmdline(memory: GuestMemory, cmdline: str, max_len: int = layout.COMMAND_LINE_SIZE - 1) -> int:
    """Write the NUL-terminated command line; return its length without the NUL."""
    data = cmdline.encode()
    if b"\0" in data:
        raise VmmError("kernel command line contains a NUL byte")
    if len(data) > max_len:
        raise VmmError(f"kernel command line is {len(data)} bytes; the kernel accepts at most {max_len}")
    memory.write(layout.CMDLINE_START, data + b"\0")
    return len(data)


def place_initrd(memory: GuestMemory, kernel: LoadedKernel, initrd: bytes, limit: int) -> int:
    """Put the initrd page-aligned as high as possible below ``limit`` and above the kernel."""
    lowest = -(-kernel.end // layout.PAGE_SIZE) * layout.PAGE_SIZE
    addr = (limit - len(initrd)) & ~(layout.PAGE_SIZE - 1)
    if addr < lowest:
        raise VmmError(
            f"initrd of {len(initrd) / layout.MiB:.1f} MiB does not fit in guest RAM between the kernel's end"
            f" ({lowest:#x}) and {limit:#x}; give the guest more memory")
    memory.write(addr, initrd)
    log.debug("initrd at %#x..%#x", addr, addr + len(initrd))
    return addr


def setup_boot(memory: GuestMemory, kernel: LoadedKernel, cmdline: str, initrd: bytes | None, ncpus: int,
               protocol: Protocol = "auto", acpi: AcpiTables | None = None) -> CpuState:
    """Write the boot structures for ``kernel`` (already loaded) and return the BSP's state.

    ``acpi``: tables to place (their RSDP address goes in the zero page or start info too).
    """
    chosen = choose_protocol(kernel, protocol)
    ram = [(region.guest_addr, region.size) for region in memory.regions]
    e820 = e820_map(ram)
    limit = layout.low_ram_end(ram)
    if kernel.setup_header is not None:
        limit = min(limit, kernel.setup_header.initrd_addr_max + 1)

    max_cmdline = layout.COMMAND_LINE_SIZE - 1
    if kernel.setup_header is not None and kernel.setup_header.cmdline_size:
        max_cmdline = min(max_cmdline, kernel.setup_header.cmdline_size)
    cmdline_len = write_cmdline(memory, cmdline, max_cmdline)
    initrd_addr = place_initrd(memory, kernel, initrd, limit) if initrd else 0
    initrd_size = len(initrd) if initrd else 0

    gdt_limit, idt_limit = write_boot_gdt(memory)
    write_mptable(memory, ncpus)
    rsdp_addr = 0
    if acpi is not None:
        memory.write(acpi.base, acpi.blob)
        rsdp_addr = acpi.rsdp_addr

    if chosen == "pvh":
        write_pvh_start_info(memory, e820, initrd_addr, initrd_size, rsdp_addr)
        state = pvh_entry(kernel.pvh_entry, layout.PVH_START_INFO, gdt_limit, idt_limit)
    else:
        if not memory.contains(kernel.entry64):
            raise VmmError(f"kernel entry point {kernel.entry64:#x} is outside guest RAM")
        write_zero_page(memory, kernel, e820, cmdline_len, initrd_addr, initrd_size, rsdp_addr)
        cr3 = write_identity_map(memory)
        state = long_mode_entry(kernel.entry64, layout.ZERO_PAGE_START, cr3, gdt_limit, idt_limit)
    log.debug("boot protocol %s, entry %#x, %d vCPU(s)", chosen, state.rip, ncpus)
    return state


def write_pvh_start_info(memory: GuestMemory, e820: list[E820Entry], initrd_addr: int, initrd_size: int,
                         rsdp_addr: int = 0) -> None:
    if len(e820) > layout.PVH_MEMMAP_MAX_ENTRIES:
        raise VmmError(f"{len(e820)} memory map entries exceed the PVH memmap area")
    info = HvmStartInfo(magic=HVM_START_MAGIC, version=HVM_START_INFO_VERSION,
                        cmdline_paddr=layout.CMDLINE_START,
                        memmap_paddr=layout.PVH_MEMMAP_START, memmap_entries=len(e820),
                        rsdp_paddr=rsdp_addr)
    if initrd_size:
        memory.write_struct(layout.PVH_MODLIST_START, HvmModlistEntry(paddr=initrd_addr, size=initrd_size))
        info.nr_modules = 1
        info.modlist_paddr = layout.PVH_MODLIST_START
    memory.write(layout.PVH_MEMMAP_START, memmap_table(e820))
    memory.write_struct(layout.PVH_START_INFO, info)


def write_zero_page(memory: GuestMemory, kernel: LoadedKernel, e820: list[E820Entry], cmdline_len: int,
                    initrd_addr: int, initrd_size: int, rsdp_addr: int = 0) -> None:
    params = BootParams()
    if kernel.setup_header is not None:
        ctypes.memmove(ctypes.addressof(params.hdr), ctypes.addressof(kernel.setup_header),
                       ctypes.sizeof(SetupHeader))
    else:
        params.hdr.boot_flag = BOOT_FLAG_MAGIC
        params.hdr.header = HDRS_MAGIC
        params.hdr.kernel_alignment = KERNEL_ALIGNMENT
    params.hdr.type_of_loader = TYPE_OF_LOADER_UNDEFINED
    params.hdr.code32_start = kernel.start
    params.set_cmdline(layout.CMDLINE_START, cmdline_len)
    params.set_ramdisk(initrd_addr, initrd_size)
    params.set_e820(e820)
    params.acpi_rsdp_addr = rsdp_addr
    memory.write_struct(layout.ZERO_PAGE_START, params)
