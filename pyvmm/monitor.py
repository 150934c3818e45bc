"""The monitor: a line-oriented text console on a unix socket to inspect and poke a running VM.

Like QEMU's ``-monitor``, but small: ``pyvmm run --monitor PATH`` serves it, ``pyvmm monitor
PATH [COMMAND...]`` (or ``socat - UNIX-CONNECT:PATH``) talks to it. Each command line gets
zero or more lines of text and then exactly one terminator line, ``OK`` or ``ERROR: why``,
so a client knows where a reply ends without a prompt. A body line that would read as a
terminator is sent with a leading space.

The monitor knows no device by name. Core commands work on any virtio device through its
transport (status, features, queues, device-initiated reset); a device adds its own commands
with :meth:`pyvmm.virtio.device.VirtioDevice.monitor_commands`, reached as ``NAME CMD ARGS``
(``snd0 jack 0 disconnect``). Device commands run on the device event loop thread, so they
may touch device state freely; whatever they raise is reported, never kills the VM.

Several clients may connect at once (one thread each, at most :data:`MAX_CLIENTS`); commands
are executed one at a time. The socket is private (0600) and a line is at most :data:`MAX_LINE`
bytes, so a local client cannot take more than a bounded share of the VMM.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import shlex
import socket
import struct
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

from pyvmm.errors import VmmError
from pyvmm.unixsocket import listen_unix

log = logging.getLogger(__name__)

OK = "OK"
ERROR_PREFIX = "ERROR: "
DEVICE_CALL_TIMEOUT = 5.0
"""Seconds a device command may take on the event loop before the monitor gives up on it."""
MAX_LINE = 4096
"""Longest command line in bytes, without its newline (QEMU's readline buffer is 4 KiB)."""
MAX_CLIENTS = 8
"""Clients served at once (one thread each); more are told so and disconnected."""


class MonitorError(Exception):
    """A command the monitor cannot carry out; its message is the ``ERROR:`` line."""


@dataclass
class MonitoredDevice:
    """One virtio device as the monitor sees it: a short name, the device, its transport."""

    name: str
    device: Any
    """A :class:`~pyvmm.virtio.device.VirtioDevice` (only ``monitor_commands`` is used)."""
    transport: Any
    """Anything with ``request_reset(reason)``; ``status``, ``driver_features``,
    ``offered_features`` and ``queues`` are shown by ``info devices`` when present."""


def device_names(type_names: Iterable[str]) -> list[str]:
    """Short per-type numbered names: ``virtio-snd, virtio-snd, virtio-net`` -> ``snd0, snd1, net0``."""
    counts: dict[str, int] = {}
    names = []
    for type_name in type_names:
        base = type_name.removeprefix("virtio-").replace(",", "_") or "dev"
        names.append(f"{base}{counts.get(base, 0)}")
        counts[base] = counts.get(base, 0) + 1
    return names


class Monitor:
    """Parses and executes monitor command lines against a VM (see the module docstring).

    ``run_on_loop(fn, *args, timeout=...)`` runs ``fn`` on the device event loop and returns its
    result (``DeviceEventLoop.call``); ``exit_counts()`` returns the VM exits by reason so far
    (None: no vCPUs in this process, e.g. a vhost-user back end); ``quit()`` asks the VM (or the
    back end) to stop.
    """

    def __init__(self, devices: list[MonitoredDevice], run_on_loop: Callable[..., Any],
                 exit_counts: Callable[[], Mapping[str, int]] | None, quit: Callable[[], None]):
        self.devices = devices
        self.run_on_loop = run_on_loop
        self.exit_counts = exit_counts
        self.quit = quit
        self._lock = threading.Lock()
        self._commands: dict[str, tuple[Callable[[list[str]], str], str]] = {
            "help": (self._help, "help                 this text (NAME help: a device's commands)"),
            "info": (self._info, "info devices|stats   devices and their queues / VM exits by reason"),
            "device": (self._device, "device N reset       device-initiated reset (DEVICE_NEEDS_RESET)"),
            "quit": (self._quit, "quit                 stop the VM (exit status 0)"),
        }

    # -- entry point ----------------------------------------------------------------------

    def execute(self, line: str) -> tuple[bool, str]:
        """Run one command line: (succeeded, reply text without the terminator)."""
        # Also for callers other than the socket (QMP's human-monitor-command).
        if len(line) > MAX_LINE or (not line.isascii() and len(line.encode("utf-8", "replace")) > MAX_LINE):
            return False, f"line longer than {MAX_LINE} bytes (ignored)"
        try:
            words = shlex.split(line)
        except ValueError as exc:
            return False, f"cannot parse the command: {exc}"
        if not words:
            return True, ""
        with self._lock:
            try:
                return True, self._dispatch(words)
            except (MonitorError, VmmError) as exc:
                return False, str(exc)
            except Exception as exc:
                log.warning("monitor: %r failed", line, exc_info=True)
                return False, f"{type(exc).__name__}: {exc}"

    def _dispatch(self, words: list[str]) -> str:
        name, args = words[0], words[1:]
        if name in self._commands:
            return self._commands[name][0](args)
        for dev in self.devices:
            if dev.name == name:
                return self._device_command(dev, args)
        raise MonitorError(f"unknown command {name!r} (try 'help')")

    # -- core commands ----------------------------------------------------------------------

    def _help(self, args: list[str]) -> str:
        lines = [usage for _, usage in self._commands.values()]
        for dev in self.devices:
            if self._device_commands(dev):
                lines.append(f"{dev.name} CMD ARGS...{' ' * max(1, 10 - len(dev.name))}"
                             f"device commands ('{dev.name} help' lists them)")
        return "\n".join(lines)

    def _info(self, args: list[str]) -> str:
        what = args[0] if args else ""
        if what == "devices":
            return "\n".join(self._describe_device(i, dev) for i, dev in enumerate(self.devices)) or "no devices"
        if what == "stats":
            if self.exit_counts is None:
                raise MonitorError("no VM exit statistics here: the vCPUs run in the front end")
            counts = self.exit_counts()
            total = sum(counts.values())
            lines = [f"VM exits: {total}"]
            lines += [f"  {name:<16} {count}" for name, count in sorted(counts.items(), key=lambda kv: -kv[1])]
            return "\n".join(lines)
        raise MonitorError("usage: info devices|stats")

    def _describe_device(self, index: int, dev: MonitoredDevice) -> str:
        transport = dev.transport
        head = f"{index}: {dev.name} ({type(dev.device).__name__}"
        head += f", {getattr(transport, 'name', type(transport).__name__)})"
        lines = [head]
        status = getattr(transport, "status", None)
        if status is not None:
            lines.append(f"  status {_status_names(status)}")
        offered, accepted = getattr(transport, "offered_features", None), getattr(transport, "driver_features", None)
        if offered is not None or accepted is not None:
            lines.append(f"  features offered {_hex(offered)}, negotiated {_hex(accepted)}")
        for q in getattr(transport, "queues", []):
            if getattr(q, "ready", False):
                lines.append(f"  queue {q.index}: size {q.size}, next_avail {q.next_avail}, "
                             f"next_used {q.next_used}{', BROKEN' if getattr(q, 'broken', False) else ''}")
            else:
                lines.append(f"  queue {q.index}: not ready")
        return "\n".join(lines)

    def _device(self, args: list[str]) -> str:
        if len(args) != 2 or args[1] != "reset":
            raise MonitorError("usage: device N reset")
        dev = self._device_at(args[0])
        dev.transport.request_reset("requested from the monitor")
        return f"{dev.name}: DEVICE_NEEDS_RESET set, configuration interrupt raised"

    def _quit(self, args: list[str]) -> str:
        self.quit()
        return "stopping the VM"

    def _device_at(self, text: str) -> MonitoredDevice:
        for dev in self.devices:
            if text == dev.name:
                return dev
        try:
            index = int(text)
        except ValueError:
            index = -1
        if not 0 <= index < len(self.devices):
            raise MonitorError(f"no device {text!r} (see 'info devices')")
        return self.devices[index]

    # -- device commands ----------------------------------------------------------------------

    def _device_commands(self, dev: MonitoredDevice) -> dict[str, Callable[[list[str]], str]]:
        hook = getattr(dev.device, "monitor_commands", None)
        return dict(hook()) if hook is not None else {}

    def _device_command(self, dev: MonitoredDevice, args: list[str]) -> str:
        commands = self._device_commands(dev)
        if not args or args[0] == "help":
            if not commands:
                return f"{dev.name} has no device commands"
            return "\n".join(f"{dev.name} {_first_doc_line(name, fn)}" for name, fn in sorted(commands.items()))
        fn = commands.get(args[0])
        if fn is None:
            raise MonitorError(f"{dev.name}: unknown command {args[0]!r} (try '{dev.name} help')")
        try:
            result = self.run_on_loop(fn, args[1:], timeout=DEVICE_CALL_TIMEOUT)
        except TimeoutError:
            raise MonitorError(f"{dev.name} {args[0]}: no answer from the device event loop "
                               f"within {DEVICE_CALL_TIMEOUT:g} s") from None
        except (MonitorError, VmmError, ValueError, LookupError) as exc:
            raise MonitorError(f"{dev.name} {args[0]}: {exc}") from None
        return "" if result is None else str(result)


def _first_doc_line(name: str, fn: Callable) -> str:
    doc = (getattr(fn, "__doc__", None) or "").strip().splitlines()
    return doc[0] if doc else name


def _hex(value: int | None) -> str:
    return "?" if value is None else f"{value:#x}"


_STATUS_BITS = ((1, "ACKNOWLEDGE"), (2, "DRIVER"), (4, "DRIVER_OK"), (8, "FEATURES_OK"),
                (64, "DEVICE_NEEDS_RESET"), (128, "FAILED"))


def _status_names(status: int) -> str:
    names = [name for bit, name in _STATUS_BITS if status & bit]
    return f"{status:#x} ({' '.join(names) or 'reset'})"


def format_reply(ok: bool, text: str) -> str:
    """The wire form of a reply: body lines (terminator look-alikes escaped) then OK/ERROR."""
    lines = []
    for line in text.splitlines() if ok else []:
        lines.append(" " + line if _is_terminator(line) else line)
    message = " ".join(text.split()) if not ok else ""
    lines.append(OK if ok else ERROR_PREFIX + (message or "failed"))
    return "\n".join(lines) + "\n"


def _is_terminator(line: str) -> bool:
    return line == OK or line.startswith(ERROR_PREFIX)


# -- the socket server ------------------------------------------------------------------------


SEND_TIMEOUT = 10.0
"""Seconds a reply may wait for a client that does not read; then the client is dropped."""


class MonitorServer:
    """Serves a :class:`Monitor` on a private (0600) unix socket; ``close()`` removes the socket.

    What a local client can cost is bounded: at most :data:`MAX_CLIENTS` connections (one
    thread each, plus the accepting thread), lines of at most :data:`MAX_LINE` bytes (longer
    ones are read in chunks, discarded and answered with an error), replies that wait at most
    :data:`SEND_TIMEOUT` for a client that does not read them."""

    def __init__(self, monitor: Monitor, path: str | os.PathLike, max_clients: int = MAX_CLIENTS):
        self.monitor = monitor
        self.path = os.fspath(path)
        self.max_clients = max_clients
        self._listener = listen_unix(self.path, backlog=max_clients, what="monitor socket")
        self._clients: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._accept_loop, name="pyvmm-monitor", daemon=True)

    def start(self) -> MonitorServer:
        self._thread.start()
        log.info("monitor listening on %s", self.path)
        return self

    def close(self) -> None:
        self._closing.set()
        if self._thread.is_alive():
            self._thread.join(5.0)
        self._listener.close()
        with self._lock:
            clients = list(self._clients)
        for sock in clients:  # wakes their threads, which then close them
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass

    def _accept_loop(self) -> None:
        while not self._closing.is_set():
            if not select.select([self._listener], [], [], 0.2)[0]:
                continue
            try:
                sock, _ = self._listener.accept()
            except OSError as exc:  # e.g. out of file descriptors: the client may retry
                log.warning("monitor: cannot accept a client: %s", exc)
                time.sleep(0.2)
                continue
            with self._lock:
                admitted = len(self._clients) < self.max_clients
                if admitted:
                    self._clients.add(sock)
            if not admitted:
                log.warning("monitor: refused a client: already %d connected", self.max_clients)
                self._refuse(sock)
                continue
            threading.Thread(target=self._serve_client, args=(sock,), name="pyvmm-monitor-client",
                             daemon=True).start()

    def _refuse(self, sock: socket.socket) -> None:
        with sock:
            _set_send_timeout(sock, 1.0)
            with contextlib.suppress(OSError):
                sock.sendall(format_reply(False, f"too many monitor clients (at most {self.max_clients})").encode())

    def _serve_client(self, sock: socket.socket) -> None:
        try:
            _set_send_timeout(sock, SEND_TIMEOUT)
            with sock.makefile("rb") as rfile:
                while not self._closing.is_set():
                    raw = rfile.readline(MAX_LINE + 1)
                    if not raw:
                        return
                    if len(raw) > MAX_LINE and not raw.endswith(b"\n"):
                        if not _discard_line(rfile):
                            return
                        ok, text = False, f"line longer than {MAX_LINE} bytes (ignored)"
                    else:
                        ok, text = self.monitor.execute(raw.decode("utf-8", "replace").strip())
                    sock.sendall(format_reply(ok, text).encode())
        except OSError:
            pass  # the client went away, stopped reading, or the server is closing
        finally:
            with self._lock:
                self._clients.discard(sock)
            sock.close()


