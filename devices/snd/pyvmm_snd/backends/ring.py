"""A bounded byte FIFO that drops the oldest bytes when full, safe between two threads.

Used where a producer and a consumer run at their own pace: the loopback back end
(playback stream -> capture stream) and the PortAudio back end (event loop <-> PortAudio's
callback thread). Drops are whole ``align``-byte units so frames never tear.
"""

from __future__ import annotations

import threading


class ByteRing:
    def __init__(self, capacity: int, align: int = 1):
        if align < 1 or capacity < align:
            raise ValueError(f"ring capacity {capacity} smaller than one {align}-byte frame")
        self.align = align
        self.capacity = capacity - capacity % align
        self._data = bytearray()
        self._lock = threading.Lock()
        self.dropped = 0
        """Bytes discarded because the ring was full (overflow)."""
        self.short = 0
        """Bytes asked for but not available (underflow)."""

    def __len__(self) -> int:
        return len(self._data)

    def write(self, data: bytes) -> int:
        """Append ``data``; returns the number of (oldest) bytes dropped to make room."""
        with self._lock:
            self._data += data
            excess = len(self._data) - self.capacity
            if excess <= 0:
                return 0
            excess += -excess % self.align
            del self._data[:excess]
            self.dropped += excess
            return excess

    def read(self, nbytes: int) -> bytes:
        """Up to ``nbytes`` (whole units), oldest first; a shortfall is counted in :attr:`short`."""
        with self._lock:
            take = min(nbytes, len(self._data))
            take -= take % self.align
            out = bytes(self._data[:take])
            del self._data[:take]
            self.short += nbytes - take
            return out

    def clear(self) -> int:
        with self._lock:
            n = len(self._data)
            self._data.clear()
            return n
