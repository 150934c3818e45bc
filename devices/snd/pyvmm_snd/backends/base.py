"""The host audio back-end interface the data plane drives, one instance per PCM stream.

Life of a back end (all calls on the device event loop thread):

* created at start-up by :func:`pyvmm_snd.backends.create_backend` from the
  ``backend.KEY=VALUE`` options; bad options raise :class:`~pyvmm.errors.VmmError` then,
  not when the guest first plays;
* :meth:`PcmBackend.open` when a run begins (the device knows the stream's final
  parameters); :class:`BackendError` if the host cannot do it (the data plane logs it and
  carries on without the host, it never crashes the VMM);
* :meth:`~PcmBackend.write` one period per call (playback) or :meth:`~PcmBackend.read`
  one period per call (capture); **neither may block**: playback accepts the bytes (a
  bounded buffer drops the oldest and counts), capture returns what is available padded
  with silence and counts the shortfall;
* :meth:`~PcmBackend.close` at the end of the run (flush; idempotent). ``open`` may
  follow again, with the same or new parameters.
"""

from __future__ import annotations

from abc import ABC
from dataclasses import dataclass, field
from typing import ClassVar

from pyvmm.errors import VmmError

from pyvmm_snd import pcm_format
from pyvmm_snd.spec import Direction, PcmFormat


class BackendError(VmmError):
    """The host side of a stream failed (device vanished, file unwritable, unsupported rate)."""


@dataclass(frozen=True)
class BackendParams:
    """What a back end needs to know about a stream's run (the data-plane side of SET_PARAMS)."""

    stream_id: int
    direction: Direction
    channels: int
    format: PcmFormat
    rate: int
    """Frames per second (Hz, not the virtio rate index)."""
    period_bytes: int
    buffer_bytes: int

    def __post_init__(self) -> None:
        pcm_format.sample_format(self.format)  # ValueError for a format the data plane cannot handle
        if self.channels < 1 or self.rate < 1 or self.period_bytes < 1 or self.buffer_bytes < self.period_bytes:
            raise ValueError(f"impossible stream parameters: {self}")

    @property
    def frame_bytes(self) -> int:
        return pcm_format.frame_bytes(self.format, self.channels)

    @property
    def period_frames(self) -> int:
        return self.period_bytes // self.frame_bytes

    @property
    def period_seconds(self) -> float:
        return self.period_frames / self.rate

    def bytes_for(self, seconds: float) -> int:
        """Whole frames' worth of bytes lasting ``seconds``."""
        return round(seconds * self.rate) * self.frame_bytes

    @classmethod
    def from_stream(cls, stream_id: int, direction: Direction, params) -> BackendParams:
        """From the control plane's ``pyvmm_snd.stream.PcmParams`` (any object with ``channels``,
        ``format``, ``rate_hz``, ``period_bytes`` and ``buffer_bytes``)."""
        return cls(stream_id, Direction(direction), params.channels, PcmFormat(params.format), params.rate_hz,
                   params.period_bytes, params.buffer_bytes)

    def __str__(self) -> str:
        return (f"stream {self.stream_id} {self.direction.name.lower()} {self.channels}ch {self.format.name}"
                f" {self.rate}Hz period={self.period_bytes}")


@dataclass
class BackendStats:
    """Counters in bytes. ``underrun``: silence that stood in for missing audio (capture
    shortfall, or :meth:`PcmBackend.play_silence` / a host callback finding nothing to play);
    ``overflow``: audio dropped because a bounded buffer was full."""

    written: int = 0
    read: int = 0
    underrun: int = 0
    overflow: int = 0
    events: dict[str, int] = field(default_factory=dict)
    """Back-end specific counters (``files``, ``callbacks``, ...)."""

    def count(self, name: str, n: int = 1) -> None:
        self.events[name] = self.events.get(name, 0) + n


class PcmBackend(ABC):
    """One stream's host side. Subclasses set :attr:`NAME`, :attr:`OPTIONS` and override
    what their direction needs; the defaults discard playback and capture silence."""

    NAME: ClassVar[str]
    OPTIONS: ClassVar[dict[str, str]] = {}
    """Option name -> one-line help (the ``backend.`` prefix is not part of the name)."""

    def __init__(self, options: dict[str, str], direction: Direction):
        self.options = dict(options)
        self.direction = Direction(direction)
        self.params: BackendParams | None = None
        self.stats = BackendStats()

    # -- lifecycle --------------------------------------------------------------------------

    def open(self, params: BackendParams) -> None:
        if params.direction != self.direction:
            raise BackendError(f"{self.NAME}: {params} opened on a {self.direction.name.lower()} back end")
        self.params = params

    def close(self) -> None:
        self.params = None

    @property
    def is_open(self) -> bool:
        return self.params is not None

    # -- data -----------------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        """Take one period of playback frames; must not block."""
        self._require_open()
        self.stats.written += len(data)

    def play_silence(self, nbytes: int) -> None:
        """Playback underrun: the period clock needs a period and the guest queued none.
        The host gets silence (never a replay of old data), counted as ``underrun``."""
        self.stats.underrun += nbytes
        self.write(self.silence(nbytes))

    def read(self, nbytes: int) -> bytes:
        """Exactly ``nbytes`` of capture frames; must not block (silence fills a shortfall)."""
        self.stats.read += nbytes
        return self.silence(nbytes)

    @property
    def latency_bytes(self) -> int:
        """Bytes accepted but not yet audible (playback) or recorded but not yet read (capture)."""
        return 0

    # -- helpers -----------------------------------------------------------------------------------

    def _require_open(self) -> BackendParams:
        if self.params is None:
            raise BackendError(f"{self.NAME}: stream is not open")
        return self.params

    def silence(self, nbytes: int) -> bytes:
        return pcm_format.silence(self._require_open().format, nbytes)

    def pad(self, data: bytes, nbytes: int) -> bytes:
        """``data`` cut or padded with silence to ``nbytes``, counting a shortfall as underrun."""
        if len(data) >= nbytes:
            return bytes(data[:nbytes])
        self.stats.underrun += nbytes - len(data)
        return bytes(data) + self.silence(nbytes - len(data))

    def describe(self) -> str:
        return self.NAME


def option_flag(backend: str, options: dict[str, str], key: str, default: bool) -> bool:
    text = options.get(key)
    if text is None:
        return default
    value = {"on": True, "yes": True, "true": True, "1": True,
             "off": False, "no": False, "false": False, "0": False}.get(text.strip().lower())
    if value is None:
        raise VmmError(f"virtio-snd backend {backend}: {key}={text!r} is not on/off")
    return value


def option_float(backend: str, options: dict[str, str], key: str, default: float,
                 low: float, high: float) -> float:
    text = options.get(key)
    if text is None:
        return default
    try:
        value = float(text)
    except ValueError:
        raise VmmError(f"virtio-snd backend {backend}: {key}={text!r} is not a number") from None
    if not low <= value <= high:
        raise VmmError(f"virtio-snd backend {backend}: {key}={text} is outside {low:g}..{high:g}")
    return value
