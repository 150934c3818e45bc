"""The sound device's trace records, driven by the Python driver model: control requests with
their status, I/O messages queued/completed/refused, xruns, events and injected faults; every
record fits the documented schema and ``pyvmm trace summary`` reads them back."""

import json
import sys
from pathlib import Path

import jsonschema
import pytest

sys.path.insert(0, str(Path(__file__).parent.parent / "snd"))
sys.path.insert(0, str(Path(__file__).parent.parent / "snd_dataplane"))

from dp_helpers import PERIOD, FakeLoop  # noqa: E402
from pyvmm.events import EventBus  # noqa: E402
from pyvmm.trace import Tracer, parse_trace_specs  # noqa: E402
from pyvmm.trace.schema import SCHEMA  # noqa: E402
from pyvmm.trace.summary import format_summary  # noqa: E402
from pyvmm_snd.device import SoundDevice  # noqa: E402
from pyvmm_snd.spec import QueueIndex, RequestCode, Status  # noqa: E402
from snd_driver import SndDriver  # noqa: E402


@pytest.fixture
def traced(tmp_path):
    path = tmp_path / "trace.jsonl"
    tracer = Tracer(parse_trace_specs(["snd:all"]), jsonl_path=path)
    records = []
    tracer.add_writer(records.append)
    device = SoundDevice({"backend": "null"})
    device.event_sink = EventBus(tracer).sink("snd0")
    drv = SndDriver(device=device, loop=FakeLoop())
    drv.start()
    yield drv, records, tracer, path
    drv.close()
    tracer.close()


def by_kind(records, cat, kind):
    return [r for r in records if (r.cat, r.kind) == (cat, kind)]


def test_control_requests_are_traced_decoded_with_status(traced):
    drv, records, _, _ = traced
    assert drv.set_params(0, buffer_bytes=8 * PERIOD, period_bytes=PERIOD) == Status.OK
    assert drv.pcm(RequestCode.PCM_START, 0) == Status.BAD_MSG  # START before PREPARE
    ctl = by_kind(records, "ctl", "request")
    assert [r.fields["code"] for r in ctl] == ["PCM_SET_PARAMS", "PCM_START"]
    assert ctl[0].fields["status"] == "OK" and "buffer=32768" in ctl[0].fields["desc"]
    assert "period=4096" in ctl[0].format() and ctl[0].format().endswith("-> OK")
    assert ctl[1].fields["status"] == "BAD_MSG"


def test_io_messages_queued_completed_and_refused(traced):
    drv, records, _, _ = traced
    assert drv.set_params(0, buffer_bytes=8 * PERIOD, period_bytes=PERIOD) == Status.OK
    assert drv.pcm(RequestCode.PCM_PREPARE, 0) == Status.OK
    for _ in range(3):
        drv.add_tx(0, bytes(PERIOD))
    drv.add_tx(0, bytes(PERIOD // 2))  # not a whole period: refused with IO_ERR
    drv.kick(QueueIndex.TX)
    assert drv.pcm(RequestCode.PCM_START, 0) == Status.OK
    drv.advance(0.2)  # 3 periods play, then underruns
    queued = by_kind(records, "io", "queued")
    assert len(queued) == 3 and queued[0].fields["bytes"] == PERIOD and queued[0].fields["dir"] == "playback"
    assert queued[0].fields["descs"][-1][1] == "w"  # the status descriptor is device-writable
    [reject] = by_kind(records, "io", "reject")
    assert reject.fields["status"] == "IO_ERR" and "period" in reject.fields["reason"]
    done = by_kind(records, "io", "complete")
    assert [r.fields["status"] for r in done] == ["OK"] * 3
    assert all(r.fields["deadline_t"] is not None for r in done)  # real-time clock: deadlines known
    assert by_kind(records, "io", "xrun")


def test_events_and_injected_faults_are_traced(traced):
    drv, records, _, _ = traced
    drv.device.set_jack(0, False)
    drv.advance(0.01)
    sent = by_kind(records, "evt", "sent")
    assert sent and "JACK_DISCONNECTED" in sent[0].fields["desc"]
    assert drv.set_params(0, buffer_bytes=8 * PERIOD, period_bytes=PERIOD) == Status.OK
    assert drv.pcm(RequestCode.PCM_PREPARE, 0) == Status.OK
    drv.device.dataplane.io[0].fail_next(1, Status.IO_ERR)
    drv.add_tx(0, bytes(PERIOD))
    drv.kick(QueueIndex.TX)
    assert drv.pcm(RequestCode.PCM_START, 0) == Status.OK
    drv.advance(0.05)
    [fire] = by_kind(records, "fault", "fire")
    assert fire.fields["status"] == "IO_ERR"
    assert by_kind(records, "io", "complete")[0].fields["status"] == "IO_ERR"


def test_jsonl_validates_and_summary_reads_it(traced):
    drv, records, tracer, path = traced
    assert drv.set_params(0, buffer_bytes=8 * PERIOD, period_bytes=PERIOD) == Status.OK
    assert drv.pcm(RequestCode.PCM_PREPARE, 0) == Status.OK
    for _ in range(4):
        drv.add_tx(0, bytes(PERIOD))
    drv.kick(QueueIndex.TX)
    assert drv.pcm(RequestCode.PCM_START, 0) == Status.OK
    drv.advance(0.5)
    tracer.close()
    lines = path.read_text().splitlines()
    assert len(lines) == len(records) > 10
    for line in lines:
        jsonschema.validate(json.loads(line), SCHEMA)
    text = format_summary(path)
    assert "snd0 stream 0 (playback)" in text
    assert "messages queued 4, completed 4 (OK 4)" in text
    assert "underruns/overruns" in text


def test_summary_and_plot_commands(traced, tmp_path):
    from click.testing import CliRunner

    from pyvmm.cli import main

    drv, records, tracer, path = traced
    assert drv.set_params(0, buffer_bytes=8 * PERIOD, period_bytes=PERIOD) == Status.OK
    assert drv.pcm(RequestCode.PCM_PREPARE, 0) == Status.OK
    drv.add_tx(0, bytes(PERIOD))
    drv.kick(QueueIndex.TX)
    assert drv.pcm(RequestCode.PCM_START, 0) == Status.OK
    drv.advance(0.2)
    tracer.close()
    runner = CliRunner()
    result = runner.invoke(main, ["trace", "summary", str(path)])
    assert result.exit_code == 0 and "messages queued 1, completed 1" in result.output
    png = tmp_path / "timeline.png"
    result = runner.invoke(main, ["trace", "plot", str(path), "-o", str(png)])
    assert result.exit_code == 0, result.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
