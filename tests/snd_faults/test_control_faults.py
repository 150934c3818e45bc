"""Control-queue faults armed from the host (pyvmm_snd.ctlfaults), driven by the driver model on
a fake clock: which requests fail or answer late, what the device did meanwhile, and what a
reset or a VM pause does to them."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent.parent / "snd"))
sys.path.insert(0, str(Path(__file__).parent.parent / "snd_dataplane"))

from dp_helpers import TimedDriver  # noqa: E402
from pyvmm_snd import qmp, spec  # noqa: E402
from pyvmm_snd.spec import QueueIndex, RequestCode, Status  # noqa: E402
from snd_driver import status_of  # noqa: E402

CONTROL = QueueIndex.CONTROL


@pytest.fixture
def drv():
    d = TimedDriver(options={"backend": "null"})
    yield d
    d.close()



def jack_info(drv) -> int:
    """Post a JACK_INFO request for every jack (Linux's layout); returns its head, unanswered or not."""
    n = drv.config().jacks
    q = spec.QueryInfo(code=RequestCode.JACK_INFO, start_id=0, count=n, size=24)
    head = drv.queues[CONTROL].add([bytes(q)], [4, n * 24])
    drv.device.queue_notify(CONTROL)
    return head


def test_ctl_fail_answers_with_the_status_and_does_not_act(drv):
    drv.start()
    assert drv.monitor("ctl-fail 1 not_supp pcm_set_params") == "next 1 PCM_SET_PARAMS requests answered NOT_SUPP"
    assert status_of(drv.query(RequestCode.JACK_INFO, 0, 1, 24)) == Status.OK  # another code: not hit
    assert drv.set_params(0) == Status.NOT_SUPP
    assert drv.device.streams[0].params is None, "a failed SET_PARAMS must leave the stream as it was"
    assert drv.set_params(0) == Status.OK  # only one was armed
    assert drv.device.streams[0].params is not None


def test_ctl_late_answers_at_once_but_publishes_after_the_delay(drv):
    drv.start()
    drv.monitor("ctl-late 1 250 jack_info")
    start = drv.loop.time()
    head = jack_info(drv)
    assert drv.collect(CONTROL) == [], "the answer must wait"
    drv.device.set_jack(0, False)
    drv.loop.advance(0)  # set_jack runs on the loop
    drv.advance(0.249)
    assert drv.collect(CONTROL) == []
    drv.advance(0.002)
    [entry] = drv.collect(CONTROL)
    assert entry.id == head and status_of(entry) == Status.OK
    first = spec.JackInfo.from_buffer_copy(entry.written[4:4 + 24])
    assert first.connected == 1, "the answer is the state when the request arrived"
    assert drv.device.jack_connected[0] is False
    late_t = next(t for t, q, h in drv.completions if q == CONTROL and h == head)
    assert late_t - start == pytest.approx(0.25, abs=1e-6)
    jack_info(drv)
    assert len(drv.collect(CONTROL)) == 1  # the next one is on time


def test_armed_before_the_driver_starts_and_kept_across_a_reset(drv):
    drv.monitor("ctl-fail 2 io_err jack_info")
    drv.device.reset()  # a probe starts with a reset: the armed fault must reach it
    drv.start()
    assert status_of(drv.query(RequestCode.JACK_INFO, 0, 1, 24)) == Status.IO_ERR
    drv.device.reset()
    drv.activate()  # (the model's queues carry on: only the device forgot its state)
    assert status_of(drv.query(RequestCode.JACK_INFO, 0, 1, 24)) == Status.IO_ERR
    assert status_of(drv.query(RequestCode.JACK_INFO, 0, 1, 24)) == Status.OK


def test_reset_drops_answers_held_back(drv):
    drv.start()
    drv.monitor("ctl-late 1 100")
    jack_info(drv)
    assert "held back 1" in drv.monitor("info")
    drv.device.reset()
    drv.advance(0.2)
    assert drv.collect(CONTROL) == [] and not drv.loop.pending_timers()


def test_vm_pause_stops_the_delay(drv):
    drv.start()
    drv.monitor("ctl-late 1 100")
    head = jack_info(drv)
    drv.advance(0.05)
    drv.device.pause()
    drv.advance(1.0)
    assert drv.collect(CONTROL) == [], "nothing completes while the VM is paused"
    drv.device.resume()
    drv.advance(0.049)
    assert drv.collect(CONTROL) == []
    drv.advance(0.002)
    assert [e.id for e in drv.collect(CONTROL)] == [head]


def test_qmp_arms_the_same_faults_and_query_shows_them(drv):
    drv.start()
    commands = qmp.commands(drv.device)
    commands["x-pyvmm-snd-inject"]({"type": "ctl-fail", "count": 1, "status": "bad-msg", "request": "pcm-info"})
    commands["x-pyvmm-snd-inject"]({"type": "ctl-late", "count": 3, "ms": 40})
    faults = commands["x-pyvmm-snd-query-streams"]({})["control-faults"]
    assert faults["fail"] == 1 and faults["fail_request"] == "PCM_INFO" and faults["fail_status"] == "BAD_MSG"
    assert faults["late"] == 3 and faults["late_ms"] == 40.0 and faults["late_request"] is None


@pytest.mark.parametrize("line, message", [
    ("ctl-fail", "usage"), ("ctl-fail -1", "count"), ("ctl-fail 1 io_err pcm_nope", "request must be one of"),
    ("ctl-fail 1 bogus jack_info", "status must be one of"), ("ctl-late 1", "usage"),
    ("ctl-late 1 0", "delay"), ("ctl-late 1 99999999", "delay"), ("ctl-late 1 abc", "milliseconds"),
])
def test_bad_arguments_are_one_line_errors(drv, line, message):
    with pytest.raises(ValueError, match=message):
        drv.monitor(line)
