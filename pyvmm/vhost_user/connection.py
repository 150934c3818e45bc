"""Message framing on a vhost-user unix socket: header + payload, file descriptors via SCM_RIGHTS.

A message that cannot be framed (bad version, oversized, truncated, fds lost) raises
:class:`ProtocolError`: the stream is out of step and the connection must be closed.
A well-framed request that is wrong (bad index, bad size) raises :class:`RequestError`,
which the back end answers with a failure status and carries on.
"""

from __future__ import annotations

import ctypes
import logging
import os
import socket
from dataclasses import dataclass, field
from typing import Iterable, TypeVar

from pyvmm.errors import VmmError
from pyvmm.vhost_user.messages import (
    HEADER_SIZE,
    MAX_FDS,
    MAX_PAYLOAD_SIZE,
    PROTOCOL_VERSION,
    VERSION_MASK,
    Header,
    HeaderFlags,
    U64,
)

log = logging.getLogger(__name__)

S = TypeVar("S", bound=ctypes.Structure)


class ProtocolError(VmmError):
    """The front end broke message framing; the connection cannot continue."""


class RequestError(VmmError):
    """A well-framed request the back end refuses (answered with a failure status)."""


@dataclass
class Message:
    request: int
    flags: int
    payload: bytes
    fds: list[int] = field(default_factory=list)

    @property
    def need_reply(self) -> bool:
        return bool(self.flags & HeaderFlags.NEED_REPLY)

    def parse(self, struct_type: type[S]) -> S:
        """The payload as ``struct_type``; its size must match exactly."""
        expected = ctypes.sizeof(struct_type)
        if len(self.payload) != expected:
            raise RequestError(f"payload is {len(self.payload)} bytes, expected {expected}")
        return struct_type.from_buffer_copy(self.payload)

    def parse_prefix(self, struct_type: type[S]) -> tuple[S, bytes]:
        """A leading ``struct_type`` and the bytes after it."""
        size = ctypes.sizeof(struct_type)
        if len(self.payload) < size:
            raise RequestError(f"payload is {len(self.payload)} bytes, expected at least {size}")
        return struct_type.from_buffer_copy(self.payload[:size]), self.payload[size:]

    def take_fd(self) -> int | None:
        """Claim the first attached fd (the caller now owns it)."""
        return self.fds.pop(0) if self.fds else None

    def close_fds(self) -> None:
        """Close the fds nobody claimed."""
        while self.fds:
            os.close(self.fds.pop())


class Connection:
    """One vhost-user stream socket (the main channel or the back-end request channel)."""

    def __init__(self, sock: socket.socket, timeout: float = 5.0):
        self.sock = sock
        # A whole message arrives at once in practice; the timeout bounds a front end
        # that stops half-way, so it cannot wedge the event loop forever.
        self.sock.settimeout(timeout)

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        self.sock.close()

    # -- receiving ------------------------------------------------------------------

    def recv(self) -> Message | None:
        """The next message, or None when the peer closed the connection between messages."""
        fds: list[int] = []
        try:
            raw = self._recv_exact(HEADER_SIZE, fds, eof_ok=True)
            if raw is None:
                return None
            header = Header.from_buffer_copy(raw)
            if header.flags & VERSION_MASK != PROTOCOL_VERSION:
                raise ProtocolError(f"unsupported message version in flags {header.flags:#x}")
            if header.size > MAX_PAYLOAD_SIZE:
                raise ProtocolError(f"payload of {header.size} bytes exceeds {MAX_PAYLOAD_SIZE}")
            payload = self._recv_exact(header.size, fds) if header.size else b""
        except BaseException:
            for fd in fds:
                os.close(fd)
            raise
        return Message(header.request, header.flags, payload, fds)

    def _recv_exact(self, length: int, fds: list[int], eof_ok: bool = False) -> bytes | None:
        data = bytearray()
        while len(data) < length:
            try:
                chunk, new_fds, msg_flags, _ = socket.recv_fds(self.sock, length - len(data), MAX_FDS,
                                                                socket.MSG_CMSG_CLOEXEC)
            except socket.timeout:
                raise ProtocolError(f"timed out waiting for {length - len(data)} more bytes") from None
            except (ConnectionResetError, BrokenPipeError) as exc:
                raise ProtocolError(f"connection lost: {exc}") from None
            fds.extend(new_fds)
            if msg_flags & socket.MSG_CTRUNC:
                raise ProtocolError(f"more than {MAX_FDS} file descriptors attached to a message")
            if not chunk:
                if eof_ok and not data:
                    return None
                raise ProtocolError("connection closed in the middle of a message")
            data += chunk
        return bytes(data)

    # -- sending --------------------------------------------------------------------

    def send(self, request: int, flags: int, payload: bytes = b"", fds: Iterable[int] = ()) -> None:
        header = Header(request, flags | HeaderFlags.VERSION_1, len(payload))
        data = bytes(header) + payload
        fds = list(fds)
        try:
            if fds:
                sent = socket.send_fds(self.sock, [data], fds)
                if sent < len(data):
                    self.sock.sendall(data[sent:])
            else:
                self.sock.sendall(data)
        except (OSError, socket.timeout) as exc:
            raise ProtocolError(f"cannot send {len(data)}-byte message: {exc}") from None

    def reply(self, request: Message, payload: bytes = b"", fds: Iterable[int] = ()) -> None:
        self.send(request.request, HeaderFlags.REPLY, payload, fds)

    def reply_status(self, request: Message, ok: bool) -> None:
        """REPLY_ACK: a u64 that is zero on success."""
        self.reply(request, bytes(U64(0 if ok else 1)))
