"""A 16550A UART (the PC's COM1: PIO 0x3f8-0x3ff, ISA IRQ 4) for the guest console.

Registers at offsets 0-7 (DLAB is LCR bit 7)::

    0  RBR (read) / THR (write)      DLL when DLAB=1
    1  IER                           DLM when DLAB=1
    2  IIR (read) / FCR (write)
    3  LCR   4 MCR   5 LSR   6 MSR   7 SCR

Transmission is instant: a THR write goes straight to the output sink, so THRE and TEMT
are always set again by the time the guest reads LSR. Reception comes from the host
through :meth:`Serial16550.enqueue_input`, which accepts only what fits in the receive
FIFO (16 bytes, or the 1-byte holding register when the FIFO is off) and returns how
much it took: the caller keeps the rest and retries when told there is room (see
:meth:`Serial16550.set_rx_space_listener`). Nothing the host types is dropped; an
overrun (LSR.OE) only happens in loopback mode, as on real hardware.

Interrupt line semantics (a design choice, documented here because it matters):
the UART computes its interrupt *condition* as hardware does (IIR priority order:
line status > received data / character timeout > THR empty > modem status) and drives
the injected line object with ``set_level(high)`` only when the condition changes. With
KVM's in-kernel IOAPIC/PIC and ISA IRQ 4 edge-triggered (MP table), each low->high
change is one interrupt, exactly what QEMU's hw/char/serial.c produces through
qemu_irq_raise/lower. Linux's 8250 handler loops on IIR until "no interrupt pending", so
one edge per rising condition is all it needs; a THR write drops the THRE condition and
raises it again when the byte has gone, giving the next edge (Firecracker's vm-superio
gets the same effect by kicking an irqfd on every THR write). For a line that only has
``trigger()`` (an irqfd), wrap it in :class:`pyvmm.legacy.irq.EdgeTriggerLine`;
for ``KVM_IRQ_LINE`` use :class:`pyvmm.legacy.irq.GsiLine`.

Loopback (MCR bit 4), which Linux's 8250 autoconfig uses to check for a real UART:
THR bytes go to the receive FIFO instead of the sink, and the modem outputs feed the
modem inputs (RTS->CTS, DTR->DSR, OUT1->RI, OUT2->DCD) with the MSR delta bits.
"""

from __future__ import annotations

import collections
import logging
import threading
from typing import BinaryIO, Callable

from pyvmm.legacy.irq import InterruptLine
from pyvmm.log import TRACE

log = logging.getLogger(__name__)

COM1_BASE = 0x3F8
COM1_IRQ = 4
REGISTER_COUNT = 8

# Register offsets.
RBR_THR = 0  # DLL when DLAB
IER = 1  # DLM when DLAB
IIR_FCR = 2
LCR = 3
MCR = 4
LSR = 5
MSR = 6
SCR = 7

IER_RDI = 0x01  # received data available
IER_THRI = 0x02  # THR empty
IER_RLSI = 0x04  # receiver line status
IER_MSI = 0x08  # modem status
IER_MASK = 0x0F

IIR_NO_INT = 0x01
IIR_MSI = 0x00
IIR_THRI = 0x02
IIR_RDI = 0x04
IIR_RLSI = 0x06
IIR_CTI = 0x0C  # character timeout (FIFO mode)
IIR_FIFO_ENABLED = 0xC0

FCR_ENABLE_FIFO = 0x01
FCR_CLEAR_RCVR = 0x02
FCR_CLEAR_XMIT = 0x04
FCR_TRIGGER_MASK = 0xC0
RX_TRIGGER_LEVELS = {0x00: 1, 0x40: 4, 0x80: 8, 0xC0: 14}

LCR_DLAB = 0x80

MCR_DTR = 0x01
MCR_RTS = 0x02
MCR_OUT1 = 0x04
MCR_OUT2 = 0x08
MCR_LOOP = 0x10
MCR_MASK = 0x1F

LSR_DR = 0x01
LSR_OE = 0x02
LSR_PE = 0x04
LSR_FE = 0x08
LSR_BI = 0x10
LSR_THRE = 0x20
LSR_TEMT = 0x40
LSR_FIFOE = 0x80
LSR_ERRORS = LSR_OE | LSR_PE | LSR_FE | LSR_BI

