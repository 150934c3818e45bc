"""A validated descriptor chain and the reader/writer that hide its descriptor boundaries.

A chain is parsed and checked once, when :meth:`SplitQueue.pop` takes it off the avail ring;
afterwards it is just two lists of zero-copy memoryviews into guest RAM (the device-readable
and device-writable buffers, in chain order; memoryviews rather than numpy views because
slicing and copying them per message runs far less code, see
:attr:`pyvmm.memory.MemoryRegion.buffer`). Devices never look at descriptors: they read
the readable part as one byte stream and write the writable part as another, however the
driver happened to split the message.
"""

from __future__ import annotations

import bisect
import ctypes
from typing import Iterator, TypeVar

import numpy as np

T = TypeVar("T", bound=ctypes.Structure)

BytesLike = bytes | bytearray | memoryview | np.ndarray


class ShortChainError(ValueError):
    """A device asked to read or write past the end of a chain's readable/writable part.

    Guest buffers that are too small for a request are the driver's fault; a device checks
    ``remaining`` first or catches this and answers with its spec's error status.
    """


def _as_bytes_array(data: BytesLike | ctypes.Structure) -> np.ndarray:
    if isinstance(data, bytes):
        return np.frombuffer(data, dtype=np.uint8)
    if isinstance(data, np.ndarray):
        return np.ascontiguousarray(data).view(np.uint8).reshape(-1)
    return np.frombuffer(memoryview(data).cast("B"), dtype=np.uint8)


class _Segments:
    """Byte positions across a list of buffers, so a range can be mapped to buffer slices."""

    __slots__ = ("buffers", "starts", "total")

    def __init__(self, buffers: list[memoryview]):
        self.buffers = buffers
        self.starts: list[int] = []
        pos = 0
        for buf in buffers:
            self.starts.append(pos)
            pos += len(buf)
        self.total = pos

    def within(self, start: int, length: int) -> memoryview | None:
        """The view of ``[start, start+length)`` if one buffer holds it all (the usual case),
        else None; the fast path of reads and writes."""
        buffers = self.buffers
        if len(buffers) == 1:
            buf = buffers[0]
            return buf[start:start + length] if start + length <= len(buf) else None
        i = bisect.bisect_right(self.starts, start) - 1
        if i < 0:
            return None
        off = start - self.starts[i]
        buf = buffers[i]
        return buf[off:off + length] if off + length <= len(buf) else None

    def pieces(self, start: int, length: int) -> Iterator[memoryview]:
        """Views covering ``[start, start+length)`` of the concatenated buffers."""
        end = start + length
        i = bisect.bisect_right(self.starts, start) - 1
        while start < end:
            buf = self.buffers[i]
            off = start - self.starts[i]
            n = min(len(buf) - off, end - start)
            if n > 0:
                yield buf[off:off + n]
                start += n
            i += 1


class DescriptorChain:
    """One driver request: the head index plus its readable and writable guest buffers."""

    __slots__ = ("head", "readable", "writable", "descriptors", "epoch", "returned", "readable_len",
                 "writable_len", "_r", "_w")

    def __init__(self, head: int, readable: list[memoryview], writable: list[memoryview],
                 descriptors: list[tuple[int, int, int]] | None = None, epoch: int = 0,
                 readable_len: int | None = None, writable_len: int | None = None):
        self.head = head
        self.epoch = epoch
        """The queue's reset count when the chain was popped: completing it after a reset is a no-op."""
        self.returned = False
        """Given back to the queue (used, or popped back); the queue counts it in flight until then."""
        self.readable = readable
        """Zero-copy byte memoryviews of the device-readable buffers, in chain order."""
        self.writable = writable
        """Zero-copy byte memoryviews of the device-writable buffers, in chain order."""
        self.descriptors = descriptors or []
        """``(guest_addr, length, flags)`` of every buffer descriptor, for tracing and debugging."""
        self.readable_len = sum(map(len, readable)) if readable_len is None else readable_len
        """Bytes in the device-readable buffers."""
        self.writable_len = sum(map(len, writable)) if writable_len is None else writable_len
        """Bytes in the device-writable buffers."""
        self._r: _Segments | None = None
        self._w: _Segments | None = None
        """Built by the first reader or writer (a device that uses the views directly never needs them)."""

    def reader(self) -> ChainReader:
        if self._r is None:
            self._r = _Segments(self.readable)
        return ChainReader(self._r)

    def writer(self) -> ChainWriter:
        if self._w is None:
            self._w = _Segments(self.writable)
        return ChainWriter(self._w)

    def __repr__(self) -> str:
        return (f"DescriptorChain(head={self.head}, readable={self.readable_len}"
                f"/{len(self.readable)} bufs, writable={self.writable_len}/{len(self.writable)} bufs)")


