"""QMP end to end on the fast path: the guest's real virtio_snd driver under QEMU TCG, pyvmm's
sound device behind it over vhost-user (``pyvmm vhost-user ... --qmp unix:PATH``), driven with
the qemu.qmp client library while ``aplay`` runs in the guest.

On a back end ``stop``/``cont`` pause the device (QEMU's vCPUs are not ours): the stream's
period clock stands still, the guest's aplay waits, nothing counts as an xrun, and playback
carries on after ``cont``. The guest keeps running meanwhile, and Linux ALSA gives up on a
write that sees no period complete for 1.1 buffer times (``wait_for_avail``: EIO), so the
test plays with a 3 s buffer and pauses for 1.5 s.
"""

from __future__ import annotations

import os
import threading
import time

import pytest
from qemu.qmp import ExecuteError
from qemu.qmp.legacy import QEMUMonitorProtocol

from qemu_harness import guest_and_qemu_or_skip, qemu_sound_guest

pytestmark = pytest.mark.qemu

TIMEOUT = 120
APLAY = "aplay -D hw:0,0 -t raw -f S16_LE -c 2 -r 48000"


@pytest.fixture(scope="module")
def guest(tmp_path_factory):
    image, qemu = guest_and_qemu_or_skip()
    path = str(tmp_path_factory.mktemp("qmp") / "qmp.sock")
    with qemu_sound_guest({"backend": "null"}, image=image, qemu=qemu,
                          backend_args=["--qmp", f"unix:{path},server,wait=off"]) as g:
        g.qmp_path = path
        qmp = QEMUMonitorProtocol(path)
        qmp.connect(negotiate=True)
        qmp.settimeout(30)
        g.qmp = qmp
        yield g
        try:
            qmp.close()
        except (EOFError, OSError):
            pass


def next_event(qmp, name: str, timeout: float = 30.0, **data) -> dict:
    """The next event called ``name`` whose data includes ``data`` (others are skipped)."""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        assert left > 0, f"no {name} {data} event within {timeout} s"
        try:
            event = qmp.pull_event(wait=left)
        except TimeoutError:
            continue
        if event["event"] == name and all(event.get("data", {}).get(k) == v for k, v in data.items()):
            return event


def stream0(qmp) -> dict:
    return qmp.cmd("x-pyvmm-snd-query-streams")["streams"][0]


