"""QMP on the wire: splitting the byte stream into JSON objects, and the messages we send.

QMP (QEMU's ``docs/interop/qmp-spec``) is a stream of JSON objects, not lines: a client may
send several objects in one write or one object in several. :class:`JsonSplitter` finds
object boundaries with a small lexer (strings and escapes, nesting depth), as QEMU's
json-streamer does, and bounds what a client can make the server hold: one message is at
most :data:`MAX_MESSAGE_BYTES` and :data:`MAX_NESTING` deep; beyond that the client is told
why and disconnected (the stream cannot be resynchronised reliably).

Server messages: the greeting, ``{"return": ...}`` and ``{"error": {"class", "desc"}}``
(each with the client's ``id`` when it sent one) and events
``{"event", "data", "timestamp": {"seconds", "microseconds"}}``.
"""

from __future__ import annotations

import json
from typing import Any

from pyvmm.events import Event

MAX_MESSAGE_BYTES = 64 * 1024
"""Largest JSON object a client may send (every command here fits in a few hundred bytes)."""
MAX_NESTING = 32
"""Deepest ``{``/``[`` nesting a client may send."""

# Error classes (QEMU's QapiErrorClass).
GENERIC_ERROR = "GenericError"
COMMAND_NOT_FOUND = "CommandNotFound"
DEVICE_NOT_FOUND = "DeviceNotFound"
DEVICE_NOT_ACTIVE = "DeviceNotActive"


class QmpError(Exception):
    """A command failed: becomes ``{"error": {"class": error_class, "desc": str(self)}}``."""

    def __init__(self, desc: str, error_class: str = GENERIC_ERROR):
        super().__init__(desc)
        self.error_class = error_class


class FramingError(Exception):
    """The client's byte stream cannot be split into messages any more (too big, too deep)."""


class JsonSplitter:
    """Feed bytes, get complete top-level JSON texts (``bytes``), bounded (module docstring).

    Whitespace between objects is skipped. A stray character outside any object is returned
    as a one-byte "message" so that parsing reports it, as QEMU does.
    """

    def __init__(self, max_bytes: int = MAX_MESSAGE_BYTES, max_nesting: int = MAX_NESTING):
        self.max_bytes = max_bytes
        self.max_nesting = max_nesting
        self._buf = bytearray()
        self._depth = 0
        self._in_string = False
        self._escape = False

    def feed(self, data: bytes) -> list[bytes]:
        messages = []
        for byte in data:
            if self._depth == 0 and not self._buf:
                if byte in b" \t\r\n":
                    continue
                if byte not in b"{[":
                    messages.append(bytes([byte]))
                    continue
            self._buf.append(byte)
            if len(self._buf) > self.max_bytes:
                raise FramingError(f"message longer than {self.max_bytes} bytes")
            if self._in_string:
                if self._escape:
                    self._escape = False
                elif byte == 0x5C:  # backslash
                    self._escape = True
                elif byte == 0x22:  # quote
                    self._in_string = False
            elif byte == 0x22:
                self._in_string = True
            elif byte in b"{[":
                self._depth += 1
                if self._depth > self.max_nesting:
                    raise FramingError(f"message nested deeper than {self.max_nesting} levels")
            elif byte in b"}]":
                self._depth -= 1
                if self._depth == 0:
                    messages.append(bytes(self._buf))
                    self._buf.clear()
        return messages


def encode(message: dict[str, Any]) -> bytes:
    """One server message on the wire (QEMU ends each with CRLF)."""
    return json.dumps(message, separators=(", ", ": ")).encode() + b"\r\n"


def greeting(version: dict[str, Any]) -> dict[str, Any]:
    """The greeting: no optional capabilities (no out-of-band execution)."""
    return {"QMP": {"version": version, "capabilities": []}}


def success(result: Any, msg_id: Any = None, has_id: bool = False) -> dict[str, Any]:
    reply: dict[str, Any] = {"return": {} if result is None else result}
    if has_id:
        reply["id"] = msg_id
    return reply


def failure(error_class: str, desc: str, msg_id: Any = None, has_id: bool = False) -> dict[str, Any]:
    reply: dict[str, Any] = {"error": {"class": error_class, "desc": desc}}
    if has_id:
        reply["id"] = msg_id
    return reply


def event_message(event: Event) -> dict[str, Any]:
    seconds = int(event.wall_time)
    message: dict[str, Any] = {"event": event.name}
    if event.data:
        message["data"] = event.data
    message["timestamp"] = {"seconds": seconds, "microseconds": int((event.wall_time - seconds) * 1e6)}
    return message
