"""Initial vCPU register state as plain data; the VMM turns it into ``kvm_regs``/``kvm_sregs``.

Field names match ``struct kvm_regs`` and ``struct kvm_sregs`` so the conversion is a
loop over :data:`GPR_NAMES`, :data:`SEGMENT_NAMES` and :data:`CONTROL_NAMES`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pyvmm.arch.x86_64 import layout
from pyvmm.arch.x86_64.gdt import (
    BOOT_CS, BOOT_DS, CODE32_SELECTOR, TSS_SELECTOR, Segment, boot_segment,
)

CR0_PE = 1 << 0
CR0_ET = 1 << 4
CR0_NW = 1 << 29
CR0_CD = 1 << 30
CR0_PG = 1 << 31
CR4_PAE = 1 << 5
EFER_LME = 1 << 8
EFER_LMA = 1 << 10
RFLAGS_RESERVED_1 = 1 << 1   # always reads as 1

GPR_NAMES = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp",
             "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15", "rip", "rflags")
SEGMENT_NAMES = ("cs", "ds", "es", "fs", "gs", "ss", "tr", "ldt")
CONTROL_NAMES = ("cr0", "cr2", "cr3", "cr4", "cr8", "efer")


@dataclass
class DescriptorTable:
    base: int = 0
    limit: int = 0xFFFF


def _ldt() -> Segment:
    return Segment(limit=0xFFFF, type=2, present=1)   # an empty LDT, as the CPU resets it


@dataclass
class CpuState:
    rax: int = 0
    rbx: int = 0
    rcx: int = 0
    rdx: int = 0
    rsi: int = 0
    rdi: int = 0
    rsp: int = 0
    rbp: int = 0
    r8: int = 0
    r9: int = 0
    r10: int = 0
    r11: int = 0
    r12: int = 0
    r13: int = 0
    r14: int = 0
    r15: int = 0
    rip: int = 0
    rflags: int = RFLAGS_RESERVED_1
    cs: Segment = field(default_factory=Segment)
    ds: Segment = field(default_factory=Segment)
    es: Segment = field(default_factory=Segment)
    fs: Segment = field(default_factory=Segment)
    gs: Segment = field(default_factory=Segment)
    ss: Segment = field(default_factory=Segment)
    tr: Segment = field(default_factory=Segment)
    ldt: Segment = field(default_factory=_ldt)
    gdt: DescriptorTable = field(default_factory=DescriptorTable)
    idt: DescriptorTable = field(default_factory=DescriptorTable)
    cr0: int = 0
    cr2: int = 0
    cr3: int = 0
    cr4: int = 0
    cr8: int = 0
    efer: int = 0


def _flat_segments(code_selector: int, gdt_limit: int, idt_limit: int) -> dict:
    data = boot_segment(BOOT_DS)
    return dict(
        cs=boot_segment(code_selector),
        ds=data, es=_copy(data), fs=_copy(data), gs=_copy(data), ss=_copy(data),
        tr=boot_segment(TSS_SELECTOR),
        gdt=DescriptorTable(layout.BOOT_GDT_START, gdt_limit),
        idt=DescriptorTable(layout.BOOT_IDT_START, idt_limit),
    )


def _copy(segment: Segment) -> Segment:
    return Segment(**vars(segment))


def long_mode_entry(entry: int, boot_params: int, cr3: int, gdt_limit: int, idt_limit: int) -> CpuState:
    """The 64-bit boot protocol: long mode, identity paging, ``rsi`` = the zero page."""
    return CpuState(
        rip=entry, rsi=boot_params, rsp=layout.BOOT_STACK_POINTER, rbp=layout.BOOT_STACK_POINTER,
        cr0=CR0_PE | CR0_ET | CR0_PG, cr3=cr3, cr4=CR4_PAE, efer=EFER_LME | EFER_LMA,
        **_flat_segments(BOOT_CS, gdt_limit, idt_limit),
    )


def pvh_entry(entry: int, start_info: int, gdt_limit: int, idt_limit: int) -> CpuState:
    """The PVH entry: 32-bit protected mode, paging off, ``ebx`` = ``hvm_start_info``."""
    return CpuState(
        rip=entry, rbx=start_info,
        cr0=CR0_PE | CR0_ET,
        **_flat_segments(CODE32_SELECTOR, gdt_limit, idt_limit),
    )


def reset_state() -> CpuState:
    """The architectural power-on state (real mode at 0xffff:fff0), e.g. to reset an AP by hand.

    With KVM's in-kernel LAPIC, application processors wait for INIT/SIPI on their own, so
    a VMM normally leaves their registers alone.
    """
    def real(selector: int, base: int, type_: int) -> Segment:
        return Segment(base=base, limit=0xFFFF, selector=selector, type=type_, present=1, s=1)

    data = {name: real(0, 0, 3) for name in ("ds", "es", "fs", "gs", "ss")}
    return CpuState(
        rip=0xFFF0, rdx=0x600,
        cs=real(0xF000, 0xFFFF0000, 0xB),
        tr=Segment(limit=0xFFFF, type=0xB, present=1),
        cr0=CR0_ET | CR0_NW | CR0_CD,
        **data,
    )
