"""KVM ioctl request numbers, encoded once, plus the checked ``ioctl`` call every binding uses.

Numbers follow the Linux asm-generic ``_IOC`` encoding (``include/uapi/asm-generic/ioctl.h``)
with the names and argument structs of ``include/uapi/linux/kvm.h``. Struct sizes come from
:mod:`pyvmm.kvm.structs`, so a wrong struct layout shows up as a wrong ioctl number
(``ENOTTY``) instead of silent memory corruption.

The call goes through ``ctypes.CDLL(None, use_errno=True).ioctl``: unlike ``fcntl.ioctl`` it
is ~1 us cheaper per call, and like it, it releases the GIL (vital for ``KVM_RUN``).
"""

from __future__ import annotations

import ctypes
import errno as _errno
import os

from pyvmm.errors import VmmError
from pyvmm.kvm import structs as s

_IOC_NONE, _IOC_WRITE, _IOC_READ = 0, 1, 2
KVMIO = 0xAE


def _ioc(direction: int, nr: int, size: int) -> int:
    return (direction << 30) | (size << 16) | (KVMIO << 8) | nr


def _io(nr: int) -> int:
    return _ioc(_IOC_NONE, nr, 0)


def _ior(nr: int, size: int) -> int:
    return _ioc(_IOC_READ, nr, size)


def _iow(nr: int, size: int) -> int:
    return _ioc(_IOC_WRITE, nr, size)


def _iowr(nr: int, size: int) -> int:
    return _ioc(_IOC_READ | _IOC_WRITE, nr, size)


_sz = ctypes.sizeof
_U64 = 8

# /dev/kvm (system) ioctls
KVM_GET_API_VERSION = _io(0x00)
KVM_CREATE_VM = _io(0x01)
KVM_GET_MSR_INDEX_LIST = _iowr(0x02, _sz(s.kvm_msr_list))
KVM_CHECK_EXTENSION = _io(0x03)
KVM_GET_VCPU_MMAP_SIZE = _io(0x04)
KVM_GET_SUPPORTED_CPUID = _iowr(0x05, _sz(s.kvm_cpuid2))
KVM_GET_EMULATED_CPUID = _iowr(0x09, _sz(s.kvm_cpuid2))
KVM_GET_MSR_FEATURE_INDEX_LIST = _iowr(0x0A, _sz(s.kvm_msr_list))

# VM ioctls
KVM_CREATE_VCPU = _io(0x41)
KVM_SET_USER_MEMORY_REGION = _iow(0x46, _sz(s.kvm_userspace_memory_region))
KVM_SET_TSS_ADDR = _io(0x47)
KVM_SET_IDENTITY_MAP_ADDR = _iow(0x48, _U64)
KVM_CREATE_IRQCHIP = _io(0x60)
KVM_IRQ_LINE = _iow(0x61, _sz(s.kvm_irq_level))
KVM_IRQ_LINE_STATUS = _iowr(0x67, _sz(s.kvm_irq_level))
KVM_IRQFD = _iow(0x76, _sz(s.kvm_irqfd))
KVM_CREATE_PIT2 = _iow(0x77, _sz(s.kvm_pit_config))
KVM_SET_BOOT_CPU_ID = _io(0x78)
KVM_IOEVENTFD = _iow(0x79, _sz(s.kvm_ioeventfd))
KVM_SET_CLOCK = _iow(0x7B, _sz(s.kvm_clock_data))
KVM_GET_CLOCK = _ior(0x7C, _sz(s.kvm_clock_data))
KVM_ENABLE_CAP = _iow(0xA3, _sz(s.kvm_enable_cap))  # also a vCPU ioctl

# vCPU ioctls
KVM_RUN = _io(0x80)
KVM_GET_REGS = _ior(0x81, _sz(s.kvm_regs))
KVM_SET_REGS = _iow(0x82, _sz(s.kvm_regs))
KVM_GET_SREGS = _ior(0x83, _sz(s.kvm_sregs))
KVM_SET_SREGS = _iow(0x84, _sz(s.kvm_sregs))
KVM_TRANSLATE = _iowr(0x85, _sz(s.kvm_translation))
KVM_INTERRUPT = _iow(0x86, _sz(s.kvm_interrupt))
KVM_GET_MSRS = _iowr(0x88, _sz(s.kvm_msrs))
KVM_SET_MSRS = _iow(0x89, _sz(s.kvm_msrs))
KVM_GET_FPU = _ior(0x8C, _sz(s.kvm_fpu))
KVM_SET_FPU = _iow(0x8D, _sz(s.kvm_fpu))
KVM_GET_LAPIC = _ior(0x8E, _sz(s.kvm_lapic_state))
KVM_SET_LAPIC = _iow(0x8F, _sz(s.kvm_lapic_state))
KVM_SET_CPUID2 = _iow(0x90, _sz(s.kvm_cpuid2))
KVM_GET_CPUID2 = _iowr(0x91, _sz(s.kvm_cpuid2))
KVM_GET_MP_STATE = _ior(0x98, _sz(s.kvm_mp_state))
KVM_SET_MP_STATE = _iow(0x99, _sz(s.kvm_mp_state))
KVM_NMI = _io(0x9A)
KVM_SET_GUEST_DEBUG = _iow(0x9B, _sz(s.kvm_guest_debug))
KVM_GET_VCPU_EVENTS = _ior(0x9F, _sz(s.kvm_vcpu_events))
KVM_SET_VCPU_EVENTS = _iow(0xA0, _sz(s.kvm_vcpu_events))
KVM_GET_XSAVE = _ior(0xA4, _sz(s.kvm_xsave))
KVM_SET_XSAVE = _iow(0xA5, _sz(s.kvm_xsave))

NAMES: dict[int, str] = {
    value: name for name, value in list(globals().items()) if name.startswith("KVM_") and isinstance(value, int)
}


class KvmError(VmmError, OSError):
    """A KVM ioctl failed; the message names the ioctl and the errno."""

    def __init__(self, request: int | str, err: int, detail: str = ""):
        name = request if isinstance(request, str) else NAMES.get(request, f"ioctl {request:#x}")
        code = _errno.errorcode.get(err, str(err))
        message = f"{name} failed: {code} ({os.strerror(err)})"
        if detail:
            message += f": {detail}"
        OSError.__init__(self, err, message)
        self.request = name
        self.message = message

    def __str__(self) -> str:
        return self.message


_libc = ctypes.CDLL(None, use_errno=True)
raw_ioctl = _libc.ioctl
"""``ioctl(fd, request, arg)`` returning -1 and setting ctypes' errno on failure (for hot paths)."""
raw_ioctl.restype = ctypes.c_int


def ioctl(fd: int, request: int, arg=0, detail: str = "") -> int:
    """Issue a KVM ioctl; ``arg`` is an int or a ctypes object (passed by reference)."""
    if not isinstance(arg, int):
        arg = ctypes.byref(arg)
    else:
        arg = ctypes.c_ulong(arg)
    ret = raw_ioctl(fd, ctypes.c_ulong(request), arg)
    if ret < 0:
        raise KvmError(request, ctypes.get_errno(), detail)
    return ret