MSR_DCTS = 0x01
MSR_DDSR = 0x02
MSR_TERI = 0x04
MSR_DDCD = 0x08
MSR_CTS = 0x10
MSR_DSR = 0x20
MSR_RI = 0x40
MSR_DCD = 0x80
MSR_DELTAS = 0x0F
# Without loopback the "cable" reports a present, ready peer (as QEMU does).
MSR_CONNECTED = MSR_DCD | MSR_DSR | MSR_CTS

FIFO_SIZE = 16
DEFAULT_DIVISOR = 12  # 9600 baud from the 1.8432 MHz clock; only stored, never timed


def _sink_callable(sink: Callable[[bytes], object] | BinaryIO | None) -> Callable[[bytes], object]:
    if sink is None:
        return lambda data: None
    if callable(sink):
        return sink
    if hasattr(sink, "write"):

        def write_and_flush(data: bytes) -> None:
            sink.write(data)
            sink.flush()

        return write_and_flush
    raise TypeError(f"serial output sink must be callable or have write(): {sink!r}")


class Serial16550:
    """A 16550A UART on a bus (offsets 0-7).

    ``sink``: where transmitted bytes go: a callable taking ``bytes`` or a binary file
    (flushed per write); None discards them. Called from vCPU threads, outside the
    UART's lock, in transmit order.
    ``irq``: the interrupt line, an object with ``set_level(high: bool)``; None for a
    UART without an interrupt (polled console only).
    ``name``: used in log lines.
    """

    def __init__(
        self,
        sink: Callable[[bytes], object] | BinaryIO | None = None,
        irq: InterruptLine | None = None,
        name: str = "ttyS0",
    ):
        self.name = name
        self._sink = _sink_callable(sink)
        self._irq = irq
        self._lock = threading.Lock()
        self._tx_lock = threading.Lock()
        self._rx_space_listener: Callable[[], None] | None = None
        self._reset_state()

    def _reset_state(self) -> None:
        self._divisor = DEFAULT_DIVISOR
        self._ier = 0
        self._lcr = 0x03  # 8N1
        self._mcr = MCR_OUT2
        self._lsr = LSR_THRE | LSR_TEMT
        self._msr = MSR_CONNECTED
        self._scr = 0
        self._fcr = 0
        self._rx_fifo: collections.deque[int] = collections.deque()
        self._thr_pending = False
        self._irq_level = False
        self._rx_refused = False  # the host was told "full" and waits for room

    # ----- wiring -------------------------------------------------------------------

    def set_rx_space_listener(self, listener: Callable[[], None] | None) -> None:
        """``listener()`` is called (from a vCPU thread, outside the lock) when the receive
        FIFO has room again after :meth:`enqueue_input` refused bytes. It must not block."""
        self._rx_space_listener = listener

    @property
    def rx_capacity(self) -> int:
        """Bytes the receiver holds: the FIFO, or the single holding register without it."""
        return FIFO_SIZE if self._fcr & FCR_ENABLE_FIFO else 1

    # ----- host side ----------------------------------------------------------------

    def enqueue_input(self, data: bytes) -> int:
        """Offer host input; returns how many leading bytes were taken (the rest is the
        caller's to keep). Raises the received-data interrupt if enabled. Thread-safe.

        In loopback mode the receiver is disconnected from the outside world, as on
        real hardware: nothing is taken.
        """
        if not data:
            return 0
        with self._lock:
            if self._mcr & MCR_LOOP:
                self._rx_refused = True
                return 0
            room = self.rx_capacity - len(self._rx_fifo)
            taken = data[: max(room, 0)]
            self._rx_fifo.extend(taken)
            if len(taken) < len(data):
                self._rx_refused = True
            if taken:
                self._lsr |= LSR_DR
                self._update_irq()
            return len(taken)

    def rx_pending(self) -> int:
        """Bytes waiting in the receiver (for tests and diagnostics)."""
        with self._lock:
            return len(self._rx_fifo)

    # ----- bus side -----------------------------------------------------------------

    def read(self, offset: int, size: int) -> bytes:
        notify = False
        with self._lock:
            if offset >= REGISTER_COUNT:
                value = 0xFF
            else:
                value, notify = self._read_register(offset)
        if log.isEnabledFor(TRACE):
            log.log(TRACE, "%s read +%d = %#04x", self.name, offset, value)
        if notify:
            self._notify_rx_space()
        # Wider accesses than a byte are not meaningful on an 8-bit UART: repeat the byte.
        return bytes([value]) * size

    def write(self, offset: int, data: bytes) -> None:
        if not data or offset >= REGISTER_COUNT:
            return
        value = data[0]
        if log.isEnabledFor(TRACE):
            log.log(TRACE, "%s write +%d = %#04x", self.name, offset, value)
        transmit = None
        notify = False
        with self._lock:
            if offset == RBR_THR and not self._lcr & LCR_DLAB:
                transmit, notify = self._transmit(value)
                if transmit is not None:
                    # Taken before the state lock is released so bytes from several vCPUs
                    # leave in THR order; the sink runs without the state lock, so a slow
                    # host stdout never blocks input or register reads.
                    self._tx_lock.acquire()
            else:
                notify = self._write_register(offset, value)
        if transmit is not None:
            try:
                self._sink(transmit)
            except OSError as e:  # a closed stdout must not kill the vCPU thread
                log.warning("%s: output sink failed: %s", self.name, e)
            finally:
                self._tx_lock.release()
        if notify:
            self._notify_rx_space()

    # ----- register logic (lock held) -----------------------------------------------

    def _read_register(self, offset: int) -> tuple[int, bool]:
        dlab = self._lcr & LCR_DLAB
        if offset == RBR_THR:
            if dlab:
                return self._divisor & 0xFF, False
            return self._read_rbr()
        if offset == IER:
            if dlab:
                return (self._divisor >> 8) & 0xFF, False
            return self._ier, False
        if offset == IIR_FCR:
            iir = self._iir()
            if iir == IIR_THRI:
                # Reading IIR while THRE is the reported source acknowledges it.
                self._thr_pending = False
                self._update_irq()
            if self._fcr & FCR_ENABLE_FIFO:
                iir |= IIR_FIFO_ENABLED
            return iir, False
        if offset == LCR:
            return self._lcr, False
        if offset == MCR:
            return self._mcr, False
        if offset == LSR:
            value = self._lsr
            self._lsr &= ~(LSR_ERRORS | LSR_FIFOE)
            if value & LSR_ERRORS:
                self._update_irq()
            return value, False
        if offset == MSR:
            value = self._msr
            self._msr &= ~MSR_DELTAS
            if value & MSR_DELTAS:
                self._update_irq()
            return value, False
        return self._scr, False

    def _read_rbr(self) -> tuple[int, bool]:
        value = self._rx_fifo.popleft() if self._rx_fifo else 0
        if not self._rx_fifo:
            self._lsr &= ~LSR_DR
        self._update_irq()
        notify = self._rx_refused and len(self._rx_fifo) < self.rx_capacity
        if notify:
            self._rx_refused = False
        return value, notify

    def _transmit(self, value: int) -> tuple[bytes | None, bool]:
        """A THR write: the byte leaves at once, so THRE drops and rises again (one edge)."""
        self._thr_pending = False
        self._lsr &= ~(LSR_THRE | LSR_TEMT)
        self._update_irq()
        out = None
        if self._mcr & MCR_LOOP:
            self._loop_back(value)
        else:
            out = bytes([value])
        self._lsr |= LSR_THRE | LSR_TEMT
        if self._ier & IER_THRI:
            self._thr_pending = True
        self._update_irq()
        return out, False

    def _loop_back(self, value: int) -> None:
        if len(self._rx_fifo) >= self.rx_capacity:
            self._lsr |= LSR_OE
            return
        self._rx_fifo.append(value)
        self._lsr |= LSR_DR

    def _write_register(self, offset: int, value: int) -> bool:
        dlab = self._lcr & LCR_DLAB
        notify = False
        if offset == RBR_THR:  # DLAB: divisor latch low
            self._divisor = (self._divisor & 0xFF00) | value
        elif offset == IER:
            if dlab:
                self._divisor = (self._divisor & 0x00FF) | (value << 8)
            else:
                self._write_ier(value & IER_MASK)
        elif offset == IIR_FCR:
            notify = self._write_fcr(value)
        elif offset == LCR:
            self._lcr = value
        elif offset == MCR:
            notify = self._write_mcr(value & MCR_MASK)
        elif offset == SCR:
            self._scr = value
        # LSR and MSR are read-only: writes are ignored (factory test modes not modelled).
        return notify

    def _write_ier(self, value: int) -> None:
        newly_enabled = value & ~self._ier
        self._ier = value
        if not value & IER_THRI:
            self._thr_pending = False
        elif newly_enabled & IER_THRI and self._lsr & LSR_THRE:
            # Enabling THRI with an empty THR interrupts at once; Linux's 8250 startup
            # tests exactly this (UART_BUG_THRE / UART_BUG_TXEN).
            self._thr_pending = True
        self._update_irq()

    def _write_fcr(self, value: int) -> bool:
        enable_changed = (value ^ self._fcr) & FCR_ENABLE_FIFO
        clear_rx = enable_changed or value & FCR_CLEAR_RCVR
        # The trigger level and enable bit are remembered; the clear bits self-clear.
        self._fcr = value & (FCR_ENABLE_FIFO | FCR_TRIGGER_MASK)
        if clear_rx:
            self._rx_fifo.clear()
            self._lsr &= ~LSR_DR
        self._update_irq()
        notify = self._rx_refused and len(self._rx_fifo) < self.rx_capacity
        if notify:
            self._rx_refused = False
        return notify

    def _write_mcr(self, value: int) -> bool:
        was_loop = self._mcr & MCR_LOOP
        self._mcr = value
        notify = False
        if value & MCR_LOOP:
            self._set_modem_inputs(self._loopback_msr(value))
        elif was_loop:
            self._set_modem_inputs(MSR_CONNECTED)
            # The receiver is connected to the host again: let waiting input in.
            notify = self._rx_refused
            self._rx_refused = False
        self._update_irq()
        return notify

    @staticmethod
    def _loopback_msr(mcr: int) -> int:
        msr = 0
        if mcr & MCR_RTS:
            msr |= MSR_CTS
        if mcr & MCR_DTR:
            msr |= MSR_DSR
        if mcr & MCR_OUT1:
            msr |= MSR_RI
        if mcr & MCR_OUT2:
            msr |= MSR_DCD
        return msr

    def _set_modem_inputs(self, lines: int) -> None:
        old = self._msr
        deltas = old & MSR_DELTAS
        changed = (old ^ lines) & 0xF0
        if changed & MSR_CTS:
            deltas |= MSR_DCTS
        if changed & MSR_DSR:
            deltas |= MSR_DDSR
        if changed & MSR_DCD:
            deltas |= MSR_DDCD
        if old & MSR_RI and not lines & MSR_RI:  # trailing edge of ring indicator
            deltas |= MSR_TERI
        self._msr = lines | deltas

    def _iir(self) -> int:
        """The highest-priority pending interrupt (IIR bits 3:0)."""
        ier = self._ier
        if ier & IER_RLSI and self._lsr & LSR_ERRORS:
            return IIR_RLSI
        if ier & IER_RDI and self._rx_fifo:
            if self._fcr & FCR_ENABLE_FIFO:
                trigger = RX_TRIGGER_LEVELS[self._fcr & FCR_TRIGGER_MASK]
                # Below the trigger level real hardware waits 4 character times and then
                # reports a timeout; the host cannot tell the difference, so report it now.
                return IIR_RDI if len(self._rx_fifo) >= trigger else IIR_CTI
            return IIR_RDI
        if ier & IER_THRI and self._thr_pending:
            return IIR_THRI
        if ier & IER_MSI and self._msr & MSR_DELTAS:
            return IIR_MSI
        return IIR_NO_INT

    def _update_irq(self) -> None:
        level = self._iir() != IIR_NO_INT
        if level != self._irq_level:
            self._irq_level = level
            if self._irq is not None:
                self._irq.set_level(level)

    def _notify_rx_space(self) -> None:
        listener = self._rx_space_listener
        if listener is not None:
            listener()

    def __repr__(self) -> str:
        return f"Serial16550({self.name})"
