"""Where PCM I/O messages go once accepted: the data-plane interface and the data plane.

The control plane drives a data plane through five calls (``submit``, ``start``, ``stop``,
``release``, ``reset``); :class:`PcmDataPlane` hands each stream's messages to its
:class:`~pyvmm_snd.streamio.StreamIo` (period clock + host back end):

* messages are held while the stream is prepared or stopped (playback pre-buffering, the
  capture buffers queued before START, pause) and consumed one period per clock tick
  while it runs;
* STOP pauses the clock, START resumes it (no PREPARE needed); RELEASE returns every held
  message before the RELEASE response is written and closes the back end (flush);
* messages for a stream that is not prepared are returned with IO_ERR.

Pacing is not optional: the Linux driver advances its hardware pointer by one period per
completion, so completing a whole buffer at once wraps the pointer back to where it was and
ALSA sees no progress (``aplay`` fails with EIO after its timeout). Everything runs on the
device event loop and nothing blocks it, so a control request is never stuck behind audio.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Callable, Protocol, Sequence

from pyvmm_snd import iomsg
from pyvmm_snd.errors import GuestWarnings
from pyvmm_snd.spec import Status
from pyvmm_snd.stream import PcmStream, StreamState
from pyvmm_snd.streamio import StreamIo

if TYPE_CHECKING:
    from pyvmm.virtio.device import DeviceContext

    from pyvmm_snd.backends import PcmBackend
    from pyvmm_snd.iomsg import IoMessage

log = logging.getLogger(__name__)


class DataPlane(Protocol):
    def submit(self, stream: PcmStream, msg: IoMessage) -> None:
        """A valid I/O message for ``stream`` arrived."""

    def start(self, stream: PcmStream) -> None:
        """START was accepted (state is already STARTED)."""

    def stop(self, stream: PcmStream) -> None:
        """STOP was accepted (state is already STOPPED)."""

    def release(self, stream: PcmStream) -> None:
        """RELEASE: return every pending message of ``stream`` before this call returns
        (the RELEASE response is written after it)."""

    def reset(self) -> None:
        """Device reset: forget everything without completing it."""


class PcmDataPlane:
    """Per-stream clocks and back ends; see the module docstring."""

    HOLD_STATES = (StreamState.PREPARED, StreamState.STARTED, StreamState.STOPPED)

    def __init__(self, ctx: DeviceContext, streams: Sequence[PcmStream], backends: Sequence[PcmBackend | None],
                 clock: str = "realtime", gain: Callable[[int], float] = lambda stream_id: 1.0,
                 report_xrun: Callable[[int], bool] = lambda stream_id: False):
        """``gain(stream_id)``: linear gain from the stream's controls (0.0 = mute);
        ``report_xrun(stream_id)``: send an XRUN event if negotiated, True if sent."""
        self.ctx = ctx
        self.io = [StreamIo(ctx, stream, backend, clock, gain, report_xrun)
                   for stream, backend in zip(streams, backends, strict=True)]
        self._warn = GuestWarnings(log)

    def submit(self, stream: PcmStream, msg: IoMessage) -> None:
        if stream.state not in self.HOLD_STATES:
            self._warn("I/O message for stream %d in state %s (not prepared): returned with IO_ERR",
                       stream.id, stream.state.value)
            iomsg.complete(self.ctx, msg, Status.IO_ERR)
            return
        self.io[stream.id].submit(msg)

    def start(self, stream: PcmStream) -> None:
        self.io[stream.id].start()

    def stop(self, stream: PcmStream) -> None:
        self.io[stream.id].stop()

    def release(self, stream: PcmStream) -> None:
        self.io[stream.id].release()

    def reset(self) -> None:
        for io in self.io:
            io.reset()

    def close(self) -> None:
        """The VMM exits: stop every clock and flush every back end."""
        for io in self.io:
            io.close()
