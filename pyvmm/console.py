"""The host side of the guest's serial console: host terminal <-> guest UART.

Guest output (the UART's sink) goes to the host's stdout unbuffered and in binary, and
optionally to a log file. Host input is read by one thread and fed to the UART with flow
control: the UART takes what fits in its FIFO (:meth:`Serial16550.enqueue_input`), the
rest stays queued here until the UART says it has room, so a pasted burst is not lost.

When stdin is a terminal it is put in raw mode (every key, Ctrl-C included, goes to the
guest) and restored on every way out: :meth:`HostConsole.stop`, the context manager,
``atexit``, and SIGTERM/SIGHUP/SIGQUIT (the handler restores the terminal, then defers to
the previous handler). ``Ctrl-A`` is an escape as in QEMU: ``Ctrl-A x`` quits (reported
through ``on_quit``), ``Ctrl-A Ctrl-A`` sends one Ctrl-A, ``Ctrl-A h`` or ``?`` prints
help; other keys after Ctrl-A are dropped. When stdin is not a terminal the bytes pass
through untouched and EOF only ends input, never the VM.

Wiring::

    console = HostConsole(on_quit=vm.request_stop, log_path=serial_log)
    serial = Serial16550(sink=console.write_output, irq=irq4)
    console.start(serial)      # raw mode + input thread
    ...
    console.stop()             # before the VMM exits (also before os._exit)
"""

from __future__ import annotations

import atexit
import logging
import os
import select
import signal
import sys
import termios
import threading
import tty
from typing import Callable, Protocol

log = logging.getLogger(__name__)

ESCAPE = 0x01  # Ctrl-A
QUIT_KEY = ord("x")
HELP_KEYS = (ord("h"), ord("?"))
HELP_TEXT = (
    b"\r\n"
    b"C-a h    print this help\r\n"
    b"C-a x    exit the VMM\r\n"
    b"C-a C-a  send C-a to the guest\r\n"
)
READ_CHUNK = 4096
MAX_PENDING_INPUT = 1 << 20  # host-side queue limit; past it stdin is not read (pipes only)
RESTORE_SIGNALS = (signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)


class SerialInput(Protocol):
    """What the console needs from the UART (see :class:`pyvmm.legacy.serial.Serial16550`)."""

    def enqueue_input(self, data: bytes) -> int: ...

    def set_rx_space_listener(self, listener: Callable[[], None] | None) -> None: ...


class EscapeFilter:
    """QEMU-style ``Ctrl-A`` escape handling on the input byte stream.

    :meth:`feed` returns the bytes meant for the guest; the escape state survives
    between calls (Ctrl-A and its key may arrive in different reads).
    """

    def __init__(self, on_quit: Callable[[], None], on_help: Callable[[], None]):
        self._on_quit = on_quit
        self._on_help = on_help
        self._escaped = False
        self.quit = False

    def feed(self, data: bytes) -> bytes:
        out = bytearray()
        for byte in data:
            if self.quit:
                break
            if self._escaped:
                self._escaped = False
                if byte == ESCAPE:
                    out.append(ESCAPE)
                elif byte == QUIT_KEY:
                    self.quit = True
                    self._on_quit()
                elif byte in HELP_KEYS:
                    self._on_help()
            elif byte == ESCAPE:
                self._escaped = True
            else:
                out.append(byte)
        return bytes(out)


