"""16550A register behaviour, driven the way Linux's 8250 driver drives it."""

import threading

import pytest

from pyvmm.legacy import serial as s
from pyvmm.legacy.irq import EdgeTriggerLine
from pyvmm.legacy.serial import Serial16550


class FakeLine:
    def __init__(self):
        self.levels = []

    def set_level(self, high):
        self.levels.append(high)

    @property
    def level(self):
        return self.levels[-1] if self.levels else False


@pytest.fixture
def uart():
    out = bytearray()
    line = FakeLine()
    dev = Serial16550(sink=out.extend, irq=line)
    dev.out = out
    dev.line = line
    return dev


def rd(dev, reg):
    return dev.read(reg, 1)[0]


def wr(dev, reg, value):
    dev.write(reg, bytes([value]))


def test_reset_state(uart):
    assert rd(uart, s.LSR) == s.LSR_THRE | s.LSR_TEMT
    assert rd(uart, s.IIR_FCR) == s.IIR_NO_INT
    assert rd(uart, s.IER) == 0
    assert rd(uart, s.MSR) & 0xF0 == s.MSR_DCD | s.MSR_DSR | s.MSR_CTS
    assert not uart.line.level


def test_transmit_goes_to_sink(uart):
    for b in b"hi\n":
        wr(uart, s.RBR_THR, b)
    assert bytes(uart.out) == b"hi\n"
    assert rd(uart, s.LSR) & (s.LSR_THRE | s.LSR_TEMT) == s.LSR_THRE | s.LSR_TEMT


def test_file_sink(tmp_path):
    path = tmp_path / "out"
    with open(path, "wb") as f:
        dev = Serial16550(sink=f)
        wr(dev, s.RBR_THR, ord("x"))
        assert path.read_bytes() == b"x"  # flushed per write


def test_dlab_divisor_latch(uart):
    wr(uart, s.LCR, 0x83)
    wr(uart, s.RBR_THR, 0x01)  # DLL
    wr(uart, s.IER, 0x02)  # DLM
    assert rd(uart, s.RBR_THR) == 0x01
    assert rd(uart, s.IER) == 0x02
    assert uart.out == b""  # not transmitted
    wr(uart, s.LCR, 0x03)
    assert rd(uart, s.IER) == 0  # IER untouched by the DLM write
    assert rd(uart, s.LCR) == 0x03
    wr(uart, s.LCR, 0x83)
    assert rd(uart, s.RBR_THR) | rd(uart, s.IER) << 8 == 0x0201


def test_ier_keeps_low_nibble_only(uart):
    # 8250 autoconfig writes 0x0f and expects 0x0f back.
    wr(uart, s.IER, 0xFF)
    assert rd(uart, s.IER) == 0x0F


def test_scratch(uart):
    wr(uart, s.SCR, 0xA5)
    assert rd(uart, s.SCR) == 0xA5


def test_thre_interrupt_on_ier_enable(uart):
    wr(uart, s.IER, s.IER_THRI)
    assert uart.line.level
    assert rd(uart, s.IIR_FCR) == s.IIR_THRI
    # Reading IIR acknowledged THRE.
    assert not uart.line.level
    assert rd(uart, s.IIR_FCR) == s.IIR_NO_INT


def test_thr_write_gives_a_new_edge(uart):
    wr(uart, s.IER, s.IER_THRI)
    rd(uart, s.IIR_FCR)
    uart.line.levels.clear()
    wr(uart, s.RBR_THR, ord("a"))
    assert uart.line.levels == [True]
    wr(uart, s.RBR_THR, ord("b"))
    assert uart.line.levels == [True, False, True]


def test_disabling_thri_drops_line(uart):
    wr(uart, s.IER, s.IER_THRI)
    assert uart.line.level
    wr(uart, s.IER, 0)
    assert not uart.line.level
    assert rd(uart, s.IIR_FCR) == s.IIR_NO_INT


def test_rda_level_follows_data(uart):
    wr(uart, s.IER, s.IER_RDI)
    assert not uart.line.level
    assert uart.enqueue_input(b"k") == 1
    assert uart.line.level
    assert rd(uart, s.LSR) & s.LSR_DR
    assert rd(uart, s.IIR_FCR) == s.IIR_RDI
    assert uart.line.level  # reading IIR does not acknowledge received data
    assert rd(uart, s.RBR_THR) == ord("k")
    assert not uart.line.level
    assert not rd(uart, s.LSR) & s.LSR_DR


