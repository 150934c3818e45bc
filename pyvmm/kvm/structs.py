"""ctypes mirrors of the KVM UAPI structs (``linux/kvm.h``, ``asm/kvm.h`` for x86_64).

Field names are the kernel's, so the UAPI header doubles as documentation. Structs ending
in a flexible array (``kvm_cpuid2``, ``kvm_msrs``, ``kvm_msr_list``) are declared with no
entries (their size is what the ioctl number encodes) and sized per call with the
``*_with(n)`` factories. ``tests/kvm/test_structs.py`` checks sizes and offsets against the
C header when a compiler is available.
"""

from __future__ import annotations

import ctypes
from ctypes import c_int32, c_uint8, c_uint16, c_uint32, c_uint64
from functools import lru_cache

u8, u16, u32, u64 = c_uint8, c_uint16, c_uint32, c_uint64


class _Struct(ctypes.Structure):
    def __repr__(self) -> str:
        fields = ", ".join(
            f"{name}={getattr(self, name)!r}" for name, *_ in self._fields_ if not name.startswith("pad")
        )
        return f"{type(self).__name__}({fields})"


# -- memory, interrupts, eventfds ---------------------------------------------------------

class kvm_userspace_memory_region(_Struct):
    _fields_ = [("slot", u32), ("flags", u32), ("guest_phys_addr", u64),
                ("memory_size", u64), ("userspace_addr", u64)]


class kvm_irq_level(_Struct):
    _fields_ = [("irq", u32), ("level", u32)]  # ``irq`` doubles as ``status`` for KVM_IRQ_LINE_STATUS


class kvm_irqfd(_Struct):
    _fields_ = [("fd", u32), ("gsi", u32), ("flags", u32), ("resamplefd", u32), ("pad", u8 * 16)]


class kvm_ioeventfd(_Struct):
    _fields_ = [("datamatch", u64), ("addr", u64), ("len", u32), ("fd", c_int32),
                ("flags", u32), ("pad", u8 * 36)]


class kvm_pit_config(_Struct):
    _fields_ = [("flags", u32), ("pad", u32 * 15)]


class kvm_clock_data(_Struct):
    _fields_ = [("clock", u64), ("flags", u32), ("pad0", u32), ("realtime", u64),
                ("host_tsc", u64), ("pad", u32 * 4)]


class kvm_enable_cap(_Struct):
    _fields_ = [("cap", u32), ("flags", u32), ("args", u64 * 4), ("pad", u8 * 64)]


# -- vCPU state ---------------------------------------------------------------------------

class kvm_regs(_Struct):
    _fields_ = [(name, u64) for name in (
        "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp",
        "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15", "rip", "rflags")]


class kvm_segment(_Struct):
    _fields_ = [("base", u64), ("limit", u32), ("selector", u16), ("type", u8),
                ("present", u8), ("dpl", u8), ("db", u8), ("s", u8), ("l", u8), ("g", u8),
                ("avl", u8), ("unusable", u8), ("padding", u8)]


class kvm_dtable(_Struct):
    _fields_ = [("base", u64), ("limit", u16), ("padding", u16 * 3)]


SEGMENT_NAMES = ("cs", "ds", "es", "fs", "gs", "ss", "tr", "ldt")


class kvm_sregs(_Struct):
    _fields_ = ([(name, kvm_segment) for name in SEGMENT_NAMES]
                + [("gdt", kvm_dtable), ("idt", kvm_dtable)]
                + [(name, u64) for name in ("cr0", "cr2", "cr3", "cr4", "cr8", "efer", "apic_base")]
                + [("interrupt_bitmap", u64 * 4)])


class kvm_fpu(_Struct):
    """KVM_GET/SET_FPU. x86 KVM neither reads nor writes ``mxcsr`` here (kvm_pvm and kvm_amd alike:
    it reads back 0); MXCSR travels in the XSAVE area, see ``VcpuFd.get_mxcsr``."""
    _fields_ = [("fpr", (u8 * 16) * 8), ("fcw", u16), ("fsw", u16), ("ftwx", u8), ("pad1", u8),
                ("last_opcode", u16), ("last_ip", u64), ("last_dp", u64),
                ("xmm", (u8 * 16) * 16), ("mxcsr", u32), ("pad2", u32)]


