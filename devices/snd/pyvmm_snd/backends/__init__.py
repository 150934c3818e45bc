"""Host audio back ends of the virtio-snd data plane, selected by ``backend=NAME``.

``--device virtio-snd,backend=wav,backend.path=out.wav``: the topology passes the
``backend.*`` options (prefix removed) to :func:`create_backend`, once per stream.

=========  ==================================================================================
null       playback discarded, capture silence
wav        playback recorded to ``path``; capture read from ``input`` (see :mod:`.wav`)
tone       capture: a sine (``frequency``, ``amplitude``); playback discarded
loopback   playback streams feed capture streams with the same ``name``
pyaudio    the host sound card through PortAudio (``device``, ``buffer_ms``)
=========  ==================================================================================
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from pyvmm.errors import VmmError

from pyvmm_snd.backends.base import BackendError, BackendParams, BackendStats, PcmBackend
from pyvmm_snd.backends.loopback import LoopbackBackend
from pyvmm_snd.backends.null import NullBackend
from pyvmm_snd.backends.pyaudio_backend import PyAudioBackend  # PortAudio itself loads on first use
from pyvmm_snd.backends.tone import ToneBackend
from pyvmm_snd.backends.wav import OPTIONS as WAV_OPTIONS
from pyvmm_snd.backends.wav import create_wav_backend
from pyvmm_snd.spec import Direction

__all__ = ["BACKENDS", "BackendError", "BackendParams", "BackendStats", "PcmBackend", "create_backend",
           "describe_backends"]


@dataclass(frozen=True)
class BackendType:
    name: str
    help: str
    options: dict[str, str]
    factory: Callable[..., PcmBackend]
    """``factory(options, direction, stream_id, claim)``."""


def _simple(cls: type[PcmBackend]) -> Callable[..., PcmBackend]:
    return lambda options, direction, stream_id, claim: cls(options, direction)



BACKENDS: dict[str, BackendType] = {
    t.name: t for t in (
        BackendType("null", "playback discarded, capture silence", NullBackend.OPTIONS, _simple(NullBackend)),
        BackendType("wav", "playback to WAV files, capture from a WAV file", WAV_OPTIONS, create_wav_backend),
        BackendType("tone", "capture a sine wave; playback discarded", ToneBackend.OPTIONS, _simple(ToneBackend)),
        BackendType("loopback", "playback streams feed capture streams of the same pipe name",
                    LoopbackBackend.OPTIONS, _simple(LoopbackBackend)),
        BackendType("pyaudio", "the host sound card through PortAudio", PyAudioBackend.OPTIONS,
                    _simple(PyAudioBackend)),
    )
}


def create_backend(name: str, options: dict[str, str], direction: Direction,
                   stream_id: int | None = None, claim: bool = True) -> PcmBackend:
    """A back end for one stream; a one-line :class:`VmmError` for an unknown back end, a bad
    option or a host resource it could never use (an unwritable WAV path).

    ``stream_id`` (optional) lets back ends that name host resources after the stream
    (wav files) check them now rather than when the guest starts playing; with ``claim`` the
    resource is also reserved now, so two streams naming the same file is a start-up error.
    """
    kind = BACKENDS.get(name)
    if kind is None:
        raise VmmError(f"virtio-snd: unknown backend {name!r} (known: {', '.join(BACKENDS)})")
    unknown = sorted(set(options) - set(kind.options))
    if unknown:
        known = ", ".join(kind.options) or "none"
        raise VmmError(f"virtio-snd backend {name}: unknown option {unknown[0]!r} (known: {known})")
    return kind.factory(dict(options), Direction(direction), stream_id, claim)


def describe_backends() -> str:
    """Help text: every back end and its options (``backend.KEY=VALUE``)."""
    lines = ["audio back ends (backend=NAME, options as backend.KEY=VALUE):"]
    for kind in BACKENDS.values():
        lines.append(f"  {kind.name:<9} {kind.help}")
        for key, text in kind.options.items():
            lines.append(f"      {key:<12} {text}")
    return "\n".join(lines)
