"""A decoded ``KVM_RUN`` exit: one small immutable value per exit instead of raw union fields.

``VcpuFd.exit()`` builds a :class:`VcpuExit` from the ``kvm_run`` page. The vCPU hot path
(:mod:`pyvmm.vcpu`) reads PIO/MMIO fields directly and decodes only the rare exits this way.
"""

from __future__ import annotations

from dataclasses import dataclass

from pyvmm.kvm.constants import (
    KVM_EXIT_IO_OUT,
    KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES,
    ExitReason,
    InternalError,
    SystemEvent,
)
from pyvmm.kvm.structs import kvm_run


@dataclass(frozen=True, slots=True)
class VcpuExit:
    """Why ``KVM_RUN`` returned. Fields not meaningful for ``reason`` keep their defaults.

    - IO: ``port``, ``size`` (1/2/4), ``count`` (string I/O repeats), ``is_write``, ``data`` (OUT only,
      ``size * count`` bytes).
    - MMIO: ``addr``, ``size``, ``is_write``, ``data`` (writes only).
    - INTERNAL_ERROR: ``suberror``, ``internal_data`` (the ``ndata`` u64 words), ``insn_bytes`` (when KVM
      reported the failing instruction's bytes).
    - FAIL_ENTRY: ``hardware_reason``, ``cpu``. UNKNOWN: ``hardware_reason``.
    - SYSTEM_EVENT: ``event_type``, ``event_data``.
    - DEBUG: ``debug_exception``, ``debug_pc``, ``dr6``, ``dr7``.
    """

    reason: int
    port: int = 0
    addr: int = 0
    size: int = 0
    count: int = 0
    is_write: bool = False
    data: bytes = b""
    suberror: int = 0
    internal_data: tuple[int, ...] = ()
    insn_bytes: bytes = b""
    hardware_reason: int = 0
    cpu: int = 0
    event_type: int = 0
    event_data: tuple[int, ...] = ()
    debug_exception: int = 0
    debug_pc: int = 0
    dr6: int = 0
    dr7: int = 0

    @property
    def reason_name(self) -> str:
        return ExitReason.name_of(self.reason)

    def describe(self) -> str:
        """One line for logs and error messages."""
        r = self.reason
        if r == ExitReason.IO:
            what = f"out {self.data.hex()}" if self.is_write else "in"
            rep = f" x{self.count}" if self.count != 1 else ""
            return f"IO port {self.port:#x} size {self.size}{rep} {what}"
        if r == ExitReason.MMIO:
            what = f"write {self.data.hex()}" if self.is_write else "read"
            return f"MMIO {self.addr:#x} len {self.size} {what}"
        if r == ExitReason.INTERNAL_ERROR:
            try:
                sub = InternalError(self.suberror).name
            except ValueError:
                sub = str(self.suberror)
            text = f"INTERNAL_ERROR suberror {sub}"
            if self.insn_bytes:
                text += f" insn {self.insn_bytes.hex(' ')}"
            elif self.internal_data:
                text += " data [" + " ".join(f"{d:#x}" for d in self.internal_data) + "]"
            return text
        if r == ExitReason.FAIL_ENTRY:
            return f"FAIL_ENTRY hardware reason {self.hardware_reason:#x} cpu {self.cpu}"
        if r == ExitReason.UNKNOWN:
            return f"UNKNOWN hardware exit reason {self.hardware_reason:#x}"
        if r == ExitReason.SYSTEM_EVENT:
            try:
                kind = SystemEvent(self.event_type).name
            except ValueError:
                kind = str(self.event_type)
            return f"SYSTEM_EVENT {kind}"
        if r == ExitReason.DEBUG:
            return f"DEBUG exception {self.debug_exception} pc {self.debug_pc:#x} dr6 {self.dr6:#x}"
        return self.reason_name


def decode_exit(run: kvm_run, page: memoryview) -> VcpuExit:
    """Decode the exit described by ``run`` (a ``kvm_run`` view of ``page``)."""
    reason = run.exit_reason
    if reason == ExitReason.IO:
        io = run.io
        is_write = io.direction == KVM_EXIT_IO_OUT
        data = bytes(page[io.data_offset:io.data_offset + io.size * io.count]) if is_write else b""
        return VcpuExit(reason, port=io.port, size=io.size, count=io.count, is_write=is_write, data=data)
    if reason == ExitReason.MMIO:
        mmio = run.mmio
        data = bytes(mmio.data)[:mmio.len] if mmio.is_write else b""
        return VcpuExit(reason, addr=mmio.phys_addr, size=mmio.len, is_write=bool(mmio.is_write), data=data)
    if reason == ExitReason.INTERNAL_ERROR:
        internal = run.internal
        ndata = min(internal.ndata, 16)
        insn = b""
        if internal.suberror == InternalError.EMULATION and ndata >= 3:
            failure = run.emulation_failure
            if failure.flags & KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES:
                insn = bytes(failure.insn_bytes)[:min(failure.insn_size, 15)]
        return VcpuExit(reason, suberror=internal.suberror, internal_data=tuple(internal.data[:ndata]),
                        insn_bytes=insn)
    if reason == ExitReason.FAIL_ENTRY:
        fail = run.fail_entry
        return VcpuExit(reason, hardware_reason=fail.hardware_entry_failure_reason, cpu=fail.cpu)
    if reason == ExitReason.UNKNOWN:
        return VcpuExit(reason, hardware_reason=run.hw.hardware_exit_reason)
    if reason == ExitReason.SYSTEM_EVENT:
        event = run.system_event
        return VcpuExit(reason, event_type=event.type, event_data=tuple(event.data[:min(event.ndata, 16)]))
    if reason == ExitReason.DEBUG:
        dbg = run.debug
        return VcpuExit(reason, debug_exception=dbg.exception, debug_pc=dbg.pc, dr6=dbg.dr6, dr7=dbg.dr7)
    return VcpuExit(reason)
