"""``struct boot_params`` (the "zero page") of the Linux x86 boot protocol.

Only the fields a boot loader fills are named; everything else is padding that must
stay zero. Offsets follow ``arch/x86/include/uapi/asm/bootparam.h`` and are checked
by the tests.
"""

from __future__ import annotations

import ctypes

from pyvmm.arch.x86_64.e820 import E820Entry

u8, u16, u32, u64 = ctypes.c_uint8, ctypes.c_uint16, ctypes.c_uint32, ctypes.c_uint64

BOOT_FLAG_MAGIC = 0xAA55
HDRS_MAGIC = 0x53726448          # "HdrS"
SETUP_HEADER_OFFSET = 0x1F1      # in both the zero page and a bzImage
E820_MAX_ENTRIES_ZEROPAGE = 128
TYPE_OF_LOADER_UNDEFINED = 0xFF  # a loader without an assigned ID

# loadflags
LOADED_HIGH = 0x01
KASLR_FLAG = 0x02
QUIET_FLAG = 0x20
KEEP_SEGMENTS = 0x40
CAN_USE_HEAP = 0x80

# xloadflags (protocol 2.12+)
XLF_KERNEL_64 = 0x01
XLF_CAN_BE_LOADED_ABOVE_4G = 0x02


class _Packed(ctypes.LittleEndianStructure):
    _pack_ = 1


class SetupHeader(_Packed):
    _fields_ = [
        ("setup_sects", u8),
        ("root_flags", u16),
        ("syssize", u32),
        ("ram_size", u16),
        ("vid_mode", u16),
        ("root_dev", u16),
        ("boot_flag", u16),
        ("jump", u16),
        ("header", u32),
        ("version", u16),
        ("realmode_swtch", u32),
        ("start_sys_seg", u16),
        ("kernel_version", u16),
        ("type_of_loader", u8),
        ("loadflags", u8),
        ("setup_move_size", u16),
        ("code32_start", u32),
        ("ramdisk_image", u32),
        ("ramdisk_size", u32),
        ("bootsect_kludge", u32),
        ("heap_end_ptr", u16),
        ("ext_loader_ver", u8),
        ("ext_loader_type", u8),
        ("cmd_line_ptr", u32),
        ("initrd_addr_max", u32),
        ("kernel_alignment", u32),
        ("relocatable_kernel", u8),
        ("min_alignment", u8),
        ("xloadflags", u16),
        ("cmdline_size", u32),
        ("hardware_subarch", u32),
        ("hardware_subarch_data", u64),
        ("payload_offset", u32),
        ("payload_length", u32),
        ("setup_data", u64),
        ("pref_address", u64),
        ("init_size", u32),
        ("handover_offset", u32),
        ("kernel_info_offset", u32),
    ]


class BootE820Entry(_Packed):
    _fields_ = [("addr", u64), ("size", u64), ("type", u32)]


class BootParams(_Packed):
    _fields_ = [
        ("_screen_info_etc", u8 * 0x58),
        ("tboot_addr", u64),                                  # 0x058
        ("_ist_info", u8 * 0x10),
        ("acpi_rsdp_addr", u64),                              # 0x070
        ("_pad_078", u8 * 0x48),
        ("ext_ramdisk_image", u32),                           # 0x0c0
        ("ext_ramdisk_size", u32),                            # 0x0c4
        ("ext_cmd_line_ptr", u32),                            # 0x0c8
        ("_pad_0cc", u8 * 0x114),
        ("alt_mem_k", u32),                                   # 0x1e0
        ("scratch", u32),                                     # 0x1e4
        ("e820_entries", u8),                                 # 0x1e8
        ("eddbuf_entries", u8),
        ("edd_mbr_sig_buf_entries", u8),
        ("kbd_status", u8),
        ("secure_boot", u8),
        ("_pad5", u8 * 2),
        ("sentinel", u8),                                     # 0x1ef
        ("_pad6", u8),
        ("hdr", SetupHeader),                                 # 0x1f1
        ("_pad7", u8 * (0x290 - 0x1F1 - 0x7B)),
        ("edd_mbr_sig_buffer", u32 * 16),                     # 0x290
        ("e820_table", BootE820Entry * E820_MAX_ENTRIES_ZEROPAGE),  # 0x2d0
        ("_pad_tail", u8 * (0x1000 - 0xCD0)),
    ]

    def set_e820(self, entries: list[E820Entry]) -> None:
        if len(entries) > E820_MAX_ENTRIES_ZEROPAGE:
            raise ValueError(f"{len(entries)} e820 entries do not fit in the zero page")
        for slot, entry in zip(self.e820_table, entries):
            slot.addr, slot.size, slot.type = entry.addr, entry.size, int(entry.type)
        self.e820_entries = len(entries)

    def set_ramdisk(self, addr: int, size: int) -> None:
        self.hdr.ramdisk_image, self.ext_ramdisk_image = addr & 0xFFFF_FFFF, addr >> 32
        self.hdr.ramdisk_size, self.ext_ramdisk_size = size & 0xFFFF_FFFF, size >> 32

    def set_cmdline(self, addr: int, size: int) -> None:
        self.hdr.cmd_line_ptr, self.ext_cmd_line_ptr = addr & 0xFFFF_FFFF, addr >> 32
        self.hdr.cmdline_size = size


assert ctypes.sizeof(SetupHeader) == 0x7B
assert ctypes.sizeof(BootParams) == 0x1000