def test_rda_without_ier_does_not_interrupt(uart):
    uart.enqueue_input(b"k")
    assert not uart.line.levels
    assert rd(uart, s.IIR_FCR) == s.IIR_NO_INT
    wr(uart, s.IER, s.IER_RDI)
    assert uart.line.level


def test_iir_priority_rda_over_thre(uart):
    wr(uart, s.IER, s.IER_RDI | s.IER_THRI)
    uart.enqueue_input(b"z")
    assert rd(uart, s.IIR_FCR) == s.IIR_RDI
    rd(uart, s.RBR_THR)
    assert rd(uart, s.IIR_FCR) == s.IIR_THRI  # THRE was not lost behind RDA
    assert rd(uart, s.IIR_FCR) == s.IIR_NO_INT


def test_line_status_interrupt_on_overrun_has_top_priority(uart):
    wr(uart, s.MCR, s.MCR_LOOP)
    wr(uart, s.IER, s.IER_RLSI | s.IER_RDI | s.IER_THRI)
    wr(uart, s.RBR_THR, 1)  # holding register (no FIFO) full
    wr(uart, s.RBR_THR, 2)  # overrun
    assert rd(uart, s.IIR_FCR) == s.IIR_RLSI
    lsr = rd(uart, s.LSR)
    assert lsr & s.LSR_OE and lsr & s.LSR_DR
    assert not rd(uart, s.LSR) & s.LSR_OE  # cleared by reading
    assert rd(uart, s.IIR_FCR) == s.IIR_RDI
    assert rd(uart, s.RBR_THR) == 1


def test_modem_status_interrupt_lowest_priority(uart):
    wr(uart, s.MCR, s.MCR_LOOP)  # all modem inputs drop
    assert rd(uart, s.MSR) == s.MSR_DDCD | s.MSR_DDSR | s.MSR_DCTS
    assert rd(uart, s.MSR) == 0  # deltas cleared by reading
    wr(uart, s.IER, s.IER_MSI | s.IER_THRI)
    wr(uart, s.MCR, s.MCR_LOOP | s.MCR_RTS)  # CTS rises -> delta
    assert rd(uart, s.IIR_FCR) == s.IIR_THRI
    assert rd(uart, s.IIR_FCR) == s.IIR_MSI
    assert rd(uart, s.MSR) == s.MSR_CTS | s.MSR_DCTS
    assert rd(uart, s.IIR_FCR) == s.IIR_NO_INT
    assert not uart.line.level


def test_loopback_probe_as_linux_does(uart):
    # drivers/tty/serial/8250/8250_port.c autoconfig: MCR = LOOP | OUT2 | RTS, MSR & 0xf0 == 0x90
    wr(uart, s.MCR, s.MCR_LOOP | 0x0A)
    assert rd(uart, s.MSR) & 0xF0 == 0x90
    wr(uart, s.MCR, s.MCR_LOOP | s.MCR_DTR | s.MCR_OUT1)
    assert rd(uart, s.MSR) & 0xF0 == s.MSR_DSR | s.MSR_RI


def test_loopback_data_and_deltas(uart):
    wr(uart, s.MCR, s.MCR_LOOP | s.MCR_OUT1)
    wr(uart, s.RBR_THR, 0x42)
    assert uart.out == b""  # nothing leaves in loopback
    assert rd(uart, s.LSR) & s.LSR_DR
    assert rd(uart, s.RBR_THR) == 0x42
    rd(uart, s.MSR)
    wr(uart, s.MCR, s.MCR_LOOP)  # RI falls
    assert rd(uart, s.MSR) & s.MSR_TERI
    assert uart.enqueue_input(b"x") == 0  # receiver is disconnected from the host
    wr(uart, s.MCR, s.MCR_OUT2)
    assert rd(uart, s.MSR) & 0xF0 == s.MSR_DCD | s.MSR_DSR | s.MSR_CTS
    wr(uart, s.RBR_THR, 0x43)
    assert uart.out == b"\x43"


