"""Boot the outer guest in QEMU's software CPU and run one command in it on real ``kvm_amd``.

QEMU (``-M q35 -accel tcg -cpu max``: TCG emulates AMD SVM, not VMX) boots a Debian stock
kernel with :mod:`.image`'s initramfs; the host's ``/`` is shared read-only over 9p (the
guest puts a tmpfs overlay on it), so the command sees the host's files, cwd and
virtualenv, and its writes vanish with the guest. Three QEMU character devices connect to
unix sockets this process listens on: the serial console (kernel log and the
``realkvm-init:`` lines of ``guest-images/outer/init``), and two virtio consoles carrying
the command's stdout and stderr, which are relayed as they arrive.

Boot failures are retried, never silently: the ~7 % of boots seen to stop for no known
reason (issue 9) stop *before* the outer guest says ``ready``; such an attempt is reported
with its cause and retried up to ``attempts`` times. Once the command has started nothing
is retried: a command is not assumed to be idempotent.

Exit status: the command's; 124 on ``timeout``; 125 when the tier itself failed (QEMU or
the outer guest did not get the command to its end).
"""

from __future__ import annotations

import os
import re
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from pyvmm.guestimage.progress import Progress, format_duration

from .image import OuterImage, command_cpio, command_script

EXIT_TIMEOUT = 124
EXIT_TIER_FAILED = 125
QEMU_MACHINE = ["-M", "q35", "-accel", "tcg", "-cpu", "max", "-smp", "2", "-m", "4G"]
OUTER_CMDLINE = "console=ttyS0 loglevel=4 panic=-1 rdinit=/init"
_MARKER = re.compile(rb"realkvm-init: (\S+) ?(.*)")
_CONSOLE_TAIL = 15


@dataclass
class Attempt:
    """What one boot of the outer guest did."""

    number: int
    ready_after: float | None = None      # seconds from QEMU's start to "ready"
    status: int | None = None             # the command's exit status, if it arrived
    cause: str = ""                       # why it ended without a status
    elapsed: float = 0.0
    console: list[str] = field(default_factory=list)
    interrupted: int | None = None        # signal number
    timed_out: bool = False

    @property
    def ready(self) -> bool:
        return self.ready_after is not None


@dataclass
class RunSettings:
    argv: list[str]
    cwd: str
    timeout: float | None = None         # whole run, all attempts
    boot_timeout: float = 300.0          # QEMU start to "ready"
    attempts: int = 2                    # boots tried before the command starts
    verbose: bool = False
    console_log: Path | None = None
    extra_env: dict[str, str] = field(default_factory=dict)


