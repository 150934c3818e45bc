"""``VcpuFd``: one KVM vCPU: its shared ``kvm_run`` page, ``KVM_RUN`` and its register state.

``run()`` returns the raw exit reason; ``exit()`` decodes it into a :class:`VcpuExit`. Hot
paths may read the page directly: ``run_struct`` is a ``kvm_run`` ctypes view and
``run_page`` a writable memoryview of the same mapping (``struct.unpack_from`` friendly;
the exit union starts at ``structs.KVM_RUN_EXIT_OFFSET``). After an IO-in or MMIO-read
exit, put the value with ``complete_io_in`` / ``complete_mmio_read`` before the next ``run()``.

Register state can be passed as the kernel structs or as plain values: ``set_regs`` and
``set_sregs`` accept any object/dict with the kernel's field names; CPUID as
``(function, index, flags, eax, ebx, ecx, edx)`` entries; MSRs as ``(index, value)`` pairs.

Threads: every vCPU ioctl takes the kernel's per-vCPU mutex, which ``KVM_RUN`` holds while
the guest runs. Calling ``get_regs()`` & co. from another thread while the vCPU runs blocks
(uninterruptibly) until that ``KVM_RUN`` returns: stop the vCPU first, or do it on its thread.
Only ``immediate_exit`` (a plain store to the shared page) is safe from any thread.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os

from pyvmm.kvm import ioctls as io
from pyvmm.kvm import structs as s
from pyvmm.kvm.constants import ExitReason, MpState
from pyvmm.kvm.cpuid import CpuidEntry, cpuid_read_buffer, cpuid_to_struct, cpuid_written
from pyvmm.kvm.exits import VcpuExit, decode_exit
from pyvmm.kvm.ioctls import KvmError, ioctl, raw_ioctl

_RUN_INTERRUPTED = (errno.EINTR, errno.EAGAIN)


class VcpuFd:
    """A vCPU file descriptor. Created by ``VmFd.create_vcpu()``."""

    def __init__(self, fd: int, vcpu_id: int, mmap_size: int):
        self.fd = fd
        self.id = vcpu_id
        self._map = mmap.mmap(fd, mmap_size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self.run_page = memoryview(self._map)
        self.run_struct = s.kvm_run.from_buffer(self._map)
        self.run_args = (fd, ctypes.c_ulong(io.KVM_RUN), ctypes.c_ulong(0))
        """``raw_ioctl(*run_args)`` is KVM_RUN without the wrapper (a hot loop then calls ``run_failed``)."""

    def close(self) -> None:
        if self.fd < 0:
            return
        del self.run_struct
        self.run_page.release()
        try:
            self._map.close()
        except BufferError:
            pass  # a view handed out by exit()/run_struct users is still alive; the GC unmaps later
        os.close(self.fd)
        self.fd = -1

    # -- running ------------------------------------------------------------------------

    def run(self) -> int:
        """Enter the guest until the next exit; returns ``kvm_run.exit_reason``.

        A signal or ``immediate_exit`` makes it return ``ExitReason.INTR`` instead of raising.
        """
        if raw_ioctl(*self.run_args) < 0:
            return self.run_failed()
        return self.run_struct.exit_reason

    def run_failed(self) -> int:
        """After KVM_RUN returned -1: ``ExitReason.INTR`` if a signal/immediate_exit interrupted it, else raise."""
        err = ctypes.get_errno()
        if err in _RUN_INTERRUPTED:
            return ExitReason.INTR
        raise KvmError(io.KVM_RUN, err, f"vcpu {self.id}")

    @property
    def immediate_exit(self) -> bool:
        return bool(self.run_struct.immediate_exit)

    @immediate_exit.setter
    def immediate_exit(self, value: bool) -> None:
        """While set, ``KVM_RUN`` returns at once with EINTR (used to stop a vCPU thread race-free)."""
        self.run_struct.immediate_exit = 1 if value else 0

    def exit(self) -> VcpuExit:
        """The last exit, decoded."""
        return decode_exit(self.run_struct, self.run_page)

    def complete_io_in(self, data: bytes) -> None:
        """Supply the bytes a port-IN instruction reads (``size * count`` bytes)."""
        io_exit = self.run_struct.io
        n = io_exit.size * io_exit.count
        if len(data) != n:
            raise ValueError(f"IO in on port {io_exit.port:#x} needs {n} bytes, got {len(data)}")
        self.run_page[io_exit.data_offset:io_exit.data_offset + n] = data

    def complete_mmio_read(self, data: bytes) -> None:
        mmio = self.run_struct.mmio
        if len(data) != mmio.len:
            raise ValueError(f"MMIO read at {mmio.phys_addr:#x} needs {mmio.len} bytes, got {len(data)}")
        ctypes.memmove(mmio.data, data, len(data))

    # -- registers ----------------------------------------------------------------------

    def get_regs(self) -> s.kvm_regs:
        regs = s.kvm_regs()
        ioctl(self.fd, io.KVM_GET_REGS, regs)
        return regs

    def set_regs(self, regs) -> None:
        """``regs``: a ``kvm_regs``, or any object/dict with some of its fields (others read back first)."""
        if not isinstance(regs, s.kvm_regs):
            regs = s.fill(self.get_regs(), regs)
        ioctl(self.fd, io.KVM_SET_REGS, regs)

    def get_sregs(self) -> s.kvm_sregs:
        sregs = s.kvm_sregs()
        ioctl(self.fd, io.KVM_GET_SREGS, sregs)
        return sregs

    def set_sregs(self, sregs) -> None:
        """``sregs``: a ``kvm_sregs``, or an object/dict with some fields (segments may be objects/dicts too)."""
        if not isinstance(sregs, s.kvm_sregs):
            sregs = s.fill(self.get_sregs(), sregs)
        ioctl(self.fd, io.KVM_SET_SREGS, sregs)

    def get_fpu(self) -> s.kvm_fpu:
        fpu = s.kvm_fpu()
        ioctl(self.fd, io.KVM_GET_FPU, fpu)
        return fpu

    def set_fpu(self, fpu) -> None:
        if not isinstance(fpu, s.kvm_fpu):
            fpu = s.fill(self.get_fpu(), fpu)
        ioctl(self.fd, io.KVM_SET_FPU, fpu)

    def get_xsave(self) -> s.kvm_xsave:
        xsave = s.kvm_xsave()
        ioctl(self.fd, io.KVM_GET_XSAVE, xsave)
        return xsave

    def set_xsave(self, xsave: s.kvm_xsave) -> None:
        ioctl(self.fd, io.KVM_SET_XSAVE, xsave)

    def get_mxcsr(self) -> int:
        """The guest's MXCSR. Not from ``get_fpu()``: KVM leaves ``kvm_fpu.mxcsr`` at 0."""
        return int.from_bytes(memoryview(self.get_xsave()).cast("B")[
            s.XSAVE_MXCSR_OFFSET:s.XSAVE_MXCSR_OFFSET + 4], "little")

    def set_mxcsr(self, value: int) -> None:
        """Set the guest's MXCSR through KVM_SET_XSAVE (KVM_SET_FPU ignores ``mxcsr``).

        The SSE bit of the header's XSTATE_BV is set too: without it KVM keeps the SSE
        state, MXCSR included, in its initial configuration. KVM refuses reserved bits (EINVAL).
        """
        xsave = self.get_xsave()
        raw = memoryview(xsave).cast("B")
        raw[s.XSAVE_MXCSR_OFFSET:s.XSAVE_MXCSR_OFFSET + 4] = value.to_bytes(4, "little")
        bv = int.from_bytes(raw[s.XSAVE_XSTATE_BV_OFFSET:s.XSAVE_XSTATE_BV_OFFSET + 8], "little")
        raw[s.XSAVE_XSTATE_BV_OFFSET:s.XSAVE_XSTATE_BV_OFFSET + 8] = (bv | s.XFEATURE_MASK_SSE).to_bytes(8, "little")
        self.set_xsave(xsave)

    def get_msrs(self, indices) -> dict[int, int]:
        """Values of the given MSRs; raises naming the first MSR KVM could not read."""
        indices = list(indices)
        buf = s.msrs_with(len(indices))()
        buf.nmsrs = len(indices)
        for entry, index in zip(buf.entries, indices):
            entry.index = index
        done = ioctl(self.fd, io.KVM_GET_MSRS, buf)
        if done != len(indices):
            raise KvmError("KVM_GET_MSRS", errno.EINVAL, f"MSR {indices[done]:#x} not readable")
        return {e.index: e.data for e in buf.entries}

    def set_msrs(self, entries) -> None:
        """Write ``(index, value)`` pairs (or a dict); raises naming the first MSR KVM refused."""
        pairs = list(entries.items()) if isinstance(entries, dict) else [tuple(e) for e in entries]
        buf = s.msrs_with(len(pairs))()
        buf.nmsrs = len(pairs)
        for entry, (index, value) in zip(buf.entries, pairs):
            entry.index, entry.data = index, value
        done = ioctl(self.fd, io.KVM_SET_MSRS, buf)
        if done != len(pairs):
            index, value = pairs[done]
            raise KvmError("KVM_SET_MSRS", errno.EINVAL, f"KVM refused MSR {index:#x} = {value:#x}")

    def set_cpuid(self, entries) -> None:
        """KVM_SET_CPUID2 from ``(function, index, flags, eax, ebx, ecx, edx)`` entries."""
        ioctl(self.fd, io.KVM_SET_CPUID2, cpuid_to_struct(list(entries)))

    def get_cpuid(self, max_entries: int = 256) -> list[CpuidEntry]:
        """The vCPU's CPUID entries (KVM_GET_CPUID2): only those the kernel wrote, see :func:`cpuid_written`."""
        buf = cpuid_read_buffer(max_entries)
        ioctl(self.fd, io.KVM_GET_CPUID2, buf)
        return cpuid_written(buf, max_entries)

    def get_lapic(self) -> s.kvm_lapic_state:
        lapic = s.kvm_lapic_state()
        ioctl(self.fd, io.KVM_GET_LAPIC, lapic)
        return lapic

    def set_lapic(self, lapic: s.kvm_lapic_state) -> None:
        ioctl(self.fd, io.KVM_SET_LAPIC, lapic)

    def get_mp_state(self) -> MpState:
        state = s.kvm_mp_state()
        ioctl(self.fd, io.KVM_GET_MP_STATE, state)
        try:
            return MpState(state.mp_state)
        except ValueError:
            return state.mp_state

    def set_mp_state(self, state: int) -> None:
        ioctl(self.fd, io.KVM_SET_MP_STATE, s.kvm_mp_state(mp_state=int(state)))

    def get_vcpu_events(self) -> s.kvm_vcpu_events:
        events = s.kvm_vcpu_events()
        ioctl(self.fd, io.KVM_GET_VCPU_EVENTS, events)
        return events

    def set_vcpu_events(self, events: s.kvm_vcpu_events) -> None:
        ioctl(self.fd, io.KVM_SET_VCPU_EVENTS, events)

    def set_guest_debug(self, control: int, debugreg: tuple[int, ...] = ()) -> None:
        """KVM_GUESTDBG_* ``control`` bits; ``debugreg`` DR0-DR7 for hardware breakpoints."""
        req = s.kvm_guest_debug(control=control)
        for i, value in enumerate(debugreg):
            req.arch.debugreg[i] = value
        ioctl(self.fd, io.KVM_SET_GUEST_DEBUG, req)

    def translate(self, linear_address: int) -> int | None:
        """Guest-physical address of a guest-virtual one via the guest's page tables (None if unmapped)."""
        req = s.kvm_translation(linear_address=linear_address)
        ioctl(self.fd, io.KVM_TRANSLATE, req)
        return req.physical_address if req.valid else None

    def interrupt(self, vector: int) -> None:
        """Inject an external interrupt (only without the in-kernel irqchip)."""
        ioctl(self.fd, io.KVM_INTERRUPT, s.kvm_interrupt(irq=vector))

    def nmi(self) -> None:
        ioctl(self.fd, io.KVM_NMI)

    def enable_cap(self, cap: int, *args: int, flags: int = 0) -> None:
        req = s.kvm_enable_cap(cap=int(cap), flags=flags)
        for i, arg in enumerate(args):
            req.args[i] = arg
        ioctl(self.fd, io.KVM_ENABLE_CAP, req)
