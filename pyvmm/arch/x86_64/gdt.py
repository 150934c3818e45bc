"""The boot GDT and segment descriptors decoded into the form ``kvm_segment`` takes.

The selectors follow the Linux boot protocol (``__BOOT_CS`` = 0x10, ``__BOOT_DS`` = 0x18);
0x08 holds the flat 32-bit code segment the PVH entry needs, 0x20 a busy TSS (KVM
refuses to enter a guest whose TR is not one).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from pyvmm.arch.x86_64 import layout
from pyvmm.memory import GuestMemory

# access byte | flags nibble << 12, as the descriptor stores them (bits 40..55)
CODE32_FLAGS = 0xC09B   # present, ring 0, code exec/read accessed; 4 KiB granular, 32-bit
CODE64_FLAGS = 0xA09B   # ... long mode
DATA_FLAGS = 0xC093     # present, ring 0, data read/write accessed; 4 KiB granular, 32-bit
TSS_FLAGS = 0x008B      # present, system, busy 32/64-bit TSS; byte granular

NULL_SELECTOR = 0x00
CODE32_SELECTOR = 0x08
BOOT_CS = 0x10
BOOT_DS = 0x18
TSS_SELECTOR = 0x20
TSS_LIMIT = 0x67        # the architectural minimum TSS size - 1


@dataclass
class Segment:
    """One segment register's hidden state, field for field as ``struct kvm_segment``."""

    base: int = 0
    limit: int = 0xFFFF
    selector: int = 0
    type: int = 0
    present: int = 0
    dpl: int = 0
    db: int = 0
    s: int = 0
    l: int = 0  # noqa: E741 (the architectural name)
    g: int = 0
    avl: int = 0
    unusable: int = 0


def descriptor(flags: int, base: int, limit: int) -> int:
    """Encode an 8-byte segment descriptor; ``limit`` is the 20-bit raw limit."""
    return (
        (limit & 0xFFFF)
        | (base & 0xFFFFFF) << 16
        | (flags & 0xFF) << 40
        | ((limit >> 16) & 0xF) << 48
        | ((flags >> 12) & 0xF) << 52
        | ((base >> 24) & 0xFF) << 56
    )


def segment_from_descriptor(selector: int, desc: int) -> Segment:
    raw_limit = (desc & 0xFFFF) | ((desc >> 32) & 0xF0000)
    g = (desc >> 55) & 1
    present = (desc >> 47) & 1
    return Segment(
        base=((desc >> 16) & 0xFFFFFF) | ((desc >> 32) & 0xFF000000),
        limit=(raw_limit << 12) | 0xFFF if g else raw_limit,
        selector=selector,
        type=(desc >> 40) & 0xF,
        s=(desc >> 44) & 1,
        dpl=(desc >> 45) & 3,
        present=present,
        avl=(desc >> 52) & 1,
        l=(desc >> 53) & 1,
        db=(desc >> 54) & 1,
        g=g,
        unusable=0 if present else 1,
    )


def boot_gdt() -> list[int]:
    """The descriptors in selector order (the 64-bit TSS descriptor takes two slots)."""
    return [
        0,
        descriptor(CODE32_FLAGS, 0, 0xFFFFF),
        descriptor(CODE64_FLAGS, 0, 0xFFFFF),
        descriptor(DATA_FLAGS, 0, 0xFFFFF),
        descriptor(TSS_FLAGS, 0, TSS_LIMIT),
        0,  # upper half of the 16-byte system descriptor: base[63:32] = 0
    ]


def boot_segment(selector: int) -> Segment:
    return segment_from_descriptor(selector, boot_gdt()[selector >> 3])


def write_boot_gdt(memory: GuestMemory) -> tuple[int, int]:
    """Write the GDT and an empty IDT; return ``(gdt limit, idt limit)``."""
    table = boot_gdt()
    data = struct.pack(f"<{len(table)}Q", *table)
    assert len(data) <= layout.BOOT_GDT_MAX_SIZE
    memory.write(layout.BOOT_GDT_START, data)
    memory.write_u64(layout.BOOT_IDT_START, 0)
    return len(data) - 1, 8 - 1