class Aplay:
    """``aplay`` in the guest, on a thread (the console session blocks while it runs)."""

    def __init__(self, guest, seconds: float, options: str = ""):
        self.output = None
        self.started = time.monotonic()
        self.thread = threading.Thread(target=self._run, args=(guest, seconds, options))
        self.thread.start()

    def _run(self, guest, seconds, options):
        self.output = guest.session.run(f"{APLAY} {options} -q -d {seconds} /dev/zero; echo aplay=$?",
                                        timeout=TIMEOUT).output
        self.elapsed = time.monotonic() - self.started

    def wait_running(self, qmp, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while stream0(qmp)["state"] != "started" or stream0(qmp)["periods"] == 0:
            assert time.monotonic() < deadline, "aplay never started the stream"
            time.sleep(0.05)

    def join(self) -> str:
        self.thread.join(TIMEOUT + 10)
        assert self.output is not None, "aplay did not finish"
        return self.output


def test_run_state_and_virtio_introspection(guest):
    qmp = guest.qmp
    assert qmp.cmd("query-status") == {"running": True, "status": "running"}
    assert qmp.cmd("x-query-virtio") == [{"path": "snd0", "name": "virtio-snd"}]
    status = qmp.cmd("x-query-virtio-status", path="snd0")
    # The status is what QEMU last told the back end (SET_STATUS): it never sends DRIVER_OK.
    assert "VIRTIO_CONFIG_S_FEATURES_OK" in status["status"]["statuses"]
    assert "VIRTIO_F_VERSION_1" in status["guest-features"]["transports"]
    assert status["num-vqs"] == 4 and status["started"]
    event_queue = qmp.cmd("x-query-virtio-queue-status", path="snd0", queue=1)
    # Linux posts every event buffer at probe: the device holds them all, in flight.
    assert event_queue["ready"] and event_queue["inuse"] == event_queue["vring-num"]
    held = qmp.cmd("x-query-virtio-queue-element", path="snd0", queue=1,
                   index=(event_queue["last-avail-idx"] - 1) & 0xFFFF)
    assert [(d["len"], d["flags"]) for d in held["descs"]] == [(8, ["write"])]
    text = qmp.cmd("human-monitor-command", **{"command-line": "info devices"})
    assert text.startswith("0: snd0 (SoundDevice, vhost-user)")


def test_jack_unplug_replug_and_xrun_are_events_during_aplay(guest):
    qmp = guest.qmp
    aplay = Aplay(guest, 3)
    aplay.wait_running(qmp)
    qmp.cmd("x-pyvmm-snd-inject", type="jack", jack=0, connected=False)
    next_event(qmp, "SND_JACK_CHANGED", device="snd0", jack=0, connected=False)
    qmp.cmd("x-pyvmm-snd-inject", type="jack", jack=0, connected=True)
    next_event(qmp, "SND_JACK_CHANGED", device="snd0", jack=0, connected=True)
    result = qmp.cmd("x-pyvmm-snd-inject", type="xrun", stream=0)
    assert result["sent"], result
    event = next_event(qmp, "SND_PCM_XRUN", device="snd0", stream=0, kind="injected")
    assert event["data"]["notified"] is True  # Linux negotiates EVT_XRUNS: the guest got the event
    assert "aplay=0" in aplay.join()
    with pytest.raises(ExecuteError, match="jack 9"):
        qmp.cmd("x-pyvmm-snd-inject", type="jack", jack=9, connected=False)


def test_stop_and_cont_pause_the_sound_clock(guest):
    qmp = guest.qmp
    aplay = Aplay(guest, 3, "--buffer-time=3000000 --period-time=100000")
    aplay.wait_running(qmp)
    qmp.cmd("stop")
    next_event(qmp, "STOP")
    assert qmp.cmd("query-status")["status"] == "paused"
    paused = stream0(qmp)
    assert paused["clock"]["paused"]
    time.sleep(1.5)  # the guest runs on: stay below ALSA's write timeout (1.1 buffer times)
    during = stream0(qmp)
    assert during["periods"] == paused["periods"], "periods completed while stopped"
    assert during["xruns"] == paused["xruns"], "an xrun was counted while stopped"
    qmp.cmd("cont")
    next_event(qmp, "RESUME")
    out = aplay.join()
    assert "aplay=0" in out, out
    after = stream0(qmp)
    assert after["periods"] > during["periods"]
    assert aplay.elapsed >= 3 + 1.5 - 0.2, aplay.elapsed  # the pause added to the playing time


def test_io_errors_and_needs_reset_during_aplay_leave_the_back_end_healthy(guest):
    qmp = guest.qmp
    before = stream0(qmp)["injected-errors"]
    aplay = Aplay(guest, 2)
    aplay.wait_running(qmp)
    qmp.cmd("x-pyvmm-snd-inject", type="fail", stream=0, count=2, status="io-err")
    qmp.cmd("x-pyvmm-snd-inject", type="needs-reset")
    assert "aplay=0" in aplay.join()  # Linux 6.12 ignores both the status and NEEDS_RESET
    assert stream0(qmp)["injected-errors"] == before + 2
    assert qmp.cmd("query-status")["running"]
    out = guest.session.run(f"{APLAY} -q -d 1 /dev/zero; echo aplay=$?", timeout=TIMEOUT).output
    assert "aplay=0" in out, out


def test_quit_sends_shutdown_and_ends_the_back_end(guest):
    qmp = guest.qmp
    assert qmp.cmd("quit") == {}
    next_event(qmp, "SHUTDOWN", guest=False, reason="host-qmp-quit")
    assert guest.backend.wait(30) == 0
    assert not os.path.exists(guest.qmp_path)
