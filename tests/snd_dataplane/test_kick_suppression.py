"""While a stream runs on the real-time clock, the clock pops the queue at every tick, so the
device asks the driver not to kick (one wake-up per period instead of two); everywhere else
the driver's kicks are wanted, and what arrived meanwhile is taken at once."""

from __future__ import annotations

import pytest

from dp_helpers import BUFFER, PERIOD, PERIOD_S, TimedDriver, periods
from pyvmm.virtio import constants as C
from pyvmm_snd.spec import QueueIndex, RequestCode, Status

R = RequestCode
TX = QueueIndex.TX


def driver(event_idx: bool, **options) -> TimedDriver:
    d = TimedDriver(options={"backend": "null", **options})
    d.queues[TX].event_idx = event_idx
    d.queues[TX].configure(d.device_queues[TX])
    return d


def add_and_ask(d: TimedDriver, data: bytes) -> bool:
    """Add one playback message as Linux does; True if the driver must kick (virtqueue_kick_prepare)."""
    old = d.queues[TX].avail_idx
    d.add_tx(0, data)
    return d.queues[TX].needs_kick(old)


@pytest.mark.parametrize("event_idx", [False, True], ids=["no-event-idx", "event-idx"])
def test_no_kicks_while_the_real_time_clock_runs_and_nothing_is_lost(event_idx):
    with driver(event_idx) as d:
        d.start()
        d.run_stream(0, buffer_bytes=BUFFER, period_bytes=PERIOD)
        data = periods(12)
        assert add_and_ask(d, data[0])  # prepared, not started: kicks wanted
        d.kick(TX)
        assert d.pcm(R.PCM_START, 0) == Status.OK
        # running: the driver is told not to kick, whatever it adds, the clock takes it in time
        assert not any(add_and_ask(d, chunk) for chunk in data[1:4])
        t0 = d.loop.time()
        d.advance(4 * PERIOD_S + PERIOD_S / 2)
        assert len(d.times(TX)) == 4 and d.device.dataplane.io[0].stats.xruns == 0
        assert not any(add_and_ask(d, chunk) for chunk in data[4:12])
        d.advance(8 * PERIOD_S)
        assert d.times(TX) == pytest.approx([t0 + n * PERIOD_S for n in range(1, 13)], abs=1e-9)
        assert d.device.dataplane.io[0].stats.xruns == 0


@pytest.mark.parametrize("event_idx", [False, True], ids=["no-event-idx", "event-idx"])
def test_stop_wants_kicks_again_and_takes_what_came_meanwhile(event_idx):
    with driver(event_idx) as d:
        d.start()
        d.run_stream(0, buffer_bytes=BUFFER, period_bytes=PERIOD)
        assert d.pcm(R.PCM_START, 0) == Status.OK
        assert not add_and_ask(d, periods(1)[0])
        d.advance(PERIOD_S / 4)  # no tick yet: the message sits in the ring, not kicked
        assert d.pcm(R.PCM_STOP, 0) == Status.OK
        assert len(d.device.dataplane.io[0].held) == 1  # taken when the device wanted kicks again
        assert add_and_ask(d, periods(1, seed=2)[0])
        if not event_idx:
            assert not d.queues[TX].used_flags() & C.VIRTQ_USED_F_NO_NOTIFY


def test_the_fast_clock_keeps_kicks():
    with driver(True, clock="fast") as d:
        d.start()
        d.run_stream(0, buffer_bytes=BUFFER, period_bytes=PERIOD)
        assert d.pcm(R.PCM_START, 0) == Status.OK
        assert add_and_ask(d, periods(1)[0])


def test_vm_pause_wants_kicks_and_cont_suppresses_them_again():
    with driver(True) as d:
        d.start()
        d.run_stream(0, buffer_bytes=BUFFER, period_bytes=PERIOD)
        assert d.pcm(R.PCM_START, 0) == Status.OK
        assert not add_and_ask(d, periods(1)[0])
        d.device.pause()
        assert add_and_ask(d, periods(1, seed=2)[0])
        d.device.resume()
        assert not add_and_ask(d, periods(1, seed=3)[0])
