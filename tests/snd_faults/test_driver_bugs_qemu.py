"""Three Linux virtio_snd bugs, reproduced with the real driver (the default guest,
Linux 6.12, through QEMU TCG + pyvmm's vhost-user back end); README "Debugging the driver"
walks through the same runs. Each test asserts what the device saw, so it fails the day the
driver (or the guest kernel) behaves differently.

(a) ``prepare()`` does not reset ``msg->length``: ``examples/pcm_restart.c`` (built here with
    the host's gcc, static, raw ALSA ioctls) writes a buffer, one period and half a period,
    drops the stream and restarts it writing whole periods. The message of the half-written
    slot is never queued again, and each time the application passes that slot one message
    fewer is in flight, until none is: the restarted stream stalls, RUNNING.
(b) a whole buffer completing between two pointer calls: ``burst 0 N`` (N = periods per
    buffer) while a poll-driven application (``aplay -N``) keeps calling the pointer. The
    driver's position wraps back to where it was, ALSA sees no progress, nothing is queued
    any more and the stream stays RUNNING with its position frozen.
(c) a jack change while the probe waits for its JACK_INFO answer is lost: the event sets the
    jack's state, then ``virtsnd_jack_parse_cfg`` overwrites it with the (older) answer. Made
    certain with ``ctl-late 1 500 jack_info`` armed before the guest boots: the jack is
    unplugged while the answer is held back.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent.parent))
sys.path.insert(0, str(Path(__file__).parent.parent / "snd_dataplane"))
sys.path.insert(0, str(Path(__file__).parent.parent / "e2e_snd"))
sys.path.insert(0, str(Path(__file__).parent))
from guest_helpers import image_with_files, wav_data  # noqa: E402
from qemu_harness import guest_and_qemu_or_skip, qemu_sound_guest  # noqa: E402
from snd_checks import booted  # noqa: E402

from pyvmm.guestimage.cache import cache_root  # noqa: E402
from pyvmm.monitor import MonitorClient  # noqa: E402

pytestmark = pytest.mark.qemu

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
PCM_RESTART = "/test/pcm_restart"
STATUS = "/proc/asound/card0/pcm0p/sub0/status"
STREAM_COMMANDS = {"PCM_SET_PARAMS", "PCM_PREPARE", "PCM_START", "PCM_STOP", "PCM_RELEASE"}


def build_pcm_restart() -> Path:
    """examples/pcm_restart.c as a static binary, cached by source and compiler."""
    gcc = shutil.which("gcc")
    assert gcc, "gcc is missing (scripts/setup installs build-essential)"
    source = (EXAMPLES / "pcm_restart.c").read_bytes()
    version = subprocess.run([gcc, "--version"], capture_output=True, check=True).stdout
    key = hashlib.sha256(source + version).hexdigest()[:16]
    binary = cache_root() / "examples" / f"pcm_restart-{key}"
    if not binary.exists():
        binary.parent.mkdir(parents=True, exist_ok=True)
        partial = binary.with_suffix(".tmp")
        subprocess.run([gcc, "-static", "-O2", "-Wall", "-Werror", "-o", str(partial), str(EXAMPLES / "pcm_restart.c")],
                       check=True)
        partial.rename(binary)
    return binary


@pytest.fixture(scope="module")
def image_with_pcm_restart(tmp_path_factory):
    image, qemu = guest_and_qemu_or_skip()
    tmp = tmp_path_factory.mktemp("pcm-restart")
    files = {PCM_RESTART: build_pcm_restart().read_bytes()}
    return image_with_files(image, files, tmp), qemu


def records(trace: Path) -> list[dict]:
    return [json.loads(line) for line in trace.read_text().splitlines()]


def period_values(samples: np.ndarray) -> list[tuple[int, int]]:
    """(value, frames) of each run of equal non-zero frames: pcm_restart gives every period its own value."""
    left = samples[0::2]
    runs = []
    start = 0
    for i in range(1, len(left) + 1):
        if i == len(left) or left[i] != left[start]:
            if left[start] != 0:
                runs.append((int(left[start]), i - start))
            start = i
    return runs


def run_pcm_restart(image_with_pcm_restart, tmp_path: Path, args: str = "") -> tuple[str, list[dict], list]:
    """pcm_restart in the guest (WAV back end, trace on): its output, the trace, (value, frames) played."""
    image, qemu = image_with_pcm_restart
    trace = tmp_path / "a.jsonl"
    options = {"backend": "wav", "backend.path": str(tmp_path / "out{stream}.wav")}
    with qemu_sound_guest(options, smp=1, image=image, qemu=qemu, backend_args=["--trace-file", str(trace)]) as guest:
        out = guest.session.run(f"chmod +x {PCM_RESTART}; {PCM_RESTART} {args}; echo rc=$?", timeout=120).output
    _, data = wav_data(tmp_path / "out0.wav")
    return out, records(trace), period_values(np.frombuffer(data, "<i2"))


def runs(recs: list[dict]) -> tuple[list[str], list[list[dict]]]:
    """The stream commands, and the I/O messages queued after each PREPARE (until the next STOP)."""
    codes, queued = [], []
    for r in recs:
        if r["cat"] == "ctl" and r["code"] in STREAM_COMMANDS:
            codes.append(r["code"])
            if r["code"] == "PCM_PREPARE":
                queued.append([])
        elif (r["cat"], r["kind"]) == ("io", "queued") and queued and codes[-1] in ("PCM_PREPARE", "PCM_START"):
            queued[-1].append(r)
    return codes, queued


PERIOD = 4800
"""pcm_restart's period (frames; 100 ms at 48 kHz, 4 periods per buffer)."""
RUN_CODES = ["PCM_SET_PARAMS", "PCM_PREPARE", "PCM_START", "PCM_STOP", "PCM_RELEASE",  # run 1 and the drop
             "PCM_PREPARE", "PCM_START", "PCM_STOP", "PCM_RELEASE"]  # run 2 and the close at exit