def _discard_line(rfile) -> bool:
    """Skip to the end of an overlong line in bounded chunks; False at end of input."""
    while True:
        chunk = rfile.readline(65536)
        if not chunk:
            return False
        if chunk.endswith(b"\n"):
            return True


def _set_send_timeout(sock: socket.socket, seconds: float) -> None:
    """Bound sends only: reads stay blocking, so an idle interactive client is not dropped."""
    whole = int(seconds)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO,
                    struct.pack("ll", whole, int((seconds - whole) * 1_000_000)))


def vm_monitor(vm) -> Monitor:
    """A monitor on a running :class:`pyvmm.vm.Vm` (its transports, vCPUs, event loop)."""
    names = device_names(spec.name for spec in vm.config.devices)
    devices = [MonitoredDevice(name, t.device, t) for name, t in zip(names, vm.transports)]

    def exit_counts() -> dict[str, int]:
        # Each vCPU's counters are plain ints its thread increments; reading them from here
        # gives a snapshot that may lag by a few exits, never a torn value (the GIL).
        total: dict[str, int] = {}
        for vcpu in vm.vcpus:
            for name, count in vcpu.exit_counts.items():
                total[name] = total.get(name, 0) + count
        return total

    return Monitor(devices, vm.event_loop.call, exit_counts,
                   quit=lambda: vm.request_stop(0, "quit from the monitor", cause="host-qmp-quit"))


