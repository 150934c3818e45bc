"""Interrupts into the guest through the in-kernel irqchip (irqfd, KVM_IRQ_LINE) and ioeventfds out of it."""

from __future__ import annotations

import os
import time

import pytest

from pyvmm.kvm import ExitReason, KvmError
from pyvmm.vcpu import StopKind, Vcpu
from tinyguest import CODE, MMIO_BASE, Recorder, TinyVm, kvm_test, u16, u32, u64

pytestmark = kvm_test

IRQ = 5
VECTOR = 0x20 + IRQ  # master PIC remapped to vectors 0x20-0x27
HANDLER = CODE + 0x100

# Real mode: program the master 8259 (in-kernel), unmask IRQ 5 only, say "ready", then sti; hlt.
# The handler reports 2 and acknowledges; after iret the main code reports 3 and signals done.
MAIN = bytes.fromhex(
    "fa"              # cli
    "b011 e620"       # ICW1: edge, cascade, ICW4 needed
    "b020 e621"       # ICW2: vector base 0x20
    "b004 e621"       # ICW3: slave on IRQ2
    "b001 e621"       # ICW4: 8086 mode
    "b0df e621"       # OCW1: mask all but IRQ 5
    "b001 e610"       # out 0x10, 1        (ready)
    "fb"              # sti
    "f4"              # hlt                (in-kernel: waits for the interrupt)
    "b003 e610"       # out 0x10, 3        (resumed after the handler)
    "fa f4")          # cli; hlt
HANDLER_CODE = bytes.fromhex(
    "b002 e610"       # out 0x10, 2
    "b020 e620"       # EOI to the master PIC
    "cf")             # iret


def _interrupt_guest(t: TinyVm) -> Recorder:
    dev = Recorder()
    t.pio.insert(dev, 0x10, 1)
    t.load(CODE, MAIN)
    t.load(HANDLER, HANDLER_CODE)
    t.memory.write(4 * VECTOR, u16(HANDLER) + u16(0))  # IVT entry: offset, segment
    t.real_mode(t.vcpus[0])
    return dev


def _run_with(t: TinyVm, inject) -> list[int]:
    dev = _interrupt_guest(t)
    vcpu = Vcpu(t.vcpus[0], t.pio, t.mmio, memory=t.memory)
    vcpu.start()
    try:
        assert dev.wait_for_value(1), f"guest never got ready: {vcpu.result}"
        time.sleep(0.05)  # let it reach hlt
        assert dev.values() == [1], "guest ran past hlt without an interrupt"
        inject()
        dev.wait_for_value(3, timeout=20)
    finally:
        stop = vcpu.stop()
    assert stop is not None and stop.kind in (StopKind.REQUESTED,), stop
    return dev.values()


def test_interrupt_via_irqfd_reaches_guest_handler():
    with TinyVm(irqchip=True) as t:
        efd = os.eventfd(0, os.EFD_CLOEXEC)
        try:
            t.vm.irqfd(efd, IRQ)
            values = _run_with(t, lambda: os.eventfd_write(efd, 1))
            t.vm.irqfd_deassign(efd, IRQ)
        finally:
            os.close(efd)
        assert values == [1, 2, 3]


def test_interrupt_via_irq_line_reaches_guest_handler():
    with TinyVm(irqchip=True) as t:
        def pulse():
            t.vm.irq_line(IRQ, True)
            t.vm.irq_line(IRQ, False)

        assert _run_with(t, pulse) == [1, 2, 3]


def test_ioeventfd_mmio_and_pio_signal_without_exit():
    with TinyVm() as t:
        mmio_dev, pio_dev = Recorder(), Recorder()
        t.mmio.insert(mmio_dev, MMIO_BASE, 0x1000)
        t.pio.insert(pio_dev, 0x600, 0x10)
        match_fd, any_fd, pio_fd = (os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK) for _ in range(3))
        try:
            t.vm.ioeventfd(match_fd, MMIO_BASE, 4, datamatch=0x1234)
            t.vm.ioeventfd(any_fd, MMIO_BASE + 0x10, 0)
            t.vm.ioeventfd(pio_fd, 0x600, 1, pio=True)
            t.load(CODE, bytes.fromhex("b834120000") +                # mov eax, 0x1234
                   bytes.fromhex("a3") + u64(MMIO_BASE) +             # mov [MMIO_BASE], eax   -> match_fd
                   bytes.fromhex("b878560000") +                      # mov eax, 0x5678
                   bytes.fromhex("a3") + u64(MMIO_BASE) +             # mov [MMIO_BASE], eax   -> exit (no match)
                   bytes.fromhex("a2") + u64(MMIO_BASE + 0x10) +      # mov [MMIO_BASE+0x10], al -> any_fd
                   bytes.fromhex("66ba0006 b007 ee") +                # mov dx, 0x600; mov al, 7; out dx, al -> pio_fd
                   bytes.fromhex("66ba0006 66b80800 66ef") +          # out dx, ax (len 2: no match -> exit)
                   bytes.fromhex("f4"))
            t.long_mode(t.vcpus[0])
            exits, last = t.run_until_stop(t.vcpus[0])
            assert last.reason == ExitReason.HLT
            assert [(e.reason, e.addr or e.port, e.data) for e in exits] == [
                (ExitReason.MMIO, MMIO_BASE, u32(0x5678)), (ExitReason.IO, 0x600, u16(8))]
            assert os.eventfd_read(match_fd) == 1
            assert os.eventfd_read(any_fd) == 1
            assert os.eventfd_read(pio_fd) == 1
            t.vm.ioeventfd(match_fd, MMIO_BASE, 4, datamatch=0x1234, deassign=True)
            with pytest.raises(KvmError, match="ENOENT"):
                t.vm.ioeventfd(match_fd, MMIO_BASE, 4, datamatch=0x1234, deassign=True)  # already gone: ENOENT
        finally:
            for fd in (match_fd, any_fd, pio_fd):
                os.close(fd)