def test_bug_a_the_half_written_period_is_never_queued_again(image_with_pcm_restart, tmp_path):
    out, recs, played = run_pcm_restart(image_with_pcm_restart, tmp_path)
    # The program's view: run 1 leaves slot 1 half written; run 2 writes whole periods until
    # nothing moves. Slot 1's message is never queued, so each pass over slot 1 leaves one
    # message fewer in flight: after 14 periods written only 10 were queued, and the stream
    # stalls RUNNING with the buffer full (appl_ptr - hw_ptr = 4 periods).
    assert "rc=0" in out, out
    assert "run 1: wrote 5 whole periods and half a period (2400 frames)" in out, out
    assert "run 2: prepared: state PREPARED hw_ptr 0 appl_ptr 0" in out, out
    assert "run 2: wrote 14 whole periods, then nothing moved for 2000 ms" in out, out
    assert f"run 2: state RUNNING hw_ptr {10 * PERIOD} appl_ptr {14 * PERIOD}" in out, out

    codes, queued = runs(recs)
    assert codes == RUN_CODES, codes
    assert len(queued[1]) == 10 and all(r["bytes"] == PERIOD * 4 for r in queued[1]), queued[1]
    # within the spec as far as the device can tell: the conformance checker has nothing to say
    assert not [r for r in recs if r["cat"] == "spec"]
    # after the last message the device underruns while the stream is still started (no STOP yet)
    stop = next(r["t"] for r in recs if r["t"] > queued[1][-1]["t"] and r["cat"] == "ctl")
    xruns = [r for r in recs if (r["cat"], r["kind"]) == ("io", "xrun") and queued[1][-1]["t"] < r["t"] < stop]
    assert len(xruns) >= 10, f"{len(xruns)} xrun periods between the last message and the STOP"

    # What reached the device, period by period (each period has its own value): run 2 wrote
    # 7..20; the periods written into slot 1 (8, 12, 16, 20) never left the guest, nor did the
    # half period (6) of run 1.
    assert [p for p in played if p[0] >= 6] == [(v, PERIOD) for v in (7, 9, 10, 11, 13, 14, 15, 17, 18, 19)], played