class kvm_xsave(_Struct):
    """KVM_GET/SET_XSAVE: the vCPU's FPU/SSE/AVX state in the XSAVE (standard) format."""
    _fields_ = [("region", u32 * 1024)]


XSAVE_MXCSR_OFFSET = 24          # in the legacy (FXSAVE) area
XSAVE_XSTATE_BV_OFFSET = 512     # the XSAVE header's bitmap of saved components
XFEATURE_MASK_SSE = 1 << 1


class kvm_msr_entry(_Struct):
    _fields_ = [("index", u32), ("reserved", u32), ("data", u64)]


class kvm_msrs(_Struct):
    _fields_ = [("nmsrs", u32), ("pad", u32)]


class kvm_msr_list(_Struct):
    _fields_ = [("nmsrs", u32)]


class kvm_cpuid_entry2(_Struct):
    _fields_ = [("function", u32), ("index", u32), ("flags", u32), ("eax", u32), ("ebx", u32),
                ("ecx", u32), ("edx", u32), ("padding", u32 * 3)]


class kvm_cpuid2(_Struct):
    _fields_ = [("nent", u32), ("padding", u32)]


KVM_APIC_REG_SIZE = 0x400


class kvm_lapic_state(_Struct):
    _fields_ = [("regs", u8 * KVM_APIC_REG_SIZE)]

    def get_reg(self, offset: int) -> int:
        """A 32-bit local APIC register at ``offset`` (e.g. 0x20 = APIC ID)."""
        return int.from_bytes(bytes(self.regs[offset:offset + 4]), "little")

    def set_reg(self, offset: int, value: int) -> None:
        self.regs[offset:offset + 4] = list(value.to_bytes(4, "little"))


class kvm_mp_state(_Struct):
    _fields_ = [("mp_state", u32)]


class kvm_guest_debug_arch(_Struct):
    _fields_ = [("debugreg", u64 * 8)]


class kvm_guest_debug(_Struct):
    _fields_ = [("control", u32), ("pad", u32), ("arch", kvm_guest_debug_arch)]


class kvm_translation(_Struct):
    _fields_ = [("linear_address", u64), ("physical_address", u64), ("valid", u8),
                ("writeable", u8), ("usermode", u8), ("pad", u8 * 5)]


class kvm_interrupt(_Struct):
    _fields_ = [("irq", u32)]


class _events_exception(_Struct):
    _fields_ = [("injected", u8), ("nr", u8), ("has_error_code", u8), ("pending", u8), ("error_code", u32)]


class _events_interrupt(_Struct):
    _fields_ = [("injected", u8), ("nr", u8), ("soft", u8), ("shadow", u8)]


class _events_nmi(_Struct):
    _fields_ = [("injected", u8), ("pending", u8), ("masked", u8), ("pad", u8)]


class _events_smi(_Struct):
    _fields_ = [("smm", u8), ("pending", u8), ("smm_inside_nmi", u8), ("latched_init", u8)]


class kvm_vcpu_events(_Struct):
    _fields_ = [("exception", _events_exception), ("interrupt", _events_interrupt), ("nmi", _events_nmi),
                ("sipi_vector", u32), ("flags", u32), ("smi", _events_smi), ("triple_fault_pending", u8),
                ("reserved", u8 * 26), ("exception_has_payload", u8), ("exception_payload", u64)]


# -- kvm_run: the page shared with KVM_RUN ------------------------------------------------

class kvm_run_io(_Struct):
    _fields_ = [("direction", u8), ("size", u8), ("port", u16), ("count", u32), ("data_offset", u64)]


class kvm_run_mmio(_Struct):
    _fields_ = [("phys_addr", u64), ("data", u8 * 8), ("len", u32), ("is_write", u8)]


