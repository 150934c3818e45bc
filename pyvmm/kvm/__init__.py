"""ctypes bindings for the Linux KVM API: the only code in pyvmm that issues KVM ioctls.

Three handles mirror the kernel's three file descriptors (and rust-vmm's kvm-ioctls)::

    from pyvmm.kvm import Kvm
    kvm = Kvm()                                   # /dev/kvm; VmmError if missing/forbidden
    vm = kvm.create_vm()                          # VmFd: memory slots, irqchip, irqfd, ioeventfd
    vm.set_user_memory_region(0, 0, size, host_addr)
    vcpu = vm.create_vcpu(0)                      # VcpuFd: kvm_run page, KVM_RUN, registers
    reason = vcpu.run(); exit = vcpu.exit()       # ExitReason int, then a decoded VcpuExit

Every failing ioctl raises :class:`KvmError` ("KVM_X failed: EINVAL (Invalid argument)").
Modules: ``ioctls`` (request numbers, the checked call), ``structs`` (UAPI structs),
``constants`` (exit reasons, capabilities, flags), ``exits`` (VcpuExit), ``cpuid``
(CpuidEntry), ``system``/``vm_fd``/``vcpu_fd`` (the three handles).
"""

from pyvmm.kvm.constants import Cap, ExitReason, InternalError, MpState, SystemEvent
from pyvmm.kvm.cpuid import CpuidEntry
from pyvmm.kvm.exits import VcpuExit
from pyvmm.kvm.ioctls import KvmError
from pyvmm.kvm.system import Kvm
from pyvmm.kvm.vcpu_fd import VcpuFd
from pyvmm.kvm.vm_fd import VmFd

__all__ = [
    "Cap", "CpuidEntry", "ExitReason", "InternalError", "Kvm", "KvmError", "MpState", "SystemEvent",
    "VcpuExit", "VcpuFd", "VmFd",
]