def test_bug_a_after_a_drain_the_half_period_never_plays_and_the_restart_stalls_too(image_with_pcm_restart, tmp_path):
    """Run 1 ends with DRAIN instead of DROP: the half period is never queued, so the drain
    cannot finish; ALSA gives up (EIO, ``max(100 ms, 1.1 x buffer time)`` after the last
    period) and stops the stream. Run 2 then stalls exactly as after a DROP."""
    out, recs, played = run_pcm_restart(image_with_pcm_restart, tmp_path, "-e")
    assert "rc=0" in out, out
    assert re.search(r"run 1: DRAIN returned Input/output error after \d", out), out
    # everything but the half period played: 5 periods of 4800 frames, appl_ptr 2400 frames further
    assert f"run 1: drained: state SETUP hw_ptr {5 * PERIOD} appl_ptr {5 * PERIOD + PERIOD // 2}" in out, out
    assert "run 2: wrote 14 whole periods, then nothing moved for 2000 ms" in out, out
    assert f"run 2: state RUNNING hw_ptr {10 * PERIOD} appl_ptr {14 * PERIOD}" in out, out
    codes, queued = runs(recs)
    assert codes == RUN_CODES, codes
    assert len(queued[1]) == 10, queued[1]
    assert [p for p in played if p[0] <= 6] == [(v, PERIOD) for v in (1, 2, 3, 4, 5)], played
    assert [p for p in played if p[0] >= 6] == [(v, PERIOD) for v in (7, 9, 10, 11, 13, 14, 15, 17, 18, 19)], played


def test_bug_a_control_run_1_ending_on_a_whole_period_restarts_fine(image_with_pcm_restart, tmp_path):
    """The same restart without the half period: nothing is lost, no stall (so it is the
    stale msg->length of the half-written slot that breaks run 2 above)."""
    out, recs, played = run_pcm_restart(image_with_pcm_restart, tmp_path, "-F -w 20")
    assert "rc=0" in out, out
    assert "run 1: wrote 6 whole periods" in out, out
    assert "run 2: wrote all 20 periods" in out and "done (no stall)" in out, out
    codes, queued = runs(recs)
    assert codes == RUN_CODES, codes
    assert len(queued[1]) == 20, queued[1]
    # run 2's 20 periods (values 7..26) reach the device in order, except those the close
    # dropped (the program exits right after its last write)
    run2 = [p for p in played if p[0] >= 7]
    assert run2 == [(v, PERIOD) for v in range(7, 7 + len(run2))] and len(run2) >= 15, played


APLAY_N = ("aplay -N -D hw:0,0 -f S16_LE -c 2 -r 48000 --period-size=6000 --buffer-size=48000 -t raw /dev/zero")


def guest_status(session) -> dict[str, str]:
    text = session.check(f"cat {STATUS}", timeout=30)
    return dict(re.findall(r"^(\w+)\s*:\s*(\S+)", text, re.M))


class MonitorControl:
    """Stream 0 through the line monitor (``pyvmm monitor``)."""

    args = ["--monitor", "{dir}/vm.mon"]

    def __init__(self, directory: Path):
        self.client = MonitorClient(f"{directory}/vm.mon")
        self.client.__enter__()

    def stream0(self) -> dict:
        ok, info = self.client.command("snd0 info")
        assert ok, info
        line = next(line for line in info.splitlines() if line.startswith("stream 0"))
        match = re.search(r"output: (\S+), .* queued (\d+),.* periods (\d+)", line)
        return {"state": match[1], "held": int(match[2]), "periods": int(match[3]), "armed": "armed" in line}

    def burst(self, count: int) -> None:
        ok, reply = self.client.command(f"snd0 burst 0 {count}")
        assert ok, reply

    def close(self) -> None:
        self.client.__exit__(None, None, None)