class kvm_run_fail_entry(_Struct):
    _fields_ = [("hardware_entry_failure_reason", u64), ("cpu", u32)]


class kvm_run_hw(_Struct):
    _fields_ = [("hardware_exit_reason", u64)]


class kvm_run_ex(_Struct):
    _fields_ = [("exception", u32), ("error_code", u32)]


class kvm_debug_exit_arch(_Struct):
    _fields_ = [("exception", u32), ("pad", u32), ("pc", u64), ("dr6", u64), ("dr7", u64)]


class kvm_run_internal(_Struct):
    _fields_ = [("suberror", u32), ("ndata", u32), ("data", u64 * 16)]


class kvm_run_emulation_failure(_Struct):
    """Overlay of ``internal`` for KVM_INTERNAL_ERROR_EMULATION (instruction bytes when flagged)."""
    _fields_ = [("suberror", u32), ("ndata", u32), ("flags", u64), ("insn_size", u8), ("insn_bytes", u8 * 15)]


class kvm_run_system_event(_Struct):
    _fields_ = [("type", u32), ("ndata", u32), ("data", u64 * 16)]


class kvm_run_exit(ctypes.Union):
    _fields_ = [("hw", kvm_run_hw), ("fail_entry", kvm_run_fail_entry), ("ex", kvm_run_ex),
                ("io", kvm_run_io), ("debug", kvm_debug_exit_arch), ("mmio", kvm_run_mmio),
                ("internal", kvm_run_internal), ("emulation_failure", kvm_run_emulation_failure),
                ("system_event", kvm_run_system_event), ("padding", u8 * 256)]


class kvm_run(_Struct):
    _anonymous_ = ("exit",)
    _fields_ = [("request_interrupt_window", u8), ("immediate_exit", u8), ("padding1", u8 * 6),
                ("exit_reason", u32), ("ready_for_interrupt_injection", u8), ("if_flag", u8),
                ("flags", u16), ("cr8", u64), ("apic_base", u64), ("exit", kvm_run_exit),
                ("kvm_valid_regs", u64), ("kvm_dirty_regs", u64), ("sync_regs", u8 * 2048)]


KVM_RUN_EXIT_OFFSET = kvm_run.exit.offset
"""Byte offset of the exit union in kvm_run (32 on x86_64): hot paths unpack from here."""


# -- flexible-array structs sized per call ------------------------------------------------

@lru_cache(maxsize=None)
def cpuid2_with(n: int) -> type[ctypes.Structure]:
    return type(f"kvm_cpuid2_{n}", (_Struct,), {
        "_fields_": [("nent", u32), ("padding", u32), ("entries", kvm_cpuid_entry2 * n)]})


@lru_cache(maxsize=None)
def msrs_with(n: int) -> type[ctypes.Structure]:
    return type(f"kvm_msrs_{n}", (_Struct,), {
        "_fields_": [("nmsrs", u32), ("pad", u32), ("entries", kvm_msr_entry * n)]})


@lru_cache(maxsize=None)
def msr_list_with(n: int) -> type[ctypes.Structure]:
    return type(f"kvm_msr_list_{n}", (_Struct,), {"_fields_": [("nmsrs", u32), ("indices", u32 * n)]})


def fill(struct: ctypes.Structure, value) -> ctypes.Structure:
    """Copy same-named fields from a dataclass, namespace or mapping into ``struct``.

    Lets callers (``pyvmm.arch``) hand plain values; fields they omit keep their value.
    """
    get = value.get if isinstance(value, dict) else (lambda name, default: getattr(value, name, default))
    missing = object()
    for name, *_ in struct._fields_:
        field_value = get(name, missing)
        if field_value is missing:
            continue
        current = getattr(struct, name)
        if isinstance(current, ctypes.Structure):
            fill(current, field_value)
        elif isinstance(current, ctypes.Array):
            current[:] = list(field_value)
        else:
            setattr(struct, name, field_value)
    return struct
