"""A small AML (ACPI Machine Language) encoder: just enough to write a static DSDT.

The DSDT pyvmm needs is declarations only, no control methods: a scope with devices,
each with ``_HID``/``_UID``/``_CRS`` names, resource templates (I/O ports, fixed memory,
interrupts) and the ``\\_S5`` sleep package. Every function returns the encoded bytes
of one term, so a table reads like the ASL it stands for::

    scope("\\_SB_", [device("COM1", [name("_HID", eisa_id("PNP0501")), ...])])

Encodings follow the ACPI specification, chapter 20 ("ACPI Machine Language
Specification") and section 6.4 (resource data types). ``iasl -d`` decodes the result
(the unit tests do that).
"""

from __future__ import annotations

import re
import struct
from typing import Iterable

ZERO_OP = 0x00
ONE_OP = 0x01
ONES_OP = 0xFF
BYTE_PREFIX = 0x0A
WORD_PREFIX = 0x0B
DWORD_PREFIX = 0x0C
STRING_PREFIX = 0x0D
QWORD_PREFIX = 0x0E
NAME_OP = 0x08
SCOPE_OP = 0x10
BUFFER_OP = 0x11
PACKAGE_OP = 0x12
EXT_OP_PREFIX = 0x5B
DEVICE_OP = 0x82           # after EXT_OP_PREFIX
ROOT_CHAR = 0x5C           # '\'
DUAL_NAME_PREFIX = 0x2E
MULTI_NAME_PREFIX = 0x2F

MAX_PKG_LENGTH = (1 << 28) - 1

_NAME_SEG = re.compile(r"^[A-Z_][A-Z0-9_]{0,3}$")


class AmlError(ValueError):
    pass


# -- names and lengths ----------------------------------------------------------------

def name_seg(seg: str) -> bytes:
    """A 4-character name segment; shorter names are padded with ``_`` as ASL does."""
    if not _NAME_SEG.match(seg):
        raise AmlError(f"bad AML name segment {seg!r}")
    return seg.ljust(4, "_").encode()


def name_string(path: str) -> bytes:
    """``\\_SB_.COM1``-style paths: optional root prefix, then 1..255 dot-separated segments."""
    prefix = b""
    if path.startswith("\\"):
        prefix, path = bytes([ROOT_CHAR]), path[1:]
    segments = path.split(".") if path else []
    encoded = b"".join(name_seg(s) for s in segments)
    if not segments:
        return prefix + b"\0"          # NullName (only meaningful as "\")
    if len(segments) == 1:
        return prefix + encoded
    if len(segments) == 2:
        return prefix + bytes([DUAL_NAME_PREFIX]) + encoded
    if len(segments) > 255:
        raise AmlError(f"AML path {path!r} has too many segments")
    return prefix + bytes([MULTI_NAME_PREFIX, len(segments)]) + encoded


def pkg_length(body_len: int) -> bytes:
    """PkgLength for a body of ``body_len`` bytes; the encoded length counts itself."""
    for extra in range(4):
        total = body_len + 1 + extra
        if extra == 0 and total < 0x40:
            return bytes([total])
        if extra and total < (1 << (4 + 8 * extra)):
            out = [(extra << 6) | (total & 0x0F)]
            rest = total >> 4
            for _ in range(extra):
                out.append(rest & 0xFF)
                rest >>= 8
            return bytes(out)
    raise AmlError(f"AML package of {body_len} bytes exceeds the PkgLength range")


# -- data objects ---------------------------------------------------------------------

def integer(value: int) -> bytes:
    """The shortest encoding of an unsigned integer (Zero/One/Ones or a sized constant)."""
    if value < 0 or value >= 1 << 64:
        raise AmlError(f"AML integer {value} out of range")
    if value == 0:
        return bytes([ZERO_OP])
    if value == 1:
        return bytes([ONE_OP])
    if value <= 0xFF:
        return bytes([BYTE_PREFIX, value])
    if value <= 0xFFFF:
        return bytes([WORD_PREFIX]) + struct.pack("<H", value)
    if value <= 0xFFFF_FFFF:
        return bytes([DWORD_PREFIX]) + struct.pack("<I", value)
    return bytes([QWORD_PREFIX]) + struct.pack("<Q", value)


def string(text: str) -> bytes:
    data = text.encode("ascii")
    if b"\0" in data:
        raise AmlError("AML strings cannot contain NUL")
    return bytes([STRING_PREFIX]) + data + b"\0"