class HostConsole:
    """Connects the host's stdin/stdout to a guest UART.

    ``stdin_fd``/``stdout_fd``: host descriptors (not closed by the console).
    ``on_quit()``: the user typed Ctrl-A x; called on the input thread.
    ``log_path``: also copy guest output to this file (truncated at start).
    ``raw``/``escapes``: default to whether stdin is a terminal.
    """

    def __init__(
        self,
        stdin_fd: int = 0,
        stdout_fd: int = 1,
        *,
        on_quit: Callable[[], None],
        log_path: str | os.PathLike | None = None,
        raw: bool | None = None,
        escapes: bool | None = None,
    ):
        self._stdin_fd = stdin_fd
        self._stdout_fd = stdout_fd
        is_tty = os.isatty(stdin_fd)
        self._raw = is_tty if raw is None else raw
        self._escapes = is_tty if escapes is None else escapes
        self._on_quit = on_quit
        self._log_file = open(log_path, "wb", buffering=0) if log_path is not None else None
        self._out_lock = threading.Lock()
        self._output_broken = False
        self._saved_termios = None
        self._prev_handlers: dict[int, object] = {}
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        self._escape_filter = EscapeFilter(self._quit, self._print_help)
        self._serial: SerialInput | None = None

    # ----- output -------------------------------------------------------------------

    def write_output(self, data: bytes) -> None:
        """The UART's sink: guest bytes to stdout (and the log). Never raises."""
        with self._out_lock:
            if self._log_file is not None:
                try:
                    self._log_file.write(data)
                except OSError as e:
                    log.warning("serial log write failed, log closed: %s", e)
                    self._log_file = None
            if not self._output_broken:
                try:
                    _write_all(self._stdout_fd, data)
                except OSError as e:
                    # The reader went away: the guest keeps running, its output is dropped.
                    log.warning("console output failed, guest output dropped from now on: %s", e)
                    self._output_broken = True

    # ----- lifecycle ----------------------------------------------------------------

    def start(self, serial: SerialInput) -> None:
        """Enter raw mode (if a terminal) and start feeding stdin to ``serial``."""
        self._serial = serial
        serial.set_rx_space_listener(self._wake)
        if self._raw:
            self._enter_raw_mode()
        self._thread = threading.Thread(target=self._input_loop, name="console-input", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop reading input, restore the terminal, close the log. Idempotent."""
        self._stopping.set()
        self._wake()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=2.0)
            if not self._thread.is_alive() and self._wake_r >= 0:
                os.close(self._wake_r)
                os.close(self._wake_w)
                self._wake_r = self._wake_w = -1
        self.restore_terminal()
        if self._serial is not None:
            self._serial.set_rx_space_listener(None)
        with self._out_lock:
            if self._log_file is not None:
                self._log_file.close()
                self._log_file = None

    def __enter__(self) -> HostConsole:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # ----- terminal -----------------------------------------------------------------

    def _enter_raw_mode(self) -> None:
        self._saved_termios = termios.tcgetattr(self._stdin_fd)
        atexit.register(self.restore_terminal)
        if threading.current_thread() is threading.main_thread():
            for signum in RESTORE_SIGNALS:
                self._prev_handlers[signum] = signal.signal(signum, self._on_signal)
        tty.setraw(self._stdin_fd, termios.TCSADRAIN)
        log.debug("console: stdin in raw mode; C-a x quits, C-a h for help")

    def restore_terminal(self) -> None:
        """Put the terminal back as it was (safe to call more than once, from anywhere)."""
        saved, self._saved_termios = self._saved_termios, None
        if saved is None:
            return
        try:
            termios.tcsetattr(self._stdin_fd, termios.TCSADRAIN, saved)
        except (termios.error, OSError) as e:
            log.debug("console: terminal restore failed: %s", e)
        if threading.current_thread() is threading.main_thread():
            for signum, handler in self._prev_handlers.items():
                if signal.getsignal(signum) == self._on_signal:
                    signal.signal(signum, handler)
            self._prev_handlers.clear()

    def _on_signal(self, signum, frame) -> None:
        prev = self._prev_handlers.get(signum, signal.SIG_DFL)
        self.restore_terminal()
        if callable(prev):
            prev(signum, frame)
        elif prev != signal.SIG_IGN:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)

    # ----- input --------------------------------------------------------------------

    def _wake(self) -> None:
        if self._wake_w < 0:
            return
        try:
            os.write(self._wake_w, b"\0")
        except (BlockingIOError, OSError):
            pass  # already awake (pipe full) or shutting down

    def _quit(self) -> None:
        log.info("console: C-a x, stopping")
        self._on_quit()

    def _print_help(self) -> None:
        self.write_output(HELP_TEXT)

    def _input_loop(self) -> None:
        pending = bytearray()
        stdin_open = _is_open(self._stdin_fd)
        serial = self._serial
        try:
            while not self._stopping.is_set():
                if pending:
                    del pending[: serial.enqueue_input(bytes(pending))]
                read_stdin = stdin_open and len(pending) < MAX_PENDING_INPUT
                fds = [self._wake_r] + ([self._stdin_fd] if read_stdin else [])
                # The timeout is a safety net only: the UART wakes us when it has room.
                ready, _, _ = select.select(fds, [], [], 1.0 if pending else None)
                if self._wake_r in ready:
                    os.read(self._wake_r, 4096)
                if self._stdin_fd in ready:
                    data = self._read_stdin()
                    if data is None:
                        stdin_open = False
                        log.debug("console: stdin closed; the guest keeps running without input")
                        continue
                    if self._escapes:
                        data = self._escape_filter.feed(data)
                    pending += data
                    if self._escape_filter.quit:
                        serial.enqueue_input(bytes(pending))  # what was typed before C-a x
                        return
        except Exception:
            log.exception("console input thread failed")

    def _read_stdin(self) -> bytes | None:
        """One read from stdin; None at EOF (or when a pty's other side went away)."""
        try:
            data = os.read(self._stdin_fd, READ_CHUNK)
        except BlockingIOError:
            return b""
        except OSError:  # EIO from a pty whose master closed
            return None
        return data or None


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        log.debug("console: no stdin (fd %d closed); no guest input", fd)
        return False
    return True


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            n = os.write(fd, view)
        except BlockingIOError:
            select.select([], [fd], [])
            continue
        view = view[n:]


def stdio_console(on_quit: Callable[[], None], log_path=None) -> HostConsole:
    """A console on this process's stdin/stdout (what ``pyvmm run`` uses)."""
    if sys.stdout is not None:
        sys.stdout.flush()  # anything Python buffered goes out before the guest's bytes
    return HostConsole(0, 1, on_quit=on_quit, log_path=log_path)
