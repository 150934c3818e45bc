"""End to end with the real driver (QEMU TCG + pyvmm's vhost-user back end): the README's
"Provoking xruns" walk-through. A stall longer than the buffer and a whole-buffer burst each make
the Linux 6.12 driver report an underrun (aplay prints it) and the application recover; the trace
shows what the device saw in between: the fault firing, then STOP, RELEASE, PREPARE, a buffer's
worth of new messages and START, and messages flowing again. Control answers held past the
driver's timeout, or failed, make its probe fail cleanly."""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent.parent / "e2e_snd"))
from snd_checks import booted  # noqa: E402

from pyvmm.monitor import MonitorClient  # noqa: E402

pytestmark = pytest.mark.qemu

APLAY = ("aplay -D hw:0,0 -f S16_LE -c 2 -r 48000 --period-size=1024 --buffer-size=8192 -d {seconds} "
         "-t raw /dev/zero")


def wait_until_playing(client: MonitorClient, periods: int = 20, timeout: float = 30.0) -> None:
    """Until stream 0 is started and has played ``periods`` periods (aplay starts slowly under TCG)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ok, info = client.command("snd0 info")
        match = re.search(r"stream 0 output: started,.* periods (\d+)", info)
        if ok and match and int(match.group(1)) >= periods:
            return
        time.sleep(0.1)
    raise AssertionError(f"stream 0 did not start playing:\n{info}")


def restart_after(records: list[dict], t0: float) -> list[str]:
    """The control requests and I/O the device saw after ``t0``, as short words."""
    seen = []
    for r in records:
        if r["t"] < t0:
            continue
        if r["cat"] == "ctl":
            seen.append(r["code"])
        elif (r["cat"], r["kind"]) == ("io", "queued"):
            seen.append("queued")
    return seen


@pytest.mark.parametrize("fault", ["stall 0 500", "burst 0 8"])
def test_fault_makes_the_driver_stop_the_stream_and_the_device_stays_healthy(tmp_path, fault):
    mon, trace = tmp_path / "vm.mon", tmp_path / "t.jsonl"
    with booted({"backend": "null"}, smp=1,
                backend_args=["--monitor", str(mon), "--trace-file", str(trace)]) as guest:
        session = guest.session
        session.run(f"({APLAY.format(seconds=6)} > /tmp/aplay.log 2>&1; echo rc=$? >> /tmp/aplay.log) &",
                    timeout=20)
        with MonitorClient(str(mon)) as client:
            wait_until_playing(client)
            ok, reply = client.command(f"snd0 {fault}")
            assert ok, reply
            time.sleep(7)
            ok, info = client.command("snd0 info")  # the back end still answers
        assert ok and "stream 0 output" in info, info
        log = session.run("cat /tmp/aplay.log", timeout=20).output
        # the card still plays afterwards
        assert "rc=0" in session.run(f"{APLAY.format(seconds=1)}; echo rc=$?", timeout=30).output
    records = [json.loads(line) for line in trace.read_text().splitlines()]
    fired = [r for r in records if (r["cat"], r["kind"]) == ("fault", "fire")]
    # the held-back completions went to the driver: when the fault ended, or when RELEASE flushed them
    assert fired and fired[0]["what"] in (fault.split()[0], "flush"), fired
    seen = restart_after(records, next(r["t"] for r in records if r["cat"] == "fault"))
    # After the messages already on their way, STOP and RELEASE: ALSA took the late completions for
    # an underrun (its double-interrupt check), or aplay's blocked write gave up first (EIO after
    # max(100 ms, 1.1 x buffer time), 187 ms here) and aplay closed the stream (README: "Provoking xruns").
    while seen and seen[0] == "queued":
        seen.pop(0)
    assert seen[:2] == ["PCM_STOP", "PCM_RELEASE"], seen
    # aplay either recovered (underrun, a new run: PREPARE, START, data flowing) or failed with EIO.
    if "rc=0" in log:
        assert "underrun!!!" in log, log
        start = seen.index("PCM_START")
        assert "PCM_PREPARE" in seen[2:start], seen
        assert seen[start + 1:].count("queued") >= 3, seen
    else:
        assert "write error: Input/output error" in log, log


def test_control_answers_later_than_the_drivers_timeout_fail_its_probe(tmp_path):
    """``ctl-late`` past ``virtio_snd.msg_timeout_ms`` (1000) armed before boot: Linux gives up
    on JACK_INFO, the probe fails with ETIMEDOUT, the guest has no card, and the device, reset
    by the failing probe, still answers the monitor. ``ctl-fail`` the same way fails it at once."""
    mon = str(tmp_path / "mon.sock")

    def arm(line: str):
        def before_boot() -> None:
            deadline = time.monotonic() + 30
            while not Path(mon).exists():
                assert time.monotonic() < deadline, "no monitor socket"
                time.sleep(0.05)
            with MonitorClient(mon, timeout=30) as client:
                ok, reply = client.command(line)
                assert ok, reply
        return before_boot

    for line, message in (("snd0 ctl-late 1 1500 jack_info", "control message (0x00000001) timeout"),
                          ("snd0 ctl-fail 1 io_err pcm_info", "probe with driver virtio_snd failed with error -5")):
        with booted({"backend": "null"}, smp=1, before_boot=arm(line), backend_args=["--monitor", mon]) as guest:
            out = guest.session.check("dmesg | grep virtio_snd; cat /proc/asound/cards", timeout=60)
            assert message in out and "no soundcards" in out, out
            with MonitorClient(mon, timeout=30) as client:
                ok, info = client.command("snd0 info")
            assert ok and info.startswith("driver not active"), info
            assert "control queue:" not in info, info  # fired: nothing left armed or held back
