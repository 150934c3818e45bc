"""The host console: escapes, raw mode through a pty, flow control, EOF, terminal restore."""

import os
import signal
import subprocess
import sys
import termios
import textwrap
import threading
import time

import pytest

from pyvmm.console import HELP_TEXT, EscapeFilter, HostConsole


class FakeSerial:
    """Takes at most ``capacity`` bytes until the 'guest' drains them."""

    def __init__(self, capacity=1 << 30):
        self.capacity = capacity
        self.fifo = bytearray()
        self.received = bytearray()
        self.listener = None
        self.refused = False
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)

    def set_rx_space_listener(self, listener):
        self.listener = listener

    def enqueue_input(self, data):
        with self.lock:
            room = self.capacity - len(self.fifo)
            taken = data[:room]
            self.fifo += taken
            self.refused = len(taken) < len(data)
            self.changed.notify_all()
            return len(taken)

    def guest_drain(self):
        with self.lock:
            self.received += self.fifo
            self.fifo.clear()
            notify, self.refused = self.refused, False
        if notify and self.listener:
            self.listener()

    def wait_for(self, n, timeout=10.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            before = len(self.received)
            self.guest_drain()
            if len(self.received) >= n:
                return bytes(self.received)
            if len(self.received) == before:
                time.sleep(0.001)
        return bytes(self.received)


def test_escape_filter():
    events = []
    f = EscapeFilter(on_quit=lambda: events.append("quit"), on_help=lambda: events.append("help"))
    assert f.feed(b"ab\x01") == b"ab"
    assert f.feed(b"\x01c") == b"\x01c"  # C-a C-a across two reads
    assert f.feed(b"\x01h\x01?") == b""
    assert f.feed(b"\x01zq") == b"q"  # unknown escape key is dropped
    assert events == ["help", "help"]
    assert f.feed(b"d\x01xe") == b"d"
    assert events[-1] == "quit" and f.quit


@pytest.fixture
def pty_console():
    master, slave = os.openpty()
    out_r, out_w = os.pipe()
    original = termios.tcgetattr(slave)
    quit_event = threading.Event()
    console = HostConsole(slave, out_w, on_quit=quit_event.set)
    serial = FakeSerial()
    yield console, serial, master, slave, out_r, original, quit_event
    console.stop()
    for fd in (master, slave, out_r, out_w):
        os.close(fd)


def test_raw_mode_escapes_and_restore(pty_console):
    console, serial, master, slave, out_r, original, quit_event = pty_console
    console.start(serial)
    attrs = termios.tcgetattr(slave)
    assert not attrs[3] & (termios.ECHO | termios.ICANON | termios.ISIG)
    os.write(master, b"ab\x03\x01\x01c\x01x")
    assert quit_event.wait(10)
    assert serial.wait_for(5) == b"ab\x03\x01c"  # Ctrl-C reaches the guest in raw mode
    console.stop()
    assert termios.tcgetattr(slave) == original


def test_help_goes_to_stdout(pty_console):
    console, serial, master, slave, out_r, original, quit_event = pty_console
    console.start(serial)
    os.write(master, b"\x01h")
    got = b""
    while len(got) < len(HELP_TEXT):
        got += os.read(out_r, 4096)
    assert got == HELP_TEXT
    assert not quit_event.is_set()


def test_output_and_log_file(tmp_path):
    out_r, out_w = os.pipe()
    in_r, in_w = os.pipe()
    log_path = tmp_path / "serial.log"
    console = HostConsole(in_r, out_w, on_quit=lambda: None, log_path=log_path)
    console.write_output(b"hello\r\n")
    assert os.read(out_r, 100) == b"hello\r\n"
    console.stop()
    assert log_path.read_bytes() == b"hello\r\n"
    for fd in (out_r, out_w, in_r, in_w):
        os.close(fd)


def test_pipe_input_is_not_escaped_and_eof_keeps_running():
    in_r, in_w = os.pipe()
    out_r, out_w = os.pipe()
    quits = []
    console = HostConsole(in_r, out_w, on_quit=lambda: quits.append(1))
    serial = FakeSerial()
    console.start(serial)
    os.write(in_w, b"x\x01x")
    os.close(in_w)  # EOF
    assert serial.wait_for(3) == b"x\x01x"
    time.sleep(0.1)
    assert console._thread.is_alive()  # EOF ended input, not the console
    assert quits == []
    console.write_output(b"still here")
    assert os.read(out_r, 100) == b"still here"
    console.stop()
    assert not console._thread.is_alive()
    for fd in (in_r, out_r, out_w):
        os.close(fd)


def test_pasted_burst_is_not_lost_when_fifo_is_full():
    in_r, in_w = os.pipe()
    out_r, out_w = os.pipe()
    console = HostConsole(in_r, out_w, on_quit=lambda: None)
    serial = FakeSerial(capacity=64)
    console.start(serial)
    burst = bytes((i * 7) % 256 for i in range(100_000))

    def paste():
        os.write(in_w, burst)  # more than a 64 KiB pipe holds: blocks until the console reads
        os.close(in_w)

    writer = threading.Thread(target=paste)
    writer.start()
    received = serial.wait_for(len(burst), timeout=60)
    writer.join(10)
    console.stop()
    assert received == burst
    for fd in (in_r, out_r, out_w):
        os.close(fd)


def test_closed_output_does_not_raise():
    in_r, in_w = os.pipe()
    out_r, out_w = os.pipe()
    os.close(out_r)
    console = HostConsole(in_r, out_w, on_quit=lambda: None)
    console.write_output(b"nobody reads this")  # EPIPE (SIGPIPE is ignored by Python)
    console.write_output(b"again")
    console.stop()
    for fd in (in_r, in_w, out_w):
        os.close(fd)


CHILD = textwrap.dedent(
    """
    import os, signal, sys, time
    from pyvmm.console import HostConsole

    class Serial:
        def set_rx_space_listener(self, listener): pass
        def enqueue_input(self, data): return len(data)

    if sys.argv[1] == "chain":
        signal.signal(signal.SIGTERM, lambda s, f: (print("previous handler ran", flush=True), sys.exit(3)))
    console = HostConsole(0, 1, on_quit=lambda: None)
    console.start(Serial())
    os.write(2, b"ready\\n")
    time.sleep(30)
    """
)


@pytest.mark.parametrize("mode", ["default", "chain"])
def test_terminal_restored_on_sigterm(mode):
    master, slave = os.openpty()
    original = termios.tcgetattr(slave)
    out_r, out_w = os.pipe()
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, mode], stdin=slave, stdout=out_w, stderr=subprocess.PIPE
    )
    os.close(out_w)
    try:
        assert child.stderr.readline() == b"ready\n"
        assert not termios.tcgetattr(slave)[3] & termios.ECHO
        child.send_signal(signal.SIGTERM)
        status = child.wait(10)
        assert termios.tcgetattr(slave) == original
        if mode == "chain":
            assert status == 3
            assert b"previous handler ran" in os.read(out_r, 1000)
        else:
            assert status == -signal.SIGTERM
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        for fd in (master, slave, out_r):
            os.close(fd)
