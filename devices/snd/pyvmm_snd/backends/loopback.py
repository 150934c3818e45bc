"""``loopback``: a named in-process pipe from playback streams to capture streams.

Streams whose back-end options name the same pipe (``backend=loopback,backend.name=NAME``)
are connected: what a playback stream writes, a capture stream reads. The pipe holds up
to ``capacity_ms`` of audio in the writer's format; when it is full the oldest frames are
dropped (counted as overflow), and a read that finds too little gets silence for the rest
(counted as underrun). A reader with another format or channel count gets the frames
converted (:mod:`pyvmm_snd.pcm_format`); a different rate is not resampled (logged once).
"""

from __future__ import annotations

import logging

import numpy as np

from pyvmm_snd import pcm_format
from pyvmm_snd.backends.base import BackendParams, PcmBackend, option_float
from pyvmm_snd.backends.ring import ByteRing
from pyvmm_snd.spec import Direction

log = logging.getLogger(__name__)


class LoopbackPipe:
    """The shared buffer behind one pipe name; its format is the last opened writer's."""

    def __init__(self, name: str):
        self.name = name
        self.ring: ByteRing | None = None
        self.params: BackendParams | None = None

    def configure(self, params: BackendParams, capacity: int) -> None:
        """A writer opened: keep the buffered frames if the format is unchanged, else start over."""
        same = (self.params is not None and self.ring is not None
                and (params.format, params.channels, params.rate)
                == (self.params.format, self.params.channels, self.params.rate)
                and self.ring.capacity == capacity - capacity % params.frame_bytes)
        self.params = params
        if not same:
            if self.ring is not None and len(self.ring):
                log.debug("loopback %s: format changed, %d buffered bytes flushed", self.name, len(self.ring))
            self.ring = ByteRing(capacity, params.frame_bytes)


_PIPES: dict[str, LoopbackPipe] = {}


def loopback_pipe(name: str) -> LoopbackPipe:
    """The process-wide pipe called ``name`` (created on first use)."""
    if name not in _PIPES:
        _PIPES[name] = LoopbackPipe(name)
    return _PIPES[name]


class LoopbackBackend(PcmBackend):
    NAME = "loopback"
    OPTIONS = {
        "name": "pipe name pairing playback and capture streams (default 'default')",
        "capacity_ms": "audio the pipe holds before dropping the oldest (default 500)",
    }

    def __init__(self, options: dict[str, str], direction: Direction):
        super().__init__(options, direction)
        self.pipe = loopback_pipe(options.get("name", "default"))
        self.capacity_ms = option_float(self.NAME, options, "capacity_ms", 500.0, 1.0, 60000.0)
        self._warned_rate = False

    def open(self, params: BackendParams) -> None:
        super().open(params)
        if self.direction == Direction.OUTPUT:
            capacity = max(params.bytes_for(self.capacity_ms / 1000), 2 * params.period_bytes)
            self.pipe.configure(params, capacity)

    def write(self, data: bytes) -> None:
        self._require_open()
        self.stats.written += len(data)
        assert self.pipe.ring is not None
        self.stats.overflow += self.pipe.ring.write(data)

    def read(self, nbytes: int) -> bytes:
        params = self._require_open()
        self.stats.read += nbytes
        source, ring = self.pipe.params, self.pipe.ring
        if source is None or ring is None:
            return self.pad(b"", nbytes)
        if source.rate != params.rate and not self._warned_rate:
            self._warned_rate = True
            log.warning("loopback %s: writer runs at %d Hz, reader at %d Hz: not resampled",
                        self.pipe.name, source.rate, params.rate)
        frames = nbytes // params.frame_bytes
        data = ring.read(frames * source.frame_bytes)
        return self.pad(convert_frames(data, source, params), nbytes)

    @property
    def latency_bytes(self) -> int:
        ring, source, params = self.pipe.ring, self.pipe.params, self.params
        if ring is None or source is None or params is None:
            return 0
        return len(ring) // source.frame_bytes * params.frame_bytes

    def describe(self) -> str:
        return f"loopback {self.pipe.name}"


def convert_frames(data: bytes, src: BackendParams, dst: BackendParams) -> bytes:
    """Frames in ``src``'s format and channel count re-encoded for ``dst`` (no resampling)."""
    if (src.format, src.channels) == (dst.format, dst.channels) or not data:
        return data
    data = pcm_format.convert(data, src.format, dst.format)
    if src.channels == dst.channels:
        return data
    width = pcm_format.sample_format(dst.format).container
    samples = np.frombuffer(data, dtype=np.uint8).reshape(-1, src.channels, width)
    return pcm_format.remix_channels(samples, dst.channels).tobytes()
