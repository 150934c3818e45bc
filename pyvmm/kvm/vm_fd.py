"""``VmFd``: one KVM virtual machine (memory slots, in-kernel irqchip/PIT, irqfd, ioeventfd, vCPUs).

Typical x86 order (the kernel requires the irqchip before the vCPUs)::

    vm = kvm.create_vm()
    vm.set_tss_addr(0xFFFB_D000); vm.set_identity_map_addr(0xFFFB_C000)
    vm.create_irqchip(); vm.create_pit2()
    vm.set_user_memory_region(0, region.guest_addr, region.size, region.host_addr)
    vcpu = vm.create_vcpu(0)
"""

from __future__ import annotations

import ctypes
import os

from pyvmm.kvm import ioctls as io
from pyvmm.kvm import structs as s
from pyvmm.kvm.constants import (
    KVM_IOEVENTFD_FLAG_DATAMATCH,
    KVM_IOEVENTFD_FLAG_DEASSIGN,
    KVM_IOEVENTFD_FLAG_PIO,
    KVM_IRQFD_FLAG_DEASSIGN,
    KVM_IRQFD_FLAG_RESAMPLE,
    KVM_PIT_SPEAKER_DUMMY,
)
from pyvmm.kvm.ioctls import ioctl
from pyvmm.kvm.vcpu_fd import VcpuFd


