"""Where gdb connects: ``tcp::PORT`` (localhost), ``tcp:HOST:PORT`` or ``unix:PATH`` (mode 0600).

The server accepts one debugger at a time (a second connection is told so and closed)
and runs its :class:`~pyvmm.gdbstub.session.GdbSession` on a daemon thread. When the VM
stops, :meth:`GdbServer.close` tells a debugger waiting for the guest how it exited
(``W`` packet: gdb prints "exited with code N") before closing.
"""

from __future__ import annotations

import logging
import os
import select
import socket
import threading
from dataclasses import dataclass

from pyvmm.errors import VmmError
from pyvmm.unixsocket import listen_unix

from .session import GdbSession
from .target import DebugTarget

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GdbAddress:
    kind: str          # "tcp" or "unix"
    host: str = ""
    port: int = 0
    path: str = ""

    @classmethod
    def parse(cls, text: str) -> GdbAddress:
        """``tcp::1234`` (127.0.0.1), ``tcp:HOST:1234``, ``unix:PATH``; a bare ``1234`` means ``tcp::1234``."""
        if text.isdigit():
            text = f"tcp::{text}"
        scheme, sep, rest = text.partition(":")
        if sep and scheme == "unix":
            if not rest:
                raise VmmError("bad --gdb 'unix:': give a socket path, e.g. unix:/tmp/gdb.sock")
            return cls("unix", path=rest)
        if sep and scheme == "tcp":
            host, sep, port = rest.rpartition(":")
            if sep and port.isdigit() and 0 < int(port) < 65536:
                return cls("tcp", host=host or "127.0.0.1", port=int(port))
        raise VmmError(f"bad --gdb {text!r}: use tcp::PORT, tcp:HOST:PORT or unix:PATH")

    def __str__(self) -> str:
        return f"unix:{self.path}" if self.kind == "unix" else f"tcp:{self.host}:{self.port}"


class GdbServer:
    def __init__(self, target: DebugTarget, address: GdbAddress):
        self.target = target
        self.address = address
        self._exit_status: int | None = None
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._session_thread: threading.Thread | None = None
        self._closing = False
        try:
            if address.kind == "unix":
                self._sock = listen_unix(address.path, what="gdb socket")
            else:
                self._sock = socket.create_server((address.host, address.port))
                self._sock.listen(1)
        except OSError as exc:
            raise VmmError(f"cannot listen for gdb on {address}: {exc.strerror or exc}") from None
        if address.kind == "tcp" and address.port == 0:
            self.address = GdbAddress("tcp", address.host, self._sock.getsockname()[1])
        self._thread = threading.Thread(target=self._accept_loop, name="pyvmm-gdb-accept", daemon=True)

    def start(self) -> GdbServer:
        self._thread.start()
        log.info("gdb stub listening on %s", self.address)
        return self

    def _accept_loop(self) -> None:
        while not self._closing:
            try:
                readable, _, _ = select.select([self._sock, self._wake_r], [], [])
            except (OSError, ValueError):
                return
            if self._wake_r in readable or self._closing:
                return
            try:
                conn, _ = self._sock.accept()
            except OSError:
                continue
            if self._session_thread is not None:
                self._session_thread.join(1.0)  # a debugger that just left may still be cleaning up
            if self._session_thread is not None and self._session_thread.is_alive():
                log.warning("gdb: refusing a second debugger connection")
                conn.close()
                continue
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            if conn.family != socket.AF_UNIX:
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._session_thread = threading.Thread(target=self._serve, args=(conn,), name="pyvmm-gdb",
                                                    daemon=True)
            self._session_thread.start()

    def _serve(self, conn: socket.socket) -> None:
        session = GdbSession(conn, self.target, wake_fd=self._wake_r, exit_status=lambda: self._exit_status)
        try:
            session.run()
        except Exception:
            log.exception("gdb: session failed")
            self.target.detach()
        finally:
            conn.close()

    def close(self, exit_status: int | None = None) -> None:
        """Stop serving; a debugger waiting for the guest learns its exit status."""
        self._exit_status = 0 if exit_status is None else exit_status
        self._closing = True
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass
        if self._session_thread is not None:
            self._session_thread.join(5)
        self._thread.join(5)
        self._sock.close()
        if self.address.kind == "unix":
            try:
                os.unlink(self.address.path)
            except FileNotFoundError:
                pass
        self.target.close()
