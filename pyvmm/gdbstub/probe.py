"""What this host's KVM really does with guest debugging, found by trying it once.

``KVM_CAP_SET_GUEST_DEBUG`` says the ioctl exists, not that every part works: on
``kvm_pvm`` (see the README), guest kernel code runs in an instruction emulator where
``int3`` is not intercepted (the guest dies with an emulation failure) and data
watchpoints never fire, while single-step and execution breakpoints work. So before a
debugger relies on a feature, :func:`probe_debug_support` runs four two-instruction 64-bit
ring-0 guests in a throw-away VM (a few milliseconds) and records what happened. The stub
then refuses what does not work with a clear message instead of letting the guest crash or
a watchpoint silently never trigger. Nothing here names a platform: on hardware KVM every
probe passes and nothing is refused.
"""

from __future__ import annotations

import logging
import signal
import struct
import threading
from dataclasses import dataclass, field

from pyvmm.kvm import ExitReason, Kvm
from pyvmm.kvm.constants import (KVM_GUESTDBG_BLOCKIRQ, KVM_GUESTDBG_ENABLE, KVM_GUESTDBG_SINGLESTEP,
                                 KVM_GUESTDBG_USE_HW_BP, KVM_GUESTDBG_USE_SW_BP, Cap)
from pyvmm.kvm.ioctls import KvmError
from pyvmm.memory import GuestMemory
from pyvmm.vcpu import KICK_SIGNAL, install_kick_handler

log = logging.getLogger(__name__)

_RAM = 2 << 20
_GDT, _CODE, _DATA, _PML4, _PDPT, _PD = 0x500, 0x1000, 0x3000, 0x9000, 0xA000, 0xB000
_RUN_TIMEOUT = 2.0


@dataclass(frozen=True)
class DebugSupport:
    """Which guest-debug features work on this KVM (in 64-bit ring-0 code, where a kernel runs)."""

    guest_debug: bool = True
    single_step: bool = True
    hw_breakpoints: bool = True
    watchpoints: bool = True
    sw_breakpoints: bool = True
    block_irq_on_step: bool = False
    notes: tuple[str, ...] = field(default=())

    def describe(self) -> str:
        def yes(flag: bool) -> str:
            return "yes" if flag else "NO"
        return (f"single-step {yes(self.single_step)}, hardware breakpoints {yes(self.hw_breakpoints)}, "
                f"watchpoints {yes(self.watchpoints)}, software breakpoints {yes(self.sw_breakpoints)}")


ASSUME_ALL = DebugSupport(notes=("not probed",))


class _ProbeVm:
    """A 2 MiB VM with one vCPU in 64-bit mode, identity-mapped with one 2 MiB page."""

    def __init__(self, kvm: Kvm):
        self.kvm = kvm
        self.vm = kvm.create_vm()
        self.memory = GuestMemory.create([(0, _RAM)])
        region = self.memory.regions[0]
        self.vm.set_user_memory_region(0, region.guest_addr, region.size, region.host_addr)
        self.vcpu = self.vm.create_vcpu(0)
        self.vcpu.set_cpuid(kvm.get_supported_cpuid())  # KVM refuses EFER.LME without CPUID.LM
        gdt = [0, 0x00AF9B000000FFFF, 0x00CF93000000FFFF]
        self.memory.write(_GDT, struct.pack("<3Q", *gdt))
        self.memory.write_u64(_PML4, _PDPT | 3)
        self.memory.write_u64(_PDPT, _PD | 3)
        self.memory.write_u64(_PD, 0x83)

    def close(self) -> None:
        self.vcpu.close()
        self.vm.close()
        self.memory.close()

    def run(self, code: bytes, control: int, debugreg: tuple[int, ...] = ()):
        """Run ``code`` at _CODE in ring 0 with guest debugging set; the first exit (None on timeout)."""
        self.memory.write(_CODE, code)
        self.memory.write_u8(_DATA, 0)
        sregs = self.vcpu.get_sregs()
        for name in ("ds", "es", "fs", "gs", "ss"):
            seg = getattr(sregs, name)
            seg.base, seg.limit, seg.selector, seg.type = 0, 0xFFFF_FFFF, 0x10, 3
            seg.present, seg.dpl, seg.db, seg.s, seg.l, seg.g = 1, 0, 1, 1, 0, 1
        cs = sregs.cs
        cs.base, cs.limit, cs.selector, cs.type = 0, 0xFFFF_FFFF, 0x08, 11
        cs.present, cs.dpl, cs.s, cs.g, cs.l, cs.db = 1, 0, 1, 1, 1, 0
        sregs.gdt.base, sregs.gdt.limit = _GDT, 23
        sregs.cr3, sregs.cr4, sregs.cr0, sregs.efer = _PML4, 0x20, 0x8000_0031, 0x500
        self.vcpu.set_sregs(sregs)
        self.vcpu.set_regs({"rip": _CODE, "rsp": 0x8000, "rflags": 0x2})
        self.vcpu.set_guest_debug(control, debugreg)
        me = threading.get_ident()
        expired = threading.Event()

        def kick() -> None:
            expired.set()
            self.vcpu.immediate_exit = True
            signal.pthread_kill(me, KICK_SIGNAL)

        watchdog = threading.Timer(_RUN_TIMEOUT, kick)
        watchdog.start()
        try:
            while True:
                reason = self.vcpu.run()
                if reason != ExitReason.INTR:
                    return self.vcpu.exit()
                if expired.is_set():
                    return None
        finally:
            watchdog.cancel()
            self.vcpu.immediate_exit = False
            self.vcpu.set_guest_debug(0)


