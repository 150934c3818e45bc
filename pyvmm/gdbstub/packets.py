"""GDB remote serial protocol framing: ``$payload#xx`` packets, acks, escapes, Ctrl-C.

A :class:`PacketReader` turns the bytes a client sends into events: complete packets
(checksum verified, binary escapes left to the command that expects binary data), the
interrupt byte ``0x03`` and acks. Everything a client can make us buffer is bounded by
``max_packet``: a longer packet is an error that ends the connection, never memory growth.
"""

from __future__ import annotations

from dataclasses import dataclass

INTERRUPT = 0x03
#: What we announce as ``PacketSize`` (payload bytes gdb may send us in one packet).
PACKET_SIZE = 0x4000
#: Slack over the announced size before a client is cut off (escapes, a checksum, a sloppy client).
MAX_PACKET = PACKET_SIZE + 256

_ESCAPED = frozenset(b"$#}*")


class ProtocolError(Exception):
    """The client broke the framing in a way we do not recover from (e.g. an oversized packet)."""


@dataclass(frozen=True)
class Packet:
    payload: bytes


@dataclass(frozen=True)
class Interrupt:
    """Ctrl-C from the client (``0x03`` outside a packet)."""


@dataclass(frozen=True)
class Ack:
    ok: bool  # '+' or '-'


def checksum(payload: bytes) -> int:
    return sum(payload) & 0xFF


def escape(data: bytes) -> bytes:
    """Binary data in a reply: ``$ # } *`` become ``}`` + (byte ^ 0x20)."""
    if not any(b in _ESCAPED for b in data):
        return data
    out = bytearray()
    for b in data:
        if b in _ESCAPED:
            out += bytes((0x7D, b ^ 0x20))
        else:
            out.append(b)
    return bytes(out)


def unescape(data: bytes) -> bytes:
    """Binary data from the client (``X`` packets): undo ``}`` escapes."""
    if 0x7D not in data:
        return data
    out, it = bytearray(), iter(data)
    for b in it:
        if b == 0x7D:
            nxt = next(it, None)
            if nxt is None:
                raise ValueError("escape at end of binary data")
            out.append(nxt ^ 0x20)
        else:
            out.append(b)
    return bytes(out)


def frame(payload: bytes) -> bytes:
    """One packet on the wire (the payload must already be escaped where binary)."""
    return b"$" + payload + b"#" + b"%02x" % checksum(payload)


class PacketReader:
    """Incremental parser of the client's byte stream."""

    def __init__(self, max_packet: int = MAX_PACKET):
        self.max_packet = max_packet
        self._buf = bytearray()
        self._in_packet = False
        self.bad_checksums = 0

    def feed(self, data: bytes) -> list[Packet | Interrupt | Ack]:
        events: list[Packet | Interrupt | Ack] = []
        buf = self._buf
        for b in data:
            if not self._in_packet:
                if b == 0x24:  # '$'
                    self._in_packet = True
                    buf.clear()
                elif b == INTERRUPT:
                    events.append(Interrupt())
                elif b == 0x2B:
                    events.append(Ack(True))
                elif b == 0x2D:
                    events.append(Ack(False))
                # anything else between packets is noise: ignored, as gdbserver does
                continue
            buf.append(b)
            if len(buf) > self.max_packet + 3:
                self._in_packet = False
                buf.clear()
                raise ProtocolError(f"packet longer than {self.max_packet} bytes")
            if len(buf) >= 3 and buf[-3] == 0x23 and not _escaped_hash(buf):  # '#xx'
                payload, given = bytes(buf[:-3]), bytes(buf[-2:])
                self._in_packet = False
                buf.clear()
                try:
                    ok = int(given, 16) == checksum(payload)
                except ValueError:
                    ok = False
                if ok:
                    events.append(Packet(payload))
                else:
                    self.bad_checksums += 1
                    events.append(Ack(False))  # tells the session to ask for a resend
        return events


def _escaped_hash(buf: bytearray) -> bool:
    """True when the '#' three bytes from the end is an escaped data byte (preceded by an odd run of '}')."""
    i, run = len(buf) - 4, 0
    while i >= 0 and buf[i] == 0x7D:
        run += 1
        i -= 1
    return run % 2 == 1


def hex_bytes(data: bytes) -> bytes:
    return data.hex().encode()


def parse_hex(text: bytes | str) -> int:
    """A hex number from a packet field; ValueError if empty or malformed."""
    if isinstance(text, bytes):
        text = text.decode("ascii", "replace")
    if not text:
        raise ValueError("empty number")
    return int(text, 16)