class QmpControl:
    """Stream 0 through QMP (``x-pyvmm-snd-query-streams``, ``x-pyvmm-snd-inject``), with qemu.qmp."""

    args = ["--qmp", "unix:{dir}/qmp.sock,server,wait=off"]

    def __init__(self, directory: Path):
        from qemu.qmp.legacy import QEMUMonitorProtocol

        self.qmp = QEMUMonitorProtocol(f"{directory}/qmp.sock")
        self.qmp.connect(negotiate=True)
        self.qmp.settimeout(30)

    def stream0(self) -> dict:
        stream = self.qmp.cmd("x-pyvmm-snd-query-streams")["streams"][0]
        faults = stream["faults"]
        return {"state": stream["state"], "held": stream["held"], "periods": stream["periods"],
                "armed": bool(faults["burst"] or faults["held_back"])}

    def burst(self, count: int) -> None:
        assert self.qmp.cmd("x-pyvmm-snd-inject", type="burst", stream=0, count=count) == {"sent": True}

    def close(self) -> None:
        self.qmp.close()


def wait_for(control, predicate, what: str, timeout: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        stream = control.stream0()
        if predicate(stream):
            return stream
        time.sleep(0.1)
    raise AssertionError(f"{what}: {stream}")


@pytest.mark.parametrize("control_kind", [MonitorControl, QmpControl], ids=["monitor", "qmp"])
def test_bug_b_a_whole_buffer_burst_wraps_the_position_unseen(tmp_path, control_kind):
    trace = tmp_path / "b.jsonl"
    args = [arg.format(dir=tmp_path) for arg in control_kind.args]
    with booted({"backend": "null"}, smp=1, backend_args=[*args, "--trace-file", str(trace)]) as guest:
        session = guest.session
        session.run(f"({APLAY_N} > /tmp/aplay.log 2>&1; echo rc=$? >> /tmp/aplay.log) &", timeout=20)
        control = control_kind(tmp_path)
        try:
            wait_for(control, lambda s: s["state"] == "started" and s["periods"] >= 10, "aplay did not start")
            control.burst(8)  # 8 periods of 6000 frames: the whole buffer
            wait_for(control, lambda s: not s["armed"], "the burst did not fire", timeout=20)  # after 8 periods (1 s)
            first = guest_status(session)
            time.sleep(1.0)
            second = guest_status(session)
            device = control.stream0()
        finally:
            control.close()
        # ALSA: RUNNING, the position did not move, the buffer is full (aplay waits for room)
        assert first["state"] == second["state"] == "RUNNING", (first, second)
        assert first["hw_ptr"] == second["hw_ptr"], (first, second)
        assert int(second["appl_ptr"]) - int(second["hw_ptr"]) == 48000, second
        # the device: the stream is still started and the driver queues nothing
        assert device["state"] == "started" and device["held"] == 0, device
        session.run("kill $(pidof aplay); sleep 0.5", timeout=20)
        log = session.run("cat /tmp/aplay.log", timeout=20).output
        # the card still plays afterwards
        replay = session.run("aplay -D hw:0,0 -f S16_LE -c 2 -r 48000 -d 1 -t raw /dev/zero; echo rc=$?", timeout=60)
        assert "rc=0" in replay.output, replay.output
    assert "underrun" not in log and "error" not in log, log

    recs = records(trace)
    assert not [r for r in recs if r["cat"] == "spec"]  # no spec violation the device can see
    fire = next(r for r in recs if (r["cat"], r["kind"]) == ("fault", "fire"))
    assert fire["what"] == "burst" and fire["released"] == 8, fire
    # the whole buffer completed at once: 8 completions within a few ms, 8 x 24000 bytes
    burst = [r for r in recs if (r["cat"], r["kind"]) == ("io", "complete") and fire["t"] - 0.05 < r["t"] <= fire["t"]]
    assert len(burst) == 8 and sum(r["bytes"] for r in burst) == 192000, burst
    after = [r for r in recs if r["t"] > fire["t"]]
    stop = next(r for r in after if r["cat"] == "ctl")
    assert stop["code"] == "PCM_STOP", stop
    # nothing queued between the burst and the STOP that killing aplay caused, seconds later
    assert not [r for r in after if (r["cat"], r["kind"]) == ("io", "queued") and r["t"] < stop["t"]]
    assert stop["t"] - fire["t"] > 1.0, stop["t"] - fire["t"]


def test_bug_c_a_jack_change_during_the_probe_is_overwritten_by_the_jack_info_answer(tmp_path):
    image, qemu = guest_and_qemu_or_skip()
    mon, trace = str(tmp_path / "mon.sock"), tmp_path / "trace.jsonl"
    seen: dict = {}

    def unplug_while_the_answer_is_held() -> None:
        with MonitorClient(mon, timeout=30) as client:
            deadline = time.monotonic() + 120
            while "held back 1" not in (info := client.command("snd0 info")[1]):
                if time.monotonic() > deadline:
                    seen["info"] = info
                    return
                time.sleep(0.005)
            seen["unplug"] = client.command("snd0 jack 0 disconnect")

    unplugger = threading.Thread(target=unplug_while_the_answer_is_held, daemon=True)

    def arm() -> None:
        deadline = time.monotonic() + 30
        while not os.path.exists(mon):
            assert time.monotonic() < deadline, "no monitor socket"
            time.sleep(0.05)
        with MonitorClient(mon, timeout=30) as client:
            assert client.command("snd0 ctl-late 1 500 jack_info") == (True, "next 1 JACK_INFO answers 500 ms late")
        unplugger.start()

    with qemu_sound_guest({"backend": "null"}, smp=1, image=image, qemu=qemu, before_boot=arm,
                          backend_args=["--monitor", mon, "--trace-file", str(trace)]) as guest:
        unplugger.join(120)
        assert seen.get("unplug") == (True, "jack 0 disconnected"), seen
        with MonitorClient(mon, timeout=30) as client:
            assert "jack 0: disconnected" in client.command("snd0 info")[1]
            in_guest = guest.session.check("amixer -c0 cget numid=1", timeout=60)
            # the driver lost the change: its Headphone Jack is still on
            assert "values=on" in in_guest, in_guest
            # a change after the probe does get through (the jack is plugged back, then pulled again)
            client.command("snd0 jack 0 connect")
            client.command("snd0 jack 0 disconnect")
            deadline = time.monotonic() + 60
            while "values=off" not in guest.session.check("amixer -c0 cget numid=1", timeout=60):
                assert time.monotonic() < deadline, "a jack change after the probe did not reach the guest"
                time.sleep(0.2)
    recs = records(trace)
    armed = next(r for r in recs if (r["cat"], r["kind"]) == ("fault", "inject"))
    assert armed["what"] == "ctl_late" and armed["request"] == "JACK_INFO", armed
    held = next(r for r in recs if (r["cat"], r["kind"], r.get("what")) == ("fault", "fire", "ctl_late"))
    sent = next(r for r in recs if (r["cat"], r["kind"]) == ("evt", "sent"))
    answered = next(r for r in recs if r["cat"] == "ctl" and r.get("code") == "PCM_INFO")
    # the order that loses it: JACK_INFO answered (held), the event delivered, then the answer
    # published and the probe going on (its next request)
    assert held["request"] == "JACK_INFO" and held["t"] < sent["t"] < answered["t"], (held, sent, answered)
    assert "JACK_DISCONNECTED" in sent["desc"], sent