def test_fifo_enable_reported_in_iir_and_capacity(uart):
    assert uart.enqueue_input(b"abc") == 1  # one holding register without FIFO
    wr(uart, s.IIR_FCR, s.FCR_ENABLE_FIFO)
    assert rd(uart, s.IIR_FCR) & 0xC0 == 0xC0  # 16550A signature the 8250 driver tests
    assert uart.rx_pending() == 0  # enabling the FIFO resets it
    assert uart.enqueue_input(bytes(range(20))) == s.FIFO_SIZE
    assert bytes(rd(uart, s.RBR_THR) for _ in range(16)) == bytes(range(16))
    assert not rd(uart, s.LSR) & s.LSR_DR
    wr(uart, s.IIR_FCR, 0)
    assert rd(uart, s.IIR_FCR) & 0xC0 == 0


def test_fifo_clear_receiver(uart):
    wr(uart, s.IIR_FCR, s.FCR_ENABLE_FIFO)
    uart.enqueue_input(b"abcd")
    wr(uart, s.IIR_FCR, s.FCR_ENABLE_FIFO | s.FCR_CLEAR_RCVR)
    assert uart.rx_pending() == 0
    assert not rd(uart, s.LSR) & s.LSR_DR


def test_fifo_trigger_level_and_timeout(uart):
    wr(uart, s.IIR_FCR, s.FCR_ENABLE_FIFO | 0x80)  # trigger at 8
    wr(uart, s.IER, s.IER_RDI)
    uart.enqueue_input(b"abc")
    assert rd(uart, s.IIR_FCR) & 0x0F == s.IIR_CTI
    uart.enqueue_input(b"defgh")
    assert rd(uart, s.IIR_FCR) & 0x0F == s.IIR_RDI
    assert uart.line.level


def test_input_flow_control_and_space_listener(uart):
    wakeups = []
    uart.set_rx_space_listener(lambda: wakeups.append(1))
    wr(uart, s.IIR_FCR, s.FCR_ENABLE_FIFO)
    data = bytes(range(40))
    taken = uart.enqueue_input(data)
    assert taken == 16
    assert not wakeups
    got = bytes([rd(uart, s.RBR_THR)])
    assert wakeups == [1]
    rest = data[taken:]
    while rest or rd(uart, s.LSR) & s.LSR_DR:
        rest = rest[uart.enqueue_input(rest):]
        got += bytes([rd(uart, s.RBR_THR)])
    assert got == data  # nothing lost, order kept


def test_no_irq_line_is_fine():
    dev = Serial16550()
    wr(dev, s.IER, 0x0F)
    dev.enqueue_input(b"a")
    assert rd(dev, s.IIR_FCR) == s.IIR_RDI


def test_edge_trigger_adapter():
    class Edge:
        n = 0

        def trigger(self):
            self.n += 1

    edge = Edge()
    dev = Serial16550(irq=EdgeTriggerLine(edge))
    wr(dev, s.IER, s.IER_THRI)
    assert edge.n == 1
    wr(dev, s.RBR_THR, 0x41)
    assert edge.n == 2


def test_out_of_range_and_empty_access(uart):
    assert uart.read(8, 1) == b"\xff"
    uart.write(3, b"")
    assert rd(uart, s.LCR) == 0x03


def test_concurrent_writers_and_input(uart):
    wr(uart, s.IIR_FCR, s.FCR_ENABLE_FIFO)
    wr(uart, s.IER, s.IER_RDI | s.IER_THRI)
    received = bytearray()
    payload = bytes(i % 251 for i in range(3000))

    def vcpu():
        for _ in range(3000):
            wr(uart, s.RBR_THR, 0x2E)

    def console():
        rest = payload
        while rest:
            rest = rest[uart.enqueue_input(rest):]

    threads = [threading.Thread(target=vcpu), threading.Thread(target=console)]
    for t in threads:
        t.start()
    while len(received) < len(payload):
        if rd(uart, s.LSR) & s.LSR_DR:
            received.append(rd(uart, s.RBR_THR))
    for t in threads:
        t.join()
    assert bytes(received) == payload
    assert len(uart.out) == 3000
