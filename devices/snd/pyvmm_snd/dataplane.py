"""Where PCM I/O messages go once accepted: the data plane interface and a placeholder.

The control plane drives a data plane through five calls (``submit``, ``start``, ``stop``,
``release``, ``reset``). The real one (audio back ends, a per-stream period clock that paces
completions at the stream's rate) is a later piece of work; :class:`PlaceholderDataPlane`
only keeps the driver from hanging:

* playback messages are held while the stream is prepared or stopped (pre-buffering,
  pause) and completed **immediately** with OK while it runs (frames are discarded);
* capture messages are held likewise and completed **immediately** with silence while
  it runs;
* messages for a stream that is not prepared are returned with IO_ERR.

"Immediately" means no pacing: the guest sees audio run as fast as it can queue it.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Protocol

from pyvmm_snd import iomsg
from pyvmm_snd.errors import GuestWarnings
from pyvmm_snd.spec import Direction, Status
from pyvmm_snd.stream import PcmStream, StreamState

if TYPE_CHECKING:
    from pyvmm.virtio.device import DeviceContext

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


class PlaceholderDataPlane:
    """Completes I/O without pacing or audio; see the module docstring."""

    HOLD_STATES = (StreamState.PREPARED, StreamState.STOPPED)

    def __init__(self, ctx: DeviceContext):
        self.ctx = ctx
        self._warn = GuestWarnings(log)

    def submit(self, stream: PcmStream, msg: IoMessage) -> None:
        if stream.state == StreamState.STARTED:
            self._transfer(stream, msg)
        elif stream.state in self.HOLD_STATES:
            stream.pending.append(msg)
        else:
            self._warn("I/O message for stream %d in state %s (not prepared): returned with IO_ERR",
                        stream.id, stream.state.value)
            iomsg.complete(self.ctx, msg, Status.IO_ERR)

    def start(self, stream: PcmStream) -> None:
        for msg in stream.take_pending():
            self._transfer(stream, msg, notify=False)
        self._signal(stream)

    def stop(self, stream: PcmStream) -> None:
        pass

    def release(self, stream: PcmStream) -> None:
        messages = stream.take_pending()
        for msg in messages:
            iomsg.complete(self.ctx, msg, Status.OK, notify=False)
        if messages:
            log.debug("stream %d: released %d pending I/O messages", stream.id, len(messages))
            self._signal(stream)

    def reset(self) -> None:
        pass

    def _transfer(self, stream: PcmStream, msg: IoMessage, notify: bool = True) -> None:
        # PLACEHOLDER: no back end, no clock.
        frames = iomsg.silence(stream.effective_params, msg.data_len) if msg.direction == Direction.INPUT else None
        iomsg.complete(self.ctx, msg, Status.OK, frames, notify=notify)

    def _signal(self, stream: PcmStream) -> None:
        queue = iomsg.QueueIndex.TX if stream.direction == Direction.OUTPUT else iomsg.QueueIndex.RX
        self.ctx.signal_used(queue)