class OuterGuest:
    """Runs ``settings.argv`` in the outer guest booted from ``image`` by ``qemu`` (an argv prefix)."""

    def __init__(self, qemu: list[str], image: OuterImage, settings: RunSettings, progress: Progress,
                 stdout=None, stderr=None):
        self.qemu = qemu
        self.image = image
        self.settings = settings
        self.progress = progress
        self._stdout = stdout or sys.stdout.buffer
        self._stderr = stderr or sys.stderr.buffer
        self._deadline = None if settings.timeout is None else time.monotonic() + settings.timeout
        self._signal: int | None = None
        self.attempts: list[Attempt] = []

    # -- the policy ---------------------------------------------------------------------------

    def run(self) -> int:
        previous = {}
        if threading_main():
            for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                previous[signum] = signal.signal(signum, self._on_signal)
        try:
            return self._run_attempts()
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def _on_signal(self, signum, frame) -> None:
        self._signal = signum

    def _run_attempts(self) -> int:
        settings = self.settings
        for number in range(1, settings.attempts + 1):
            attempt = self._boot(number)
            self.attempts.append(attempt)
            if attempt.interrupted:
                self.progress(f"stopped by signal {signal.Signals(attempt.interrupted).name}")
                return 128 + attempt.interrupted
            if attempt.status is not None:
                self.progress(f"command exited with status {attempt.status} "
                              f"({format_duration(attempt.elapsed)} in the outer guest)")
                self._report_retries()
                return attempt.status
            self._show_console(attempt)
            if attempt.timed_out:
                self.progress(f"timeout: {attempt.cause}")
                self._report_retries()
                return EXIT_TIMEOUT
            if attempt.ready:
                self.progress(f"error: the outer guest stopped while the command ran: {attempt.cause}")
                self._report_retries()
                return EXIT_TIER_FAILED
            if number < settings.attempts:
                self.progress(f"outer guest stopped before it was ready: {attempt.cause}; "
                              f"retrying (boot {number + 1} of at most {settings.attempts})")
        self.progress(f"error: the outer guest did not get ready in {settings.attempts} boots "
                      f"(last cause: {self.attempts[-1].cause})")
        self._report_retries()
        return EXIT_TIER_FAILED

    def _report_retries(self) -> None:
        failed = [a for a in self.attempts if not a.ready]
        if failed:
            causes = "; ".join(f"boot {a.number}: {a.cause}" for a in failed)
            self.progress(f"retried boots: {len(failed)} of {len(self.attempts)} ({causes})")

    def _show_console(self, attempt: Attempt) -> None:
        if attempt.console and not self.settings.verbose:
            tail = attempt.console[-_CONSOLE_TAIL:]
            self._stderr.write(b"".join(f"real-kvm: console| {line}\n".encode() for line in tail))
            self._stderr.flush()

    # -- one boot -----------------------------------------------------------------------------

    def _boot(self, number: int) -> Attempt:
        attempt = Attempt(number)
        workdir = Path(tempfile.mkdtemp(prefix="pyvmm-realkvm-"))
        try:
            return self._boot_in(workdir, attempt)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)

    def _boot_in(self, workdir: Path, attempt: Attempt) -> Attempt:
        settings = self.settings
        initrd = workdir / "initramfs.cpio"
        script = command_script(settings.argv, settings.cwd, dict(os.environ),
                                {"PYVMM_REALKVM": self.image.kernel.release, "PYTHONUNBUFFERED": "1",
                                 **settings.extra_env})
        tty = _isatty(self._stdout) and _isatty(self._stderr)
        initrd.write_bytes(self.image.initramfs.read_bytes() + command_cpio(script, tty))
        listeners = {name: _listen(workdir / f"{name}.sock") for name in ("console", "stdout", "stderr")}
        argv = [*self.qemu, *QEMU_MACHINE, "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
                "-kernel", str(self.image.vmlinuz), "-initrd", str(initrd), "-append", OUTER_CMDLINE,
                "-chardev", f"socket,id=console,path={workdir / 'console.sock'}", "-serial", "chardev:console",
                "-device", "virtio-serial-pci",
                "-chardev", f"socket,id=stdout,path={workdir / 'stdout.sock'}", "-device", "virtconsole,chardev=stdout",
                "-chardev", f"socket,id=stderr,path={workdir / 'stderr.sock'}", "-device", "virtconsole,chardev=stderr",
                "-virtfs", "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap"]
        log = open(settings.console_log, "ab") if settings.console_log else None
        self.progress(f"booting the outer guest (linux {self.image.kernel.release}, "
                      f"boot {attempt.number} of at most {settings.attempts})")
        start = time.monotonic()
        qemu = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                start_new_session=True)
        sel = selectors.DefaultSelector()
        for name, listener in listeners.items():
            sel.register(listener, selectors.EVENT_READ, ("accept", name))
        sel.register(qemu.stdout, selectors.EVENT_READ, ("qemu", "qemu"))
        pending = {"console": b"", "qemu": b""}
        qemu_said: list[str] = []
        try:
            while True:
                now = time.monotonic()
                if self._signal is not None:
                    attempt.interrupted = self._signal
                    break
                if self._deadline is not None and now > self._deadline:
                    attempt.timed_out = True
                    attempt.cause = f"the run's timeout ({settings.timeout:g} s) expired"
                    break
                if not attempt.ready and now - start > settings.boot_timeout:
                    attempt.cause = f"not ready {settings.boot_timeout:g} s after QEMU started"
                    break
                events = sel.select(timeout=0.5)
                for key, _ in events:
                    kind, name = key.data
                    if kind == "accept":
                        conn, _ = key.fileobj.accept()
                        sel.register(conn, selectors.EVENT_READ, ("data", name))
                        continue
                    data = _read(key.fileobj)
                    if not data:
                        sel.unregister(key.fileobj)
                        key.fileobj.close()
                        continue
                    if name == "stdout":
                        self._stdout.write(data)
                        self._stdout.flush()
                    elif name == "stderr":
                        self._stderr.write(data)
                        self._stderr.flush()
                    else:
                        if log and name == "console":
                            log.write(data)
                        pending[name] += data
                        *lines, pending[name] = pending[name].split(b"\n")
                        for line in lines:
                            if name == "qemu":
                                qemu_said.append(line.decode(errors="replace").rstrip())
                                self._stderr.write(b"real-kvm: qemu| " + line + b"\n")
                            else:
                                self._console_line(line, attempt, start)
                if not events and qemu.poll() is not None:
                    break  # QEMU is gone and every stream it had is drained
        finally:
            sel.close()
            for listener in listeners.values():
                listener.close()
            if qemu.poll() is None:
                qemu.terminate()
                try:
                    qemu.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    qemu.kill()
                    qemu.wait()
            if log:
                log.close()
        attempt.elapsed = time.monotonic() - start
        if attempt.status is None and not attempt.cause:
            if qemu.returncode not in (0, None):
                detail = qemu_said[-1] if qemu_said else ""
                attempt.cause = f"QEMU exited with status {qemu.returncode}" + (f": {detail}" if detail else "")
            else:
                panic = next((line for line in attempt.console if "Kernel panic" in line), None)
                attempt.cause = panic or (f"the outer guest powered off without a status "
                                          f"after {format_duration(attempt.elapsed)}")
        return attempt

    def _console_line(self, raw: bytes, attempt: Attempt, start: float) -> None:
        line = raw.decode(errors="replace").rstrip("\r")
        attempt.console.append(line)
        del attempt.console[:-200]
        if self.settings.verbose:
            self._stderr.write(f"real-kvm: console| {line}\n".encode())
            self._stderr.flush()
        match = _MARKER.search(raw.rstrip(b"\r"))
        if not match:
            return
        word, rest = match.group(1).decode(), match.group(2).decode(errors="replace")
        if word == "ready":
            attempt.ready_after = time.monotonic() - start
            self.progress(f"outer guest ready {attempt.ready_after:.1f} s after QEMU started "
                          f"(kvm_amd {rest}); running: {' '.join(self.settings.argv)}")
        elif word == "status":
            try:
                attempt.status = int(rest)
            except ValueError:
                attempt.cause = f"unreadable status line {line!r}"
        elif word == "error:":
            attempt.cause = f"outer /init: {rest}"


