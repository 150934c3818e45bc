"""PCM I/O messages on the tx and rx queues: parsing a chain and returning it to the driver.

A message is ``xfer`` header (readable), frames (readable for playback, writable for
capture), then an 8-byte ``pcm_status`` in the last writable bytes. Descriptor boundaries
are irrelevant: the chain reader/writer hide them. Linux gives each part its own descriptor,
so :func:`parse` also keeps the frames' buffers and the status as direct views when the header
sits in the first buffer and the status in the last: consuming a period then runs a few lines
instead of a reader and a writer, which is most of a period's cost when the loop wakes with
cold caches (README, the data path).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from pyvmm_snd import spec
from pyvmm_snd.errors import bad_msg
from pyvmm_snd.spec import Direction, QueueIndex, Status

if TYPE_CHECKING:
    from pyvmm.events import EventSink
    from pyvmm.virtio.chain import ChainWriter, DescriptorChain
    from pyvmm.virtio.device import DeviceContext

    from pyvmm_snd.stream import PcmParams

log = logging.getLogger(__name__)

XFER_SIZE = 4
STATUS_SIZE = 8

DIR_NAMES = {Direction.OUTPUT: "playback", Direction.INPUT: "capture"}


@dataclass(eq=False, slots=True)
class IoMessage:
    queue_index: QueueIndex
    chain: DescriptorChain
    stream_id: int
    data_len: int
    """Playback: frame bytes to consume; capture: frame bytes to fill."""
    sink: EventSink | None = None
    """Set when I/O of this stream is traced: :func:`complete` records the completion."""
    queued_t: float = 0.0
    """Trace time (seconds since VM start) when the device accepted the message."""
    deadline: float | None = None
    """Monotonic time the period clock meant to complete it (None: no real-time clock)."""
    frames: list[memoryview] | None = None
    """Playback: the buffers holding the frames, in order, when the header sits in the first
    buffer (always with Linux, which may split the frames at a page boundary); None: read them
    through the chain's reader."""
    status: memoryview | None = None
    """The status bytes when they lie in the last writable buffer (else the chain's writer
    puts them there)."""

    @property
    def direction(self) -> Direction:
        return Direction.OUTPUT if self.queue_index == QueueIndex.TX else Direction.INPUT


def parse(queue_index: QueueIndex, chain: DescriptorChain) -> IoMessage:
    """Raises RequestError(BAD_MSG) for a chain that is not a well-formed I/O message."""
    readable, writable = chain.readable_len, chain.writable_len
    if readable < XFER_SIZE:
        raise bad_msg(f"I/O message with {readable} readable bytes, needs a {XFER_SIZE}-byte header")
    if writable < STATUS_SIZE:
        raise bad_msg(f"I/O message with {writable} writable bytes, needs an {STATUS_SIZE}-byte status")
    playback = queue_index == QueueIndex.TX
    buffers = chain.readable
    first = buffers[0]
    frames = None
    if len(first) >= XFER_SIZE:  # Linux: the header is its own descriptor
        (stream_id,) = spec.PCM_XFER.unpack_from(first)
        if playback:
            frames = buffers[1:] if len(first) == XFER_SIZE else [first[XFER_SIZE:], *buffers[1:]]
    else:
        (stream_id,) = spec.PCM_XFER.unpack(chain.reader().read(XFER_SIZE))
    last = chain.writable[-1]
    status = last[len(last) - STATUS_SIZE:] if len(last) >= STATUS_SIZE else None
    if playback:
        # Extra writable bytes before the status are tolerated (and left untouched).
        return IoMessage(queue_index, chain, stream_id, readable - XFER_SIZE, frames=frames, status=status)
    # Extra readable bytes after the header are tolerated (and ignored).
    return IoMessage(queue_index, chain, stream_id, writable - STATUS_SIZE, status=status)


def silence(params: PcmParams, nbytes: int) -> np.ndarray:
    """``nbytes`` of silence in the stream's sample format."""
    pattern = np.frombuffer(spec.SAMPLE_LAYOUTS[params.format].silence, dtype=np.uint8)
    return np.resize(pattern, nbytes)


def complete(ctx: DeviceContext, msg: IoMessage, status: Status, latency_bytes: int = 0, notify: bool = True,
             writer: ChainWriter | None = None) -> None:
    """Return ``msg`` with ``status``; ``writer``: the one capture frames were written with
    (the used length then counts them, per spec)."""
    data = spec.PCM_STATUS.pack(status, latency_bytes)
    if writer is None and msg.status is not None:  # nothing but the status is written
        msg.status[:] = data
        written = STATUS_SIZE
    else:
        writer = writer or msg.chain.writer()
        writer.write_at_end(data)
        written = writer.written
    if log.isEnabledFor(5):
        log.log(5, "I/O stream %d %s -> %s used=%d", msg.stream_id, msg.direction.name, status.name, written)
    if msg.sink is not None:
        now = msg.sink.since_start()
        deadline = None if msg.deadline is None else msg.sink.since_start(msg.deadline)
        msg.sink.trace("io", "complete", stream=msg.stream_id, dir=DIR_NAMES[msg.direction], bytes=msg.data_len,
                       status=status.name, latency_bytes=latency_bytes, queued_t=round(msg.queued_t, 6),
                       deadline_t=None if deadline is None else round(deadline, 6),
                       late_ms=None if deadline is None else round((now - deadline) * 1e3, 3))
    ctx.complete(msg.queue_index, msg.chain, written, notify=notify)


def reject(ctx: DeviceContext, queue_index: QueueIndex, chain: DescriptorChain, status: Status) -> None:
    """Return a message that could not be accepted: status if there is room for it, else
    nothing (the caller signals the driver)."""
    writer = chain.writer()
    if chain.writable_len >= STATUS_SIZE:
        writer.write_at_end(spec.PCM_STATUS.pack(status, 0))
    ctx.complete(queue_index, chain, writer.written, notify=False)