class VhostUserTransportView:
    """A vhost-user back end seen as a transport: status, features and rings from the front
    end's last messages; a device-initiated reset goes through the running device's context."""

    def __init__(self, backend, run_on_loop: Callable[..., Any], name: str = "vhost-user"):
        self.backend = backend
        self.run_on_loop = run_on_loop
        self.name = name

    @property
    def status(self) -> int:
        return self.backend.status

    @property
    def offered_features(self) -> int:
        return self.backend.offered_features

    @property
    def driver_features(self) -> int:
        return self.backend.features

    @property
    def queues(self) -> list:
        context = self.backend.runner.context
        return list(context.queues) if context is not None else []

    def request_reset(self, reason: str) -> None:
        context = self.backend.runner.context
        if context is None:
            raise MonitorError("the device is not running (no front end has started it)")
        self.run_on_loop(context.request_reset, reason, timeout=DEVICE_CALL_TIMEOUT)


def vhost_user_monitor(device, type_name: str, backend, run_on_loop: Callable[..., Any],
                       quit: Callable[[], None]) -> Monitor:
    """A monitor on a vhost-user back end serving ``device`` (``pyvmm vhost-user ... --monitor``)."""
    [name] = device_names([type_name])
    transport = VhostUserTransportView(backend, run_on_loop)
    return Monitor([MonitoredDevice(name, device, transport)], run_on_loop, None, quit)


# -- the client ---------------------------------------------------------------------------------


class MonitorClient:
    """One connection to a monitor socket: send a line, read its reply."""

    def __init__(self, path: str | os.PathLike, timeout: float | None = 30.0):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        try:
            self.sock.connect(os.fspath(path))
        except OSError as exc:
            self.sock.close()
            raise VmmError(f"cannot connect to monitor {os.fspath(path)}: {exc.strerror or exc}") from None
        self._file = self.sock.makefile("rwb")

    def command(self, line: str) -> tuple[bool, str]:
        """(succeeded, body text or the error message)."""
        self._file.write(line.strip().encode() + b"\n")
        self._file.flush()
        body = []
        for raw in self._file:
            text = raw.decode("utf-8", "replace").rstrip("\n")
            if text == OK:
                return True, "\n".join(body)
            if text.startswith(ERROR_PREFIX):
                return False, text[len(ERROR_PREFIX):]
            body.append(text[1:] if text.startswith(" ") and _is_terminator(text[1:]) else text)
        raise VmmError("the monitor closed the connection (the VM has stopped)")

    def close(self) -> None:
        self._file.close()
        self.sock.close()

    def __enter__(self) -> MonitorClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
