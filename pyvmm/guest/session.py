"""Boot a guest once, run many shell commands in it over its serial console (for tests).

The VMM runs as a subprocess whose stdin/stdout are the guest console (pipes, or a pty
with ``use_pty=True`` so the VMM's raw-terminal path is used). Every console line is
recorded with its time. After ``pyvmm-init: session-ready`` the guest's /init runs a shell
with echo off and an empty prompt; :meth:`GuestSession.run` sends a command framed by
two markers printed with ``printf``, the second carrying ``$?``, and returns what was
printed between them::

    with GuestSession.start([sys.executable, "-m", "pyvmm", "run", ...], timeout=120) as g:
        r = g.run("cat /proc/asound/cards", timeout=30)
        assert r.status == 0, r.output

Commands run in the guest shell itself (``cd`` and variables persist) with stdin from
/dev/null, so a command reading stdin cannot swallow the end marker. Console output is
text: CR LF (and stray CRs at line ends) become LF, invalid UTF-8 is replaced. Kernel
messages printed while a command runs land in its output. The guest tty reads in
canonical mode, so keep each command line under 4095 bytes (put long data in a file).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import signal
import subprocess
import threading
import time
import uuid

log = logging.getLogger(__name__)

READY_LINE = "pyvmm-init: session-ready"
SHUTDOWN_COMMAND = "reboot -f"
RECENT_LINES = 40
# Sent once after the ready line: no continuation prompt inside run()'s multi-line framing.
SHELL_SETUP = "PS1=''; PS2=''"


class SessionError(Exception):
    """The guest session failed; the message carries the recent console output."""


class SessionTimeout(SessionError):
    pass


class SessionClosed(SessionError):
    """The VMM exited (or closed its console) while the session waited for it."""


@dataclasses.dataclass(frozen=True)
class CommandResult:
    output: str
    status: int


class GuestSession:
    """A running VMM with a shell on its console. Create with :meth:`start`."""

    def __init__(self, process: subprocess.Popen, console_fd: int, started: float):
        self.process = process
        self.lines: list[tuple[float, str]] = []  # (seconds since start, text)
        self.stderr_lines: list[str] = []
        self._console_fd = console_fd  # read and written; a pipe pair is two fds
        self._write_fd = console_fd
        self._started = started
        self._partial = bytearray()
        self._cond = threading.Condition()
        self._eof = False
        self._threads: list[threading.Thread] = []
        self._closed = False

    # ----- start-up -----------------------------------------------------------------

    @classmethod
    def start(
        cls,
        argv: list[str],
        timeout: float,
        env: dict[str, str] | None = None,
        *,
        use_pty: bool = False,
        ready_pattern: str = re.escape(READY_LINE),
        shell_setup: str | None = SHELL_SETUP,
    ) -> GuestSession:
        """Spawn ``argv`` (the VMM command line, used as given) and wait up to ``timeout``
        seconds for a console line matching ``ready_pattern``, then send ``shell_setup``
        (None: nothing; e.g. to drive the interactive shell by hand with :meth:`send` and
        :meth:`wait_for`). On failure the VMM is stopped and the error carries its recent
        output."""
        started = time.monotonic()
        if use_pty:
            master, slave = os.openpty()
            try:
                process = subprocess.Popen(
                    argv, stdin=slave, stdout=slave, stderr=subprocess.PIPE, env=env, start_new_session=True
                )
            except BaseException:
                os.close(master)
                raise
            finally:
                os.close(slave)
            session = cls(process, master, started)
        else:
            process = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=env,
                bufsize=0,
                start_new_session=True,
            )
            session = cls(process, process.stdout.fileno(), started)
            session._write_fd = process.stdin.fileno()
        session._start_readers()
        try:
            session._wait_line(re.compile(ready_pattern), timeout, 0, "the guest's ready line", timeout)
            if shell_setup:
                session.send(shell_setup + "\n")
        except BaseException:
            session.close(timeout=0, shutdown_command=None)
            raise
        return session

    def _start_readers(self) -> None:
        for target, name in ((self._read_console, "session-console"), (self._read_stderr, "session-stderr")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    # ----- console recording --------------------------------------------------------

    def _read_console(self) -> None:
        while True:
            try:
                data = os.read(self._console_fd, 65536)
            except OSError:  # EIO: the pty's slave side is gone
                data = b""
            with self._cond:
                if not data:
                    if self._partial:
                        self._add_line(bytes(self._partial))
                        self._partial.clear()
                    self._eof = True
                    self._cond.notify_all()
                    return
                self._partial += data
                *complete, rest = self._partial.split(b"\n")
                for raw in complete:
                    self._add_line(raw)
                self._partial = bytearray(rest)
                self._cond.notify_all()

    def _add_line(self, raw: bytes) -> None:
        text = raw.rstrip(b"\r").decode("utf-8", errors="replace")
        self.lines.append((time.monotonic() - self._started, text))
        log.debug("guest: %s", text)

    def _read_stderr(self) -> None:
        for raw in iter(self.process.stderr.readline, b""):
            text = raw.rstrip(b"\r\n").decode("utf-8", errors="replace")
            with self._cond:
                self.stderr_lines.append(text)
            log.debug("vmm stderr: %s", text)

    # ----- waiting ------------------------------------------------------------------

    def wait_for(
        self, pattern: str | re.Pattern, timeout: float, since: int = 0, partial: bool = False
    ) -> re.Match:
        """Wait until a console line at index >= ``since`` matches ``pattern``
        (``re.search``); return the match. ``partial``: also try the unfinished last line
        (a prompt), which may match before the rest of the line has arrived. Raises
        SessionTimeout or SessionClosed with the recent output."""
        regex = re.compile(pattern)
        _, match = self._wait_line(regex, timeout, since, f"{regex.pattern!r}", timeout, partial)
        return match

    def _wait_line(
        self, regex: re.Pattern, timeout: float, since: int, what: str, budget: float, partial: bool = False
    ) -> tuple[int, re.Match]:
        """The first line from ``since`` matching ``regex``, within ``timeout`` seconds;
        ``budget`` is the caller's whole timeout, for the error message."""
        deadline = time.monotonic() + timeout
        checked = since
        with self._cond:
            while True:
                for index in range(checked, len(self.lines)):
                    match = regex.search(self.lines[index][1])
                    if match:
                        return index, match
                checked = max(checked, len(self.lines))
                if partial and self._partial:
                    match = regex.search(self._partial.decode("utf-8", errors="replace").rstrip("\r"))
                    if match:
                        return len(self.lines), match
                if self._eof:
                    raise SessionClosed(self._describe(f"console closed while waiting for {what}"))
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise SessionTimeout(self._describe(f"timed out after {budget:g} s waiting for {what}"))
                self._cond.wait(remaining)

    # ----- commands -----------------------------------------------------------------

    def send(self, text: str | bytes) -> None:
        """Write raw input to the guest console."""
        data = text.encode() if isinstance(text, str) else text
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self._write_fd, view):]
        except OSError as e:
            raise SessionClosed(self._describe(f"cannot write to the guest console ({e})")) from e

    def run(self, cmd: str, timeout: float) -> CommandResult:
        """Run ``cmd`` in the guest shell; return its output (LF line ends) and exit status."""
        token = "PYVMM" + uuid.uuid4().hex[:16]
        begin = re.compile(rf"^{token}-begin$")
        end = re.compile(rf"^{token}-end:(\d+)$")
        with self._cond:
            since = len(self.lines)
        deadline = time.monotonic() + timeout
        # The end marker starts with a newline so it is on a line of its own even when the
        # output does not end with one; that newline is taken off again below.
        self.send(
            f"printf '%s\\n' {token}-begin\n"
            f"{{\n{cmd}\n}} </dev/null\n"
            f"printf '\\n%s:%d\\n' {token}-end $?\n"
        )
        what = f"the end of command {cmd!r}"
        first, _ = self._wait_line(begin, timeout, since, what, timeout)
        last, match = self._wait_line(end, max(deadline - time.monotonic(), 0), first + 1, what, timeout)
        with self._cond:
            body = [text for _, text in self.lines[first + 1 : last]]
        output = "\n".join(body)
        return CommandResult(output=output, status=int(match.group(1)))

    def check(self, cmd: str, timeout: float) -> str:
        """Like :meth:`run`, but a non-zero status raises SessionError; returns the output."""
        result = self.run(cmd, timeout)
        if result.status != 0:
            raise SessionError(f"guest command {cmd!r} exited with status {result.status}:\n{result.output}")
        return result.output

    # ----- shutdown -----------------------------------------------------------------

    @property
    def returncode(self) -> int | None:
        return self.process.poll()

    def close(self, timeout: float = 30.0, shutdown_command: str | None = SHUTDOWN_COMMAND) -> int:
        """Ask the guest to shut down (``reboot -f``), wait up to ``timeout`` s, then
        terminate and kill the VMM. Always bounded; returns the VMM's exit status."""
        if self._closed:
            return self.process.returncode
        self._closed = True
        if shutdown_command and self.process.poll() is None:
            try:
                self.send(shutdown_command + "\n")
            except SessionClosed:
                pass
        if self.process.stdin is not None:
            try:
                self.process.stdin.close()  # no more input: EOF (the VMM itself keeps running)
            except OSError:
                pass
        status = self._wait_exit(timeout)
        if status is None:
            if shutdown_command:
                log.warning("guest session: VMM did not exit in %g s, terminating it", timeout)
            self._signal_group(signal.SIGTERM)
            status = self._wait_exit(5.0)
        if status is None:
            self._signal_group(signal.SIGKILL)
            status = self._wait_exit(5.0)
        self._close_fds()
        return status

    def _signal_group(self, signum: int) -> None:
        """Signal the VMM and anything it started (it leads its own process group);
        only while the VMM is unreaped, so the group id cannot have been reused."""
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signum)
            except ProcessLookupError:
                pass

    def _wait_exit(self, timeout: float) -> int | None:
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def _close_fds(self) -> None:
        """After the VMM exited: its end of the console is closed, so the readers see EOF
        (or EIO on a pty) and end; only then are our descriptors closed under them."""
        if self.process.stdin is not None:
            try:
                self.process.stdin.close()
            except OSError:
                pass
        for thread in self._threads:
            thread.join(timeout=2.0)
        if self.process.stdout is None:
            os.close(self._console_fd)  # the pty master
        for stream in (self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()

    def __enter__(self) -> GuestSession:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ----- diagnostics --------------------------------------------------------------

    def recent_output(self, count: int = RECENT_LINES) -> str:
        with self._cond:
            lines = [text for _, text in self.lines[-count:]]
            if self._partial:
                lines.append(self._partial.decode("utf-8", errors="replace"))
        return "\n".join(lines)

    def _describe(self, problem: str) -> str:
        """An error message with what the console and the VMM said last (lock held or not)."""
        lines = [text for _, text in self.lines[-RECENT_LINES:]]
        if self._partial:
            lines.append(self._partial.decode("utf-8", errors="replace") + "  <no newline>")
        parts = [f"guest session: {problem}", f"last {len(lines)} console lines:"]
        parts += ["  | " + line for line in lines] or ["  (none)"]
        if self.stderr_lines:
            parts.append("VMM stderr (last lines):")
            parts += ["  ! " + line for line in self.stderr_lines[-10:]]
        status = self.process.poll()
        if status is not None:
            parts.append(f"VMM exit status: {status}")
        return "\n".join(parts)
