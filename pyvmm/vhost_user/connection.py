"""Message framing on a vhost-user unix socket: header + payload, file descriptors via SCM_RIGHTS.

A message that cannot be framed (bad version, oversized, truncated, fds lost, too slow)
raises :class:`ProtocolError`: the stream is out of step and the connection must be closed.
Reads never block: a message is assembled from whatever has arrived (see :class:`Connection`).
A well-framed request that is wrong (bad index, bad size) raises :class:`RequestError`,
which the back end answers with a failure status and carries on.
"""

from __future__ import annotations

import ctypes
import logging
import os
import select
import socket
import time
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

MESSAGE_TIMEOUT = 5.0
"""Seconds a peer may take to send one whole message, from its first byte to its last."""

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


class Disconnected(ProtocolError):
    """The peer closed the connection between two messages (a clean hang-up)."""


class Connection:
    """One vhost-user stream socket (the main channel or the back-end request channel).

    The socket is non-blocking. :meth:`poll` assembles a message from whatever has arrived
    and never waits, so a back end can serve its rings while a front end is half-way through
    a message; :data:`MESSAGE_TIMEOUT` bounds how long that may last, counted from the
    message's first byte (``message_started``), whoever enforces it. ``timeout`` is how long
    the blocking :meth:`recv` and :meth:`send` may wait: 0 for a back end on an event loop
    (a peer that does not read its replies is a protocol error), a few seconds for a client.
    """

    def __init__(self, sock: socket.socket, timeout: float = 5.0):
        self.sock = sock
        self.sock.setblocking(False)
        self.timeout = timeout
        self.message_started: float | None = None
        """``time.monotonic()`` when the first byte of the message being assembled arrived."""
        self._header: Header | None = None
        self._data = bytearray()
        self._fds: list[int] = []

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        self._discard_partial()
        self.sock.close()

    # -- receiving ------------------------------------------------------------------

    def poll(self) -> Message | None:
        """The next message if all of it has arrived, else None (what came is kept); never blocks.

        Raises :class:`Disconnected` when the peer hung up between messages and
        :class:`ProtocolError` when the stream cannot be framed."""
        try:
            return self._assemble()
        except ProtocolError:
            self._discard_partial()
            raise

    def _assemble(self) -> Message | None:
        while True:
            wanted = (HEADER_SIZE if self._header is None else self._header.size) - len(self._data)
            if wanted > 0:
                if not self._read(wanted):
                    return None
                continue
            if self._header is None:
                self._header = self._parse_header(bytes(self._data))
                self._data = bytearray()
                continue
            header, payload, fds = self._header, bytes(self._data), self._fds
            self._header, self._data, self._fds, self.message_started = None, bytearray(), [], None
            return Message(header.request, header.flags, payload, fds)

    def _read(self, wanted: int) -> bool:
        """Read up to ``wanted`` bytes of the current message; False if none are there yet.
        Never reads past the message, so fds stay with the message they came with."""
        try:
            chunk, fds, msg_flags, _ = socket.recv_fds(self.sock, wanted, MAX_FDS, socket.MSG_CMSG_CLOEXEC)
        except (BlockingIOError, InterruptedError, TimeoutError):
            return False
        except OSError as exc:
            raise ProtocolError(f"connection lost: {exc}") from None
        self._fds.extend(fds)
        if msg_flags & socket.MSG_CTRUNC or len(self._fds) > MAX_FDS:
            raise ProtocolError(f"more than {MAX_FDS} file descriptors attached to a message")
        if not chunk:
            if self._header is None and not self._data and not self._fds:
                raise Disconnected("the peer closed the connection")
            raise ProtocolError("connection closed in the middle of a message")
        if self.message_started is None:
            self.message_started = time.monotonic()
        self._data += chunk
        return True

    @staticmethod
    def _parse_header(raw: bytes) -> Header:
        header = Header.from_buffer_copy(raw)
        if header.flags & VERSION_MASK != PROTOCOL_VERSION:
            raise ProtocolError(f"unsupported message version in flags {header.flags:#x}")
        if header.size > MAX_PAYLOAD_SIZE:
            raise ProtocolError(f"payload of {header.size} bytes exceeds {MAX_PAYLOAD_SIZE}")
        return header

    def _discard_partial(self) -> None:
        for fd in self._fds:
            os.close(fd)
        self._header, self._data, self._fds, self.message_started = None, bytearray(), [], None

    def recv(self) -> Message | None:
        """Wait up to ``timeout`` for the next whole message; None when the peer hung up."""
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                message = self.poll()
            except Disconnected:
                return None
            if message is not None:
                return message
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([self.sock], [], [], remaining)[0]:
                raise ProtocolError(f"no whole message within {self.timeout:g} s")

    # -- sending --------------------------------------------------------------------

    def send(self, request: int, flags: int, payload: bytes = b"", fds: Iterable[int] = ()) -> None:
        """Send one message, waiting at most ``timeout`` for room in the socket buffer."""
        header = Header(request, flags | HeaderFlags.VERSION_1, len(payload))
        data = memoryview(bytes(header) + payload)
        fds = list(fds)
        deadline = time.monotonic() + self.timeout
        while data:
            try:
                sent = socket.send_fds(self.sock, [data], fds) if fds else self.sock.send(data)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError as exc:
                raise ProtocolError(f"cannot send a {len(data)}-byte message: {exc}") from None
            if sent:
                fds = []  # they went with the first byte
            data = data[sent:]
            if not data:
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([], [self.sock], [], remaining)[1]:
                raise ProtocolError(f"the peer does not read: {len(data)} bytes of a message left unsent")

    def reply(self, request: Message, payload: bytes = b"", fds: Iterable[int] = ()) -> None:
        self.send(request.request, HeaderFlags.REPLY, payload, fds)

    def reply_status(self, request: Message, ok: bool) -> None:
        """REPLY_ACK: a u64 that is zero on success."""
        self.reply(request, bytes(U64(0 if ok else 1)))
