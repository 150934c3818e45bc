"""Timing and status faults armed from the host (pyvmm_snd.faults), driven by the driver model
on a fake clock: what completes when, in which order, and what the driver is told."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent.parent / "snd"))
sys.path.insert(0, str(Path(__file__).parent.parent / "snd_dataplane"))

from dp_helpers import PERIOD, PERIOD_S, TimedDriver  # noqa: E402
from pyvmm_snd.spec import EventCode, QueueIndex, RequestCode, Status  # noqa: E402

TX = QueueIndex.TX


@pytest.fixture
def drv():
    d = TimedDriver(options={"backend": "null"})
    d.start()
    assert d.set_params(0, buffer_bytes=8 * PERIOD, period_bytes=PERIOD) == Status.OK
    assert d.pcm(RequestCode.PCM_PREPARE, 0) == Status.OK
    yield d
    d.close()


def play(drv, n):
    heads = [drv.add_tx(0, bytes(PERIOD)) for _ in range(n)]
    drv.kick(TX)
    assert drv.pcm(RequestCode.PCM_START, 0) == Status.OK
    drv.started = drv.loop.time()
    return heads



def tx_heads(drv):
    return [h for _, q, h in drv.completions if q == TX]


def test_late_completes_after_the_delay_and_out_of_order(drv):
    drv.monitor("late 0 1 50")
    heads = play(drv, 4)
    drv.advance(PERIOD_S * 2.5)  # periods 1 and 2 done: the first is held 50 ms, the second is on time
    assert tx_heads(drv) == [heads[1]]
    drv.advance(0.05)
    assert heads[0] in tx_heads(drv) and tx_heads(drv).index(heads[0]) > 0
    late_t = next(t for t, q, h in drv.completions if h == heads[0] and q == TX)
    assert late_t - drv.started == pytest.approx(PERIOD_S + 0.05, abs=1e-6)


def test_stall_completes_nothing_then_everything_at_once(drv):
    heads = play(drv, 6)
    drv.advance(PERIOD_S * 1.5)
    assert tx_heads(drv) == heads[:1]
    drv.monitor("stall 0 60")
    drv.advance(0.059)
    assert tx_heads(drv) == heads[:1]  # nothing during the stall, though the clock ran on
    drv.advance(0.002)
    done = [(t, h) for t, q, h in drv.completions if q == TX]
    # periods 2, 3 and 4 were consumed during the stall (at 42.7, 64 and 85.3 ms) and complete together
    assert [h for _, h in done] == heads[:4]
    assert len({t for t, _ in done[1:]}) == 1


def test_burst_gives_n_completions_at_once(drv):
    drv.monitor("burst 0 3")
    heads = play(drv, 5)
    drv.advance(PERIOD_S * 2.5)
    assert tx_heads(drv) == []
    drv.advance(PERIOD_S)
    times = [t for t, q, _ in drv.completions if q == TX]
    assert tx_heads(drv) == heads[:3] and len(set(times)) == 1
    drv.advance(PERIOD_S)
    assert tx_heads(drv) == heads[:4]  # back to one per period


def test_fail_and_needs_reset_after_n(drv):
    drv.monitor("fail 0 1 bad_msg")
    drv.monitor("needs-reset 0 2")
    play(drv, 3)
    drv.advance(PERIOD_S * 1.5)
    [entry] = drv.collect(TX)
    assert drv.io_status(TX, entry)[0] == Status.BAD_MSG
    assert drv.resets == []
    drv.advance(PERIOD_S)
    assert len(drv.resets) == 1 and "injected" in drv.resets[0]


def test_release_completes_what_is_held_back_and_reset_forgets(drv):
    drv.monitor("burst 0 4")
    heads = play(drv, 3)
    drv.advance(PERIOD_S * 3.5)
    assert tx_heads(drv) == []
    assert drv.pcm(RequestCode.PCM_STOP, 0) == Status.OK
    assert drv.pcm(RequestCode.PCM_RELEASE, 0) == Status.OK
    assert sorted(tx_heads(drv)) == sorted(heads)
    io = drv.device.dataplane.io[0]
    drv.monitor("late 0 5 10")
    drv.device.reset()
    assert not io.faults.armed


def test_drop_event_loses_the_next_event(drv):
    drv.monitor("drop-event 1")
    drv.device.set_jack(0, False)
    drv.device.set_jack(0, True)
    assert [e.hdr.code if hasattr(e, "hdr") else e.code for e in drv.events()] == [EventCode.JACK_CONNECTED]


@pytest.mark.parametrize("line, message", [
    ("late 0 1", "usage"), ("late 0 -1 5", "count"), ("stall 0 0", "delay"), ("stall 0 99999999", "delay"),
    ("burst 9 1", "does not exist"), ("late 0 1 abc", "milliseconds"), ("drop-event -2", "count"),
])
def test_bad_arguments_are_one_line_errors(drv, line, message):
    with pytest.raises(ValueError, match=message):
        drv.monitor(line)


def test_info_lists_armed_faults(drv):
    drv.monitor("late 0 2 5")
    assert "armed late=2 late_ms=5.0" in drv.monitor("info")