def eisa_id(text: str) -> bytes:
    """``EisaId("PNP0501")``: three letters and four hex digits compressed into a DWORD."""
    if not re.match(r"^[A-Z]{3}[0-9A-F]{4}$", text):
        raise AmlError(f"bad EISA id {text!r}")
    letters = sum(((ord(c) - 0x40) & 0x1F) << shift for c, shift in zip(text[:3], (10, 5, 0)))
    value = struct.unpack("<I", struct.pack(">HH", letters, int(text[3:], 16)))[0]
    return bytes([DWORD_PREFIX]) + struct.pack("<I", value)


def package(elements: Iterable[bytes]) -> bytes:
    items = list(elements)
    if len(items) > 255:
        raise AmlError("AML Package() holds at most 255 elements")
    body = bytes([len(items)]) + b"".join(items)
    return bytes([PACKAGE_OP]) + pkg_length(len(body)) + body


def buffer(data: bytes) -> bytes:
    body = integer(len(data)) + data
    return bytes([BUFFER_OP]) + pkg_length(len(body)) + body


# -- named objects and scopes -----------------------------------------------------------

def name(path: str, value: bytes) -> bytes:
    """``Name (path, value)``."""
    return bytes([NAME_OP]) + name_string(path) + value


def scope(path: str, terms: Iterable[bytes]) -> bytes:
    body = name_string(path) + b"".join(terms)
    return bytes([SCOPE_OP]) + pkg_length(len(body)) + body


def device(path: str, terms: Iterable[bytes]) -> bytes:
    body = name_string(path) + b"".join(terms)
    return bytes([EXT_OP_PREFIX, DEVICE_OP]) + pkg_length(len(body)) + body


# -- resource templates (ACPI 6.5, 6.4) ---------------------------------------------------

SMALL_IRQ = 0x22           # IRQ descriptor without the flags byte (IRQNoFlags)
SMALL_IO = 0x47            # I/O port descriptor, length 7
SMALL_END_TAG = 0x79
LARGE_MEMORY32_FIXED = 0x86
LARGE_EXTENDED_IRQ = 0x89

IO_DECODE16 = 0x01
MEM_READ_WRITE = 0x01
IRQ_CONSUMER = 0x01
IRQ_EDGE = 0x02
IRQ_ACTIVE_LOW = 0x04
IRQ_SHARED = 0x08


def io_port(base: int, length: int, alignment: int = 1) -> bytes:
    """``IO (Decode16, base, base, alignment, length)``: a fixed 16-bit port range."""
    return struct.pack("<BBHHBB", SMALL_IO, IO_DECODE16, base, base, alignment, length)


def irq_no_flags(*irqs: int) -> bytes:
    """``IRQNoFlags () {irqs}``: ISA IRQs, edge-triggered, active high, exclusive."""
    mask = 0
    for irq in irqs:
        if not 0 <= irq < 16:
            raise AmlError(f"ISA IRQ {irq} out of range")
        mask |= 1 << irq
    return struct.pack("<BH", SMALL_IRQ, mask)


def memory32_fixed(base: int, length: int, writable: bool = True) -> bytes:
    return struct.pack("<BHBII", LARGE_MEMORY32_FIXED, 9, MEM_READ_WRITE if writable else 0, base, length)


def interrupt(*gsis: int, edge: bool = True, active_low: bool = False, shared: bool = False) -> bytes:
    """``Interrupt (ResourceConsumer, Edge|Level, ActiveHigh|ActiveLow, Exclusive|Shared) {gsis}``."""
    if not 1 <= len(gsis) <= 255:
        raise AmlError("an Interrupt() descriptor holds 1..255 interrupts")
    flags = IRQ_CONSUMER | (IRQ_EDGE if edge else 0) | (IRQ_ACTIVE_LOW if active_low else 0) \
        | (IRQ_SHARED if shared else 0)
    body = struct.pack("<BB", flags, len(gsis)) + b"".join(struct.pack("<I", g) for g in gsis)
    return struct.pack("<BH", LARGE_EXTENDED_IRQ, len(body)) + body


def resource_template(descriptors: Iterable[bytes]) -> bytes:
    """``ResourceTemplate () {...}``: a Buffer of descriptors closed by an end tag.

    The end tag's checksum byte is 0, which the specification defines as "treat the
    checksum as correct" (what iasl emits too).
    """
    return buffer(b"".join(descriptors) + bytes([SMALL_END_TAG, 0]))
