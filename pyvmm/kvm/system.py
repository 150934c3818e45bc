"""``Kvm``: the ``/dev/kvm`` system handle (capabilities, supported CPUID/MSRs, VM creation)."""

from __future__ import annotations

import errno
import os

from pyvmm.errors import VmmError
from pyvmm.kvm import ioctls as io
from pyvmm.kvm import structs as s
from pyvmm.kvm.constants import KVM_API_VERSION
from pyvmm.kvm.cpuid import CpuidEntry, cpuid_read_buffer, cpuid_written
from pyvmm.kvm.ioctls import KvmError, ioctl
from pyvmm.kvm.vm_fd import VmFd

KVM_DEVICE = "/dev/kvm"
_MAX_CPUID_ENTRIES = 256


class Kvm:
    """An open ``/dev/kvm``. Use as a context manager or call :meth:`close`."""

    def __init__(self, path: str = KVM_DEVICE):
        try:
            self.fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            raise VmmError(f"{path} does not exist: KVM is not available (load kvm_intel/kvm_amd, "
                           "or enable nested virtualization on this VM)") from None
        except PermissionError:
            raise VmmError(f"no permission to open {path}: add your user to the 'kvm' group "
                           f"(sudo usermod -aG kvm $USER, then log in again)") from None
        except OSError as exc:
            raise VmmError(f"cannot open {path}: {exc.strerror}") from None
        version = ioctl(self.fd, io.KVM_GET_API_VERSION)
        if version != KVM_API_VERSION:
            os.close(self.fd)
            raise VmmError(f"{path} speaks KVM API version {version}, pyvmm needs {KVM_API_VERSION}")
        self._mmap_size: int | None = None

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> Kvm:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def api_version(self) -> int:
        return ioctl(self.fd, io.KVM_GET_API_VERSION)

    def check_extension(self, cap: int) -> int:
        """0 when the capability is absent, else a capability-specific positive value."""
        return ioctl(self.fd, io.KVM_CHECK_EXTENSION, int(cap))

    def get_vcpu_mmap_size(self) -> int:
        if self._mmap_size is None:
            self._mmap_size = ioctl(self.fd, io.KVM_GET_VCPU_MMAP_SIZE)
        return self._mmap_size

    def get_supported_cpuid(self, max_entries: int = _MAX_CPUID_ENTRIES) -> list[CpuidEntry]:
        return self._cpuid(io.KVM_GET_SUPPORTED_CPUID, max_entries)

    def get_emulated_cpuid(self, max_entries: int = _MAX_CPUID_ENTRIES) -> list[CpuidEntry]:
        return self._cpuid(io.KVM_GET_EMULATED_CPUID, max_entries)

    def _cpuid(self, request: int, max_entries: int) -> list[CpuidEntry]:
        buf = cpuid_read_buffer(max_entries)
        ioctl(self.fd, request, buf)
        return cpuid_written(buf, max_entries)

    def get_msr_index_list(self) -> list[int]:
        """MSR indices KVM can save/restore for a guest (KVM_GET_MSR_INDEX_LIST)."""
        return self._msr_list(io.KVM_GET_MSR_INDEX_LIST)

    def get_msr_feature_index_list(self) -> list[int]:
        return self._msr_list(io.KVM_GET_MSR_FEATURE_INDEX_LIST)

    def _msr_list(self, request: int) -> list[int]:
        probe = s.msr_list_with(0)()
        try:
            ioctl(self.fd, request, probe)  # E2BIG, with nmsrs set to the real count
        except KvmError as exc:
            if exc.errno != errno.E2BIG:
                raise
        buf = s.msr_list_with(probe.nmsrs)()
        buf.nmsrs = probe.nmsrs
        ioctl(self.fd, request, buf)
        return list(buf.indices[:buf.nmsrs])

    def create_vm(self, machine_type: int = 0):
        """A new VM."""
        return VmFd(ioctl(self.fd, io.KVM_CREATE_VM, machine_type), self)
