"""KVM constants with their UAPI names: exit reasons, capabilities, flags, MP states."""

from __future__ import annotations

import enum

KVM_API_VERSION = 12


class ExitReason(enum.IntEnum):
    """``kvm_run.exit_reason`` (KVM_EXIT_*)."""

    UNKNOWN = 0
    EXCEPTION = 1
    IO = 2
    HYPERCALL = 3
    DEBUG = 4
    HLT = 5
    MMIO = 6
    IRQ_WINDOW_OPEN = 7
    SHUTDOWN = 8
    FAIL_ENTRY = 9
    INTR = 10
    SET_TPR = 11
    TPR_ACCESS = 12
    NMI = 16
    INTERNAL_ERROR = 17
    WATCHDOG = 21
    SYSTEM_EVENT = 24
    IOAPIC_EOI = 26
    HYPERV = 27
    X86_RDMSR = 29
    X86_WRMSR = 30
    DIRTY_RING_FULL = 31
    AP_RESET_HOLD = 32
    X86_BUS_LOCK = 33
    XEN = 34
    NOTIFY = 37

    @classmethod
    def name_of(cls, value: int) -> str:
        try:
            return cls(value).name
        except ValueError:
            return f"EXIT_{value}"


KVM_EXIT_IO_IN = 0
KVM_EXIT_IO_OUT = 1


class InternalError(enum.IntEnum):
    """``kvm_run.internal.suberror`` (KVM_INTERNAL_ERROR_*)."""

    EMULATION = 1
    SIMUL_EX = 2
    DELIVERY_EV = 3
    UNEXPECTED_EXIT_REASON = 4


KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES = 1 << 0


class SystemEvent(enum.IntEnum):
    """``kvm_run.system_event.type`` (KVM_SYSTEM_EVENT_*)."""

    SHUTDOWN = 1
    RESET = 2
    CRASH = 3
    WAKEUP = 4
    SUSPEND = 5
    SEV_TERM = 6


class MpState(enum.IntEnum):
    RUNNABLE = 0
    UNINITIALIZED = 1
    INIT_RECEIVED = 2
    HALTED = 3
    SIPI_RECEIVED = 4
    STOPPED = 5
    CHECK_STOP = 6
    OPERATING = 7
    LOAD = 8
    AP_RESET_HOLD = 9
    SUSPENDED = 10


class Cap(enum.IntEnum):
    """KVM_CAP_* numbers for ``Kvm.check_extension`` / ``VmFd.check_extension``."""

    IRQCHIP = 0
    HLT = 1
    USER_MEMORY = 3
    SET_TSS_ADDR = 4
    EXT_CPUID = 7
    NR_VCPUS = 9
    NR_MEMSLOTS = 10
    PIT = 11
    MP_STATE = 14
    SYNC_MMU = 16
    SET_GUEST_DEBUG = 23
    IRQ_ROUTING = 25
    IRQ_INJECT_STATUS = 26
    IRQFD = 32
    PIT2 = 33
    SET_BOOT_CPU_ID = 34
    IOEVENTFD = 36
    SET_IDENTITY_MAP_ADDR = 37
    ADJUST_CLOCK = 39
    INTERNAL_ERROR_DATA = 40
    VCPU_EVENTS = 41
    DEBUGREGS = 50
    ENABLE_CAP = 54
    XSAVE = 55
    XCRS = 56
    MAX_VCPUS = 66
    TSC_DEADLINE_TIMER = 72
    READONLY_MEM = 81
    IOEVENTFD_NO_LENGTH = 100
    SPLIT_IRQCHIP = 121
    IOEVENTFD_ANY_LENGTH = 122
    X2APIC_API = 129
    IMMEDIATE_EXIT = 136
    X86_DISABLE_EXITS = 143
    GET_MSR_FEATURES = 153
    SET_GUEST_DEBUG2 = 195
    EXIT_ON_EMULATION_FAILURE = 204
    SYSTEM_EVENT_DATA = 215


# KVM_SET_USER_MEMORY_REGION flags
KVM_MEM_LOG_DIRTY_PAGES = 1 << 0
KVM_MEM_READONLY = 1 << 1

# KVM_IRQFD flags
KVM_IRQFD_FLAG_DEASSIGN = 1 << 0
KVM_IRQFD_FLAG_RESAMPLE = 1 << 1

# KVM_IOEVENTFD flags
KVM_IOEVENTFD_FLAG_DATAMATCH = 1 << 0
KVM_IOEVENTFD_FLAG_PIO = 1 << 1
KVM_IOEVENTFD_FLAG_DEASSIGN = 1 << 2

# KVM_CREATE_PIT2 flags
KVM_PIT_SPEAKER_DUMMY = 1

# KVM_SET_GUEST_DEBUG control bits
KVM_GUESTDBG_ENABLE = 0x00000001
KVM_GUESTDBG_SINGLESTEP = 0x00000002
KVM_GUESTDBG_USE_SW_BP = 0x00010000
KVM_GUESTDBG_USE_HW_BP = 0x00020000
KVM_GUESTDBG_INJECT_DB = 0x00040000
KVM_GUESTDBG_INJECT_BP = 0x00080000
KVM_GUESTDBG_BLOCKIRQ = 0x00100000

# kvm_cpuid_entry2.flags
KVM_CPUID_FLAG_SIGNIFCANT_INDEX = 1 << 0