class ChainReader:
    """Sequential reads over a chain's device-readable bytes."""

    def __init__(self, segments: _Segments):
        self._segs = segments
        self._pos = 0

    @property
    def remaining(self) -> int:
        return self._segs.total - self._pos

    @property
    def consumed(self) -> int:
        return self._pos

    def _claim(self, n: int) -> int:
        start = self._pos
        left = self._segs.total - start
        if n < 0:
            n = left
        if n > left:
            raise ShortChainError(f"read of {n} bytes, only {left} readable bytes left")
        self._pos = start + n
        return start

    def read(self, n: int = -1) -> bytes:
        """The next ``n`` bytes (all remaining bytes if ``n`` is negative)."""
        start = self._claim(n)
        n = self._pos - start
        view = self._segs.within(start, n)
        if view is not None:
            return view.tobytes()
        return b"".join(p.tobytes() for p in self._segs.pieces(start, n))

    def read_into(self, out: np.ndarray) -> int:
        """Fill ``out`` (any contiguous array; its bytes are overwritten) and return the byte count."""
        dest = out.view(np.uint8).reshape(-1)
        start = self._claim(len(dest))
        pos = 0
        for piece in self._segs.pieces(start, len(dest)):
            dest[pos:pos + len(piece)] = piece
            pos += len(piece)
        return pos

    def read_array(self, n: int = -1) -> np.ndarray:
        """The next ``n`` bytes as a new uint8 array (a copy: the guest may rewrite its buffer)."""
        start = self._claim(n)
        n = self._pos - start
        out = np.empty(n, dtype=np.uint8)
        pos = 0
        for piece in self._segs.pieces(start, n):
            out[pos:pos + len(piece)] = piece
            pos += len(piece)
        return out

    def read_struct(self, struct_type: type[T]) -> T:
        return struct_type.from_buffer_copy(self.read(ctypes.sizeof(struct_type)))

    def skip(self, n: int) -> None:
        self._claim(n)


class ChainWriter:
    """Sequential writes over a chain's device-writable bytes, plus writes at the very end.

    ``write_at_end`` serves messages whose status sits in the last writable bytes (e.g. a
    virtio-snd capture buffer): it fills the tail and shrinks the area later ``write`` calls
    may use, so payload and status can never overlap.
    """

    def __init__(self, segments: _Segments):
        self._segs = segments
        self._pos = 0
        self._end = segments.total
        self._tail = 0

    @property
    def remaining(self) -> int:
        return self._end - self._pos

    @property
    def written(self) -> int:
        """Bytes written so far from the start plus bytes written at the end: the used length."""
        return self._pos + self._tail

    def _copy(self, start: int, src: np.ndarray) -> None:
        """``src`` (a contiguous uint8 array) into the writable bytes from ``start`` on."""
        view = self._segs.within(start, len(src))
        if view is not None:
            view[:] = src
            return
        pos = 0
        for piece in self._segs.pieces(start, len(src)):
            piece[:] = src[pos:pos + len(piece)]
            pos += len(piece)

    def write(self, data: BytesLike | ctypes.Structure) -> int:
        src = _as_bytes_array(data)
        if len(src) > self.remaining:
            raise ShortChainError(f"write of {len(src)} bytes, only {self.remaining} writable bytes left")
        self._copy(self._pos, src)
        self._pos += len(src)
        return len(src)

    def write_struct(self, value: ctypes.Structure) -> int:
        return self.write(value)

    def fill(self, n: int, value: int = 0) -> int:
        """Write ``n`` copies of the byte ``value`` (e.g. silence)."""
        if n > self.remaining:
            raise ShortChainError(f"fill of {n} bytes, only {self.remaining} writable bytes left")
        for piece in self._segs.pieces(self._pos, n):
            np.frombuffer(piece, dtype=np.uint8).fill(value)
        self._pos += n
        return n

    def write_at_end(self, data: BytesLike | ctypes.Structure) -> int:
        """Write ``data`` so that it ends at the end of the still-unused writable area."""
        if type(data) is bytes and self._end == self._segs.total and self._segs.buffers:
            last = self._segs.buffers[-1]
            n = len(data)
            if n <= len(last) and n <= self._end - self._pos:  # a status in the last buffer: the usual case
                last[len(last) - n:] = data
                self._end -= n
                self._tail += n
                return n
        src = _as_bytes_array(data)
        n = len(src)
        if n > self._end - self._pos:
            raise ShortChainError(f"tail write of {n} bytes, only {self.remaining} writable bytes left")
        self._end -= n
        self._copy(self._end, src)
        self._tail += n
        return n
