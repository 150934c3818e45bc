"""The UART under a real vCPU, its interrupt through the in-kernel 8259 (ISA IRQ 4,
edge-triggered) as Linux's 8250 driver uses it: a real-mode guest echoes received data
(RDA interrupt, FIFO flow control), and transmits a string one byte per THRE interrupt,
which only works if every THR write gives the interrupt controller a new edge."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1] / "kvm"))

from tinyguest import CODE, DATA, TinyVm, kvm_test, u16  # noqa: E402

from pyvmm.legacy.irq import GsiLine  # noqa: E402
from pyvmm.legacy.serial import COM1_BASE, COM1_IRQ, REGISTER_COUNT, Serial16550  # noqa: E402
from pyvmm.vcpu import Vcpu  # noqa: E402

pytestmark = kvm_test

HANDLER = CODE + 0x100
VECTOR = 0x20 + COM1_IRQ

MAIN = bytes.fromhex(
    "fa"                    # cli
    "b011 e620"             # 8259 ICW1: edge, cascade, ICW4
    "b020 e621"             # ICW2: vectors 0x20-0x27
    "b004 e621"             # ICW3
    "b001 e621"             # ICW4: 8086 mode
    "b0ef e621"             # OCW1: unmask IRQ 4 only
    "bafa03 b001 ee"        # FCR = FIFO on, trigger 1
    "bafc03 b008 ee"        # MCR = OUT2
    "baf903 b001 ee"        # IER = received data
    "baf803 b052 ee"        # THR = 'R' (ready)
    "fb f4 ebfc"            # loop: sti; hlt; jmp loop
)
HANDLER_CODE = bytes.fromhex(
    "50 52"                 # push ax; push dx
    "bafa03 ec"             # in IIR
    "bafd03 ec"             # next: in LSR
    "a801 7407"             # test al, DR; jz done
    "baf803 ec"             # in RBR
    "ee"                    # out THR (echo)
    "ebf1"                  # jmp next
    "b020 e620"             # done: EOI
    "5a 58 cf"              # pop dx; pop ax; iret
)


class Sink:
    def __init__(self):
        self.data = bytearray()
        self.cond = threading.Condition()

    def __call__(self, data: bytes) -> None:
        with self.cond:
            self.data += data
            self.cond.notify_all()

    def wait_for(self, n: int, timeout: float = 30.0) -> bytes:
        with self.cond:
            self.cond.wait_for(lambda: len(self.data) >= n, timeout)
            return bytes(self.data)


def test_guest_echoes_host_input_through_irq4():
    with TinyVm(irqchip=True) as t:
        sink = Sink()
        uart = Serial16550(sink=sink, irq=GsiLine(t.vm, COM1_IRQ))
        t.pio.insert(uart, COM1_BASE, REGISTER_COUNT)
        t.load(CODE, MAIN)
        t.load(HANDLER, HANDLER_CODE)
        t.memory.write(4 * VECTOR, u16(HANDLER) + u16(0))
        t.real_mode(t.vcpus[0])
        vcpu = Vcpu(t.vcpus[0], t.pio, t.mmio, memory=t.memory)
        room = threading.Event()
        uart.set_rx_space_listener(room.set)
        vcpu.start()
        try:
            assert sink.wait_for(1) == b"R", f"guest never got ready: {vcpu.result}"
            message = b"hello from the host console, longer than one 16-byte FIFO\r"
            for burst in (message, b"second burst\r"):
                rest = burst
                while rest:
                    room.clear()
                    rest = rest[uart.enqueue_input(rest):]
                    if rest:
                        assert room.wait(30), f"UART never drained; echoed so far {bytes(sink.data)!r}"
                expected = b"R" + message + (burst if burst is not message else b"")
                assert sink.wait_for(len(expected)) == expected
        finally:
            vcpu.stop()


TX_MAIN = MAIN.replace(bytes.fromhex("baf903 b001 ee"), bytes.fromhex("baf903 b002 ee")).replace(
    bytes.fromhex("baf803 b052 ee"), b"")  # IER = THR empty; no ready byte
TX_INDEX, TX_TEXT = DATA, DATA + 0x100
assert (TX_INDEX, TX_TEXT) == (0x3000, 0x3100), "the handler below encodes these addresses"
TX_HANDLER = bytes.fromhex(
    "50 52 53"              # push ax; push dx; push bx
    "bafa03 ec"             # in IIR (acknowledges THRE)
    "8b1e0030"              # mov bx, [TX_INDEX]
    "8a870031"              # mov al, [bx + TX_TEXT]
    "84c0 740a"             # test al, al; jz stop
    "baf803 ee"             # out THR: one byte per interrupt
    "ff060030"              # inc word [TX_INDEX]
    "eb06"                  # jmp done
    "baf903 b000 ee"        # stop: IER = 0
    "b020 e620"             # done: EOI
    "5b 5a 58 cf"           # pop bx; pop dx; pop ax; iret
)


def test_guest_transmits_one_byte_per_thre_interrupt():
    text = b"interrupt-driven transmit, one byte per THRE edge\r\n"
    with TinyVm(irqchip=True) as t:
        sink = Sink()
        uart = Serial16550(sink=sink, irq=GsiLine(t.vm, COM1_IRQ))
        t.pio.insert(uart, COM1_BASE, REGISTER_COUNT)
        t.load(CODE, TX_MAIN)
        t.load(HANDLER, TX_HANDLER)
        t.memory.write(TX_INDEX, u16(0))
        t.memory.write(TX_TEXT, text + b"\0")
        t.memory.write(4 * VECTOR, u16(HANDLER) + u16(0))
        t.real_mode(t.vcpus[0])
        vcpu = Vcpu(t.vcpus[0], t.pio, t.mmio, memory=t.memory)
        vcpu.start()
        try:
            assert sink.wait_for(len(text)) == text, f"guest stalled: {bytes(sink.data)!r} {vcpu.result}"
        finally:
            vcpu.stop()
