"""Vcpu.pause/resume: parking a vCPU outside KVM_RUN (the primitive behind gdb stops and monitor stop/cont)."""

from __future__ import annotations

import threading
import time

from pyvmm.kvm.constants import KVM_GUESTDBG_ENABLE, KVM_GUESTDBG_SINGLESTEP
from pyvmm.vcpu import StopKind, Vcpu
from tinyguest import CODE, DATA, TinyVm, kvm_test

pytestmark = kvm_test

#: l: inc word [DATA]; jmp l   (real mode, no exits: the counter only moves while the vCPU runs)
COUNT_LOOP = bytes.fromhex("ff06") + DATA.to_bytes(2, "little") + bytes.fromhex("ebfa")


def _counter(t: TinyVm) -> int:
    return t.memory.read_u16(DATA)


def _wait_moving(t: TinyVm, timeout: float = 10.0) -> bool:
    start, deadline = _counter(t), time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _counter(t) != start:
            return True
        time.sleep(0.01)
    return False


def test_pause_parks_the_vcpu_and_resume_runs_it_on():
    with TinyVm() as t:
        t.load(CODE, COUNT_LOOP)
        t.real_mode(t.vcpus[0])
        vcpu = Vcpu(t.vcpus[0], t.pio, t.mmio)
        vcpu.start()
        try:
            assert _wait_moving(t)
            assert vcpu.pause(timeout=5)
            assert vcpu.is_paused and vcpu.running
            frozen = _counter(t)
            rip = t.vcpus[0].get_regs().rip  # registers are readable from this thread while parked
            assert CODE <= rip < CODE + len(COUNT_LOOP)
            time.sleep(0.2)
            assert _counter(t) == frozen
            assert vcpu.pause(timeout=5)  # idempotent
            vcpu.resume()
            assert _wait_moving(t)
            assert not vcpu.is_paused
        finally:
            stop = vcpu.stop()
        assert stop.kind is StopKind.REQUESTED


def test_pause_before_start_holds_the_first_run():
    with TinyVm() as t:
        t.load(CODE, COUNT_LOOP)
        t.real_mode(t.vcpus[0])
        vcpu = Vcpu(t.vcpus[0], t.pio, t.mmio)
        vcpu.request_pause()
        vcpu.start()
        try:
            assert vcpu.wait_paused(timeout=5)
            time.sleep(0.2)
            assert _counter(t) == 0
            assert t.vcpus[0].get_regs().rip == CODE
            vcpu.resume()
            assert _wait_moving(t)
        finally:
            vcpu.stop()


def test_stop_ends_a_paused_vcpu():
    with TinyVm() as t:
        t.load(CODE, COUNT_LOOP)
        t.real_mode(t.vcpus[0])
        vcpu = Vcpu(t.vcpus[0], t.pio, t.mmio)
        vcpu.start()
        assert vcpu.pause(timeout=5)
        assert vcpu.stop(timeout=5).kind is StopKind.REQUESTED
        assert not vcpu.running
        assert vcpu.pause(timeout=1)  # nothing runs: a pause of an ended vCPU does not wait


def test_pause_reaches_a_vcpu_halted_in_the_kernel():
    """With the in-kernel irqchip, HLT with interrupts off blocks inside KVM_RUN: the kick must still park it."""
    with TinyVm(irqchip=True) as t:
        t.load(CODE, bytes.fromhex("fa f4 ebfd"))  # cli; l: hlt; jmp l
        t.real_mode(t.vcpus[0])
        vcpu = Vcpu(t.vcpus[0], t.pio, t.mmio)
        vcpu.start()
        try:
            time.sleep(0.3)
            assert vcpu.pause(timeout=5)
            vcpu.resume()
            time.sleep(0.1)
            assert vcpu.pause(timeout=5)
        finally:
            vcpu.stop()


def test_pause_from_the_debug_hook_parks_after_the_hook():
    """A debugger's stop: the hook on the vCPU thread requests the pause; the loop parks at that exit."""
    with TinyVm() as t:
        t.load(CODE, bytes.fromhex("90 90 90 90 f4"))
        t.real_mode(t.vcpus[0])
        t.vcpus[0].set_guest_debug(KVM_GUESTDBG_ENABLE | KVM_GUESTDBG_SINGLESTEP)
        stopped = threading.Event()

        def on_debug(vcpu, exit_):
            assert vcpu.pause(timeout=0) is False  # only requested: this thread cannot be parked yet
            stopped.set()
            return True

        vcpu = Vcpu(t.vcpus[0], t.pio, t.mmio, on_debug=on_debug)
        vcpu.start()
        try:
            assert stopped.wait(10)
            assert vcpu.wait_paused(timeout=5)
            first = t.vcpus[0].get_regs().rip
            assert first in (CODE, CODE + 1)
            t.vcpus[0].set_guest_debug(0)
            vcpu.resume()
            assert vcpu.wait(timeout=10).kind is StopKind.HALT
        finally:
            vcpu.stop()