def _listen(path: Path) -> socket.socket:
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    os.chmod(path, 0o600)
    listener.listen(1)
    return listener


def _read(fileobj) -> bytes:
    try:
        if isinstance(fileobj, socket.socket):
            return fileobj.recv(65536)
        return os.read(fileobj.fileno(), 65536)
    except (ConnectionResetError, BlockingIOError):
        return b""


def _isatty(stream) -> bool:
    try:
        return os.isatty(stream.fileno())
    except (AttributeError, OSError, ValueError):
        return False


def threading_main() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def run_in_real_kvm(argv: list[str], *, series: str = "6.12", cwd: str | None = None, timeout: float | None = None,
                    attempts: int = 2, boot_timeout: float = 300.0, verbose: bool = False,
                    console_log: Path | None = None,
                    progress: Callable[[str], object] | None = None) -> int:
    """Boot the outer guest, run ``argv`` there on real kvm_amd, return its exit status."""
    from pyvmm.guestimage import ensure_qemu

    from .image import ensure_outer_image

    sink = progress if progress is not None else (lambda msg: print(f"real-kvm: {msg}", file=sys.stderr, flush=True))
    report = Progress(sink)
    qemu = ensure_qemu(progress=sink)
    image = ensure_outer_image(series, sink)
    settings = RunSettings(argv=list(argv), cwd=cwd or os.getcwd(), timeout=timeout, boot_timeout=boot_timeout,
                           attempts=attempts, verbose=verbose, console_log=console_log)
    return OuterGuest(qemu, image, settings, report).run()
