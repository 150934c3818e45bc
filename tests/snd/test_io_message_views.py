"""Playback messages in every descriptor layout play the same frames and get the same status.

:func:`pyvmm_snd.iomsg.parse` keeps the frames and the status as direct views when each lies in
one buffer (Linux's layout) and leaves them to the chain's reader and writer otherwise; both
ways must give the back end the same bytes and the driver the same answer."""

from __future__ import annotations

import pytest

from pyvmm_snd import spec
from pyvmm_snd.spec import QueueIndex, RequestCode, Status
from snd_driver import SndDriver

PERIOD = 4096
FRAMES = bytes(range(256)) * (PERIOD // 256)
XFER = bytes(spec.PcmXfer(stream_id=0))


@pytest.mark.parametrize("readable, writable, direct_frames, direct_status", [
    pytest.param([XFER, FRAMES], [8], True, True, id="linux"),
    pytest.param([XFER + FRAMES], [8], True, True, id="header-and-frames-in-one"),
    pytest.param([XFER, FRAMES[:100], FRAMES[100:]], [8], True, True, id="frames-split-at-a-page"),
    pytest.param([XFER + FRAMES[:100], FRAMES[100:]], [8], True, True, id="header-and-some-frames-in-one"),
    pytest.param([XFER, b"", FRAMES], [8], True, True, id="empty-descriptor-between"),
    pytest.param([XFER[:2], XFER[2:] + FRAMES], [8], False, True, id="header-split"),
    pytest.param([XFER, FRAMES], [3, 5], True, False, id="status-split"),
    pytest.param([XFER, FRAMES], [16], True, True, id="extra-writable-bytes"),
    pytest.param([XFER, FRAMES], [12, 4], True, False, id="status-across-the-last-two"),
])
def test_every_layout_plays_the_frames_and_returns_the_status(tmp_path, readable, writable, direct_frames,
                                                              direct_status):
    with SndDriver(options={"backend": "wav", "backend.path": str(tmp_path / "o.wav"),
                            "capture.backend": "null"}) as d:
        d.start()
        assert d.set_params(0, buffer_bytes=4 * PERIOD, period_bytes=PERIOD) == Status.OK
        assert d.pcm(RequestCode.PCM_PREPARE, 0) == Status.OK
        played = []
        sink = d.device.backends[0]
        inner = sink.write
        sink.write = lambda data: played.append(bytes(data)) or inner(data)
        tx = d.queues[QueueIndex.TX]
        head = tx.add(readable, writable)
        assert d.kick(QueueIndex.TX) == []
        [msg] = d.device.dataplane.io[0].held
        assert (msg.frames is not None, msg.status is not None) == (direct_frames, direct_status)
        assert d.pcm(RequestCode.PCM_START, 0) == Status.OK
        d.advance(PERIOD / (48000 * 4) + 1e-6)
        [entry] = d.collect(QueueIndex.TX)
        assert entry.id == head and entry.len == 8  # only the status counts as written
        assert b"".join(played) == FRAMES
        status, _latency = spec.PCM_STATUS.unpack(entry.writable[-8:])
        assert status == Status.OK and entry.writable[:-8] == b"\xee" * (sum(writable) - 8)  # the rest untouched