def _debug_exit(exit_, exception: int, pcs: tuple[int, ...], dr6_mask: int = 0) -> bool:
    return bool(exit_ is not None and exit_.reason == ExitReason.DEBUG and exit_.debug_exception == exception
                and exit_.debug_pc in pcs and (not dr6_mask or exit_.dr6 & dr6_mask))


def probe_debug_support(kvm: Kvm | None = None) -> DebugSupport:
    """Try single-step, an execution breakpoint, a write watchpoint and int3 once each.

    Must run on a thread where :data:`~pyvmm.vcpu.KICK_SIGNAL` has its handler installed.
    """
    if threading.current_thread() is threading.main_thread():
        install_kick_handler()
    own = kvm is None
    kvm = kvm or Kvm()
    try:
        if not kvm.check_extension(Cap.SET_GUEST_DEBUG):
            return DebugSupport(False, False, False, False, False, notes=("KVM_CAP_SET_GUEST_DEBUG is absent",))
        supported = kvm.check_extension(Cap.SET_GUEST_DEBUG2)
        block_irq = bool(supported & KVM_GUESTDBG_BLOCKIRQ)
        probe = _ProbeVm(kvm)
        try:
            on = KVM_GUESTDBG_ENABLE
            nops = bytes.fromhex("90 90 f4")  # nop; nop; hlt
            step = _debug_exit(probe.run(nops, on | KVM_GUESTDBG_SINGLESTEP), 1, (_CODE, _CODE + 1), 0x4000)
            # DR0 = the second nop, DR7: G0, execute, 1 byte
            hw = _debug_exit(probe.run(nops, on | KVM_GUESTDBG_USE_HW_BP, (_CODE + 1, 0, 0, 0, 0, 0, 0, 0x602)),
                             1, (_CODE + 1,), 1)
            # mov byte [_DATA], al; nop; hlt -- DR0 = _DATA, DR7: G0, write, 1 byte
            store = bytes.fromhex("88 04 25") + _DATA.to_bytes(4, "little") + bytes.fromhex("90 f4")
            watch = _debug_exit(probe.run(store, on | KVM_GUESTDBG_USE_HW_BP,
                                          (_DATA, 0, 0, 0, 0, 0, 0, 0x602 | (1 << 16))), 1, (_CODE + 7,), 1)
            # nop; int3; hlt: KVM reports the int3 itself
            sw = _debug_exit(probe.run(bytes.fromhex("90 cc f4"), on | KVM_GUESTDBG_USE_SW_BP), 3, (_CODE + 1,))
        finally:
            probe.close()
    except (KvmError, OSError) as exc:
        log.warning("gdb: could not probe guest debugging (%s); assuming it all works", exc)
        return DebugSupport(notes=(f"probe failed: {exc}",))
    finally:
        if own:
            kvm.close()
    support = DebugSupport(True, step, hw, watch, sw, block_irq)
    log.info("gdb: this KVM's guest debugging: %s", support.describe())
    return support
