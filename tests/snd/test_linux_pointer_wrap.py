"""The Linux driver's hardware pointer must never wrap a whole buffer unseen.

The driver advances hw_ptr by one period per completed I/O message and declares ALSA's BATCH
mode, which skips the jiffies plausibility check. If the device completes every message of a
buffer before the driver's period-elapsed work runs (a busy guest), hw_ptr lands exactly
where it was: ALSA sees no progress, the application never re-queues, and ``arecord`` fails
with EIO after 10 s. Seen with the default guest under host load (``arecord -d 1``:
"overrun!!!" then "read error: Input/output error").
"""

from __future__ import annotations

from pyvmm_snd.spec import QueueIndex, RequestCode, Status
from snd_driver import SndDriver

PERIOD = 4096
PERIODS = 4


def test_capture_never_completes_a_whole_buffer_without_a_new_buffer():
    with SndDriver() as d:
        d.start()
        assert d.set_params(1, buffer_bytes=PERIOD * PERIODS, period_bytes=PERIOD) == Status.OK
        assert d.pcm(RequestCode.PCM_PREPARE, 1) == Status.OK
        for _ in range(PERIODS):  # what virtsnd_pcm_trigger(START) queues for capture
            d.add_rx(1, PERIOD)
        d.kick(QueueIndex.RX)
        assert d.pcm(RequestCode.PCM_START, 1) == Status.OK
        d.advance(10.0)  # the guest is too busy to read anything
        completed = d.collect(QueueIndex.RX)
        assert len(completed) <= PERIODS - 1
        d.add_rx(1, PERIOD)  # the application finally reads one period: the driver re-queues it
        d.kick(QueueIndex.RX)
        d.advance(1.0)
        assert len(d.collect(QueueIndex.RX)) >= 1  # and capture continues