class VmFd:
    """A KVM VM file descriptor. Created by ``Kvm.create_vm()``."""

    def __init__(self, fd: int, kvm):
        self.fd = fd
        self.kvm = kvm
        self._irq_level = s.kvm_irq_level()

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> VmFd:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def check_extension(self, cap: int) -> int:
        """Per-VM capability check (some answers, e.g. MAX_VCPUS, depend on the VM)."""
        return ioctl(self.fd, io.KVM_CHECK_EXTENSION, int(cap))

    def enable_cap(self, cap: int, *args: int, flags: int = 0) -> None:
        req = s.kvm_enable_cap(cap=int(cap), flags=flags)
        for i, arg in enumerate(args):
            req.args[i] = arg
        ioctl(self.fd, io.KVM_ENABLE_CAP, req)

    # -- memory -----------------------------------------------------------------------

    def set_user_memory_region(self, slot: int, guest_phys_addr: int, memory_size: int,
                               userspace_addr: int, flags: int = 0) -> None:
        """Map host memory at ``userspace_addr`` into the guest; ``memory_size=0`` deletes the slot."""
        region = s.kvm_userspace_memory_region(slot=slot, flags=flags, guest_phys_addr=guest_phys_addr,
                                               memory_size=memory_size, userspace_addr=userspace_addr)
        ioctl(self.fd, io.KVM_SET_USER_MEMORY_REGION, region,
              detail=f"slot {slot} guest {guest_phys_addr:#x} size {memory_size:#x}")

    def set_tss_addr(self, addr: int) -> None:
        """Three pages of guest-physical space KVM may use for real-mode emulation (Intel); below 4 GiB."""
        ioctl(self.fd, io.KVM_SET_TSS_ADDR, addr)

    def set_identity_map_addr(self, addr: int) -> None:
        ioctl(self.fd, io.KVM_SET_IDENTITY_MAP_ADDR, ctypes.c_uint64(addr))

    # -- interrupt controllers ------------------------------------------------------------

    def create_irqchip(self) -> None:
        """In-kernel PIC pair, IOAPIC and per-vCPU local APICs; GSIs 0-15 route to PIC and IOAPIC, 16-23 to IOAPIC."""
        ioctl(self.fd, io.KVM_CREATE_IRQCHIP)

    def create_pit2(self, speaker_dummy: bool = True) -> None:
        """In-kernel i8254 PIT on ports 0x40-0x43 (and a dummy PC speaker port 0x61 unless disabled)."""
        ioctl(self.fd, io.KVM_CREATE_PIT2, s.kvm_pit_config(flags=KVM_PIT_SPEAKER_DUMMY if speaker_dummy else 0))

    def irq_line(self, gsi: int, level: bool) -> None:
        """Drive a GSI of the in-kernel irqchip high or low (edge interrupts: high then low)."""
        req = self._irq_level
        req.irq = gsi
        req.level = 1 if level else 0
        ioctl(self.fd, io.KVM_IRQ_LINE, req)

    def irqfd(self, fd: int, gsi: int, resample_fd: int | None = None) -> None:
        """Writing to eventfd ``fd`` raises ``gsi``; with ``resample_fd`` it is level-triggered (re-armed on EOI)."""
        req = s.kvm_irqfd(fd=fd, gsi=gsi)
        if resample_fd is not None:
            req.flags = KVM_IRQFD_FLAG_RESAMPLE
            req.resamplefd = resample_fd
        ioctl(self.fd, io.KVM_IRQFD, req, detail=f"fd {fd} gsi {gsi}")

    def irqfd_deassign(self, fd: int, gsi: int) -> None:
        ioctl(self.fd, io.KVM_IRQFD, s.kvm_irqfd(fd=fd, gsi=gsi, flags=KVM_IRQFD_FLAG_DEASSIGN),
              detail=f"deassign fd {fd} gsi {gsi}")

    # -- ioeventfd --------------------------------------------------------------------

    def ioeventfd(self, fd: int, addr: int, length: int = 0, datamatch: int | None = None,
                  pio: bool = False, deassign: bool = False) -> None:
        """Make a guest write to ``addr`` signal eventfd ``fd`` inside the kernel (no exit to user space).

        ``length`` is 1, 2, 4 or 8 (only writes of that width match) or 0 (any width, MMIO only;
        datamatch needs a non-zero length). With ``datamatch`` only writes of that value match.
        Pass the same arguments with ``deassign=True`` to remove it.
        """
        if length not in (0, 1, 2, 4, 8):
            raise ValueError(f"ioeventfd length must be 0, 1, 2, 4 or 8, not {length}")
        if datamatch is not None and length == 0:
            raise ValueError("an ioeventfd with datamatch needs a length of 1, 2, 4 or 8")
        if pio and length == 0:
            raise ValueError("a PIO ioeventfd needs a length of 1, 2 or 4")
        flags = 0
        if datamatch is not None:
            flags |= KVM_IOEVENTFD_FLAG_DATAMATCH
        if pio:
            flags |= KVM_IOEVENTFD_FLAG_PIO
        if deassign:
            flags |= KVM_IOEVENTFD_FLAG_DEASSIGN
        req = s.kvm_ioeventfd(datamatch=datamatch or 0, addr=addr, len=length, fd=fd, flags=flags)
        space = "PIO" if pio else "MMIO"
        ioctl(self.fd, io.KVM_IOEVENTFD, req,
              detail=f"{'deassign ' if deassign else ''}{space} {addr:#x} len {length} fd {fd}")

    # -- clock ------------------------------------------------------------------------

    def get_clock(self) -> s.kvm_clock_data:
        data = s.kvm_clock_data()
        ioctl(self.fd, io.KVM_GET_CLOCK, data)
        return data

    def set_clock(self, clock_ns: int, flags: int = 0) -> None:
        ioctl(self.fd, io.KVM_SET_CLOCK, s.kvm_clock_data(clock=clock_ns, flags=flags))

    # -- vCPUs ------------------------------------------------------------------------

    def create_vcpu(self, vcpu_id: int) -> VcpuFd:
        """A vCPU whose (initial x2)APIC id is ``vcpu_id``; id 0 is the boot CPU."""
        fd = ioctl(self.fd, io.KVM_CREATE_VCPU, vcpu_id, detail=f"vcpu {vcpu_id}")
        return VcpuFd(fd, vcpu_id, self.kvm.get_vcpu_mmap_size())
