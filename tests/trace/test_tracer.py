"""The decoded trace core: --trace-dev parsing, routing by device and category, JSON lines,
the schema, and the transport's own records (notifications, interrupts, registers, ring faults)."""

import io
import json

import jsonschema
import pytest

from pyvmm.errors import VmmError
from pyvmm.events import EventBus
from pyvmm.trace import Tracer, parse_trace_specs
from pyvmm.trace.schema import KINDS, SCHEMA
from pyvmm.virtio import constants as C
from pyvmm.virtio.mmio import MmioTransport
from pyvmm.virtio.testing import EchoDevice, FakeInterrupt, MmioDriver


def test_spec_defaults_and_categories():
    [snd] = parse_trace_specs(["snd"])
    assert "mmio" not in snd.categories and {"ctl", "io", "evt", "queue", "irq"} <= snd.categories
    [picked] = parse_trace_specs(["snd0:ctl,io"])
    assert picked.categories == {"ctl", "io"}
    assert parse_trace_specs(["all:all"])[0].categories >= {"mmio", "fault"}


@pytest.mark.parametrize("bad", ["snd:bogus", ":ctl", "snd:ctl,nope"])
def test_bad_spec_is_one_line_error(bad):
    with pytest.raises(VmmError) as err:
        parse_trace_specs([bad])
    assert "\n" not in str(err.value)


def test_device_matching():
    tracer = Tracer(parse_trace_specs(["snd:ctl", "snd1:io"]))
    assert tracer.categories_for("snd0") == {"ctl"}
    assert tracer.categories_for("snd1") == {"ctl", "io"}
    assert tracer.categories_for("sndx") == frozenset()
    assert tracer.categories_for("echo0") == frozenset()


def test_untraced_sink_records_nothing_and_traced_sink_writes_both_outputs(tmp_path):
    console = io.StringIO()
    path = tmp_path / "t.jsonl"
    tracer = Tracer(parse_trace_specs(["snd0:ctl"]), console=console, jsonl_path=path)
    bus = EventBus(tracer)
    traced, other = bus.sink("snd0"), bus.sink("echo0")
    assert traced.tracing("ctl") and not traced.tracing("io") and not other.tracing("ctl")
    other.trace("ctl", "request", code="X", desc="X", status="OK")
    traced.trace("io", "queued", stream=0)
    traced.trace("ctl", "request", code="PCM_START", desc="PCM_START stream=0", status="OK")
    tracer.close()
    assert tracer.records == 1
    [line] = console.getvalue().splitlines()
    assert line.endswith("snd0 ctl request PCM_START stream=0 -> OK")
    [rec] = [json.loads(x) for x in path.read_text().splitlines()]
    assert rec["dev"] == "snd0" and rec["code"] == "PCM_START" and rec["t"] >= 0
    jsonschema.validate(rec, SCHEMA)


def test_schema_rejects_a_record_missing_its_kinds_fields():
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"t": 0.1, "dev": "snd0", "cat": "io", "kind": "complete", "stream": 0}, SCHEMA)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"t": 0.1, "dev": "snd0", "cat": "nonsense", "kind": "x"}, SCHEMA)
    assert ("io", "complete") in KINDS


def test_trace_file_in_missing_directory_is_one_line_error(tmp_path):
    from pyvmm.config import check_trace_options

    with pytest.raises(VmmError, match="does not exist"):
        check_trace_options([], tmp_path / "nope" / "t.jsonl")
    with pytest.raises(VmmError, match="is a directory"):
        check_trace_options([], tmp_path)


@pytest.fixture
def traced_transport(memory, allocator, device_loop):
    console = io.StringIO()
    tracer = Tracer(parse_trace_specs(["echo:all"]), console=console)
    records = []
    tracer.add_writer(records.append)
    device = EchoDevice()
    device.event_sink = EventBus(tracer).sink("echo0")
    irq = FakeInterrupt()
    transport = MmioTransport(device, memory, device_loop, irq, name="echo")
    yield transport, MmioDriver(transport, memory, allocator), irq, records
    transport.close()


def test_transport_traces_registers_notifications_and_interrupts(traced_transport):
    transport, drv, irq, records = traced_transport
    drv.probe()
    dq = drv.queues[0]
    dq.add_message(b"ping", 16)
    drv.kick(0)
    assert irq.wait(5)
    kinds = [(r.cat, r.kind) for r in records]
    assert ("mmio", "write") in kinds and ("mmio", "read") in kinds
    notify = next(r for r in records if (r.cat, r.kind) == ("queue", "notify"))
    assert notify.fields["queue"] == 0 and notify.fields["avail_idx"] == 1
    assert ("irq", "used") in kinds
    status_writes = [r.fields["value"] for r in records if r.kind == "write" and r.fields["reg"] == "STATUS"]
    assert status_writes and status_writes[-1] & C.Status.DRIVER_OK


def test_transport_traces_ring_faults_with_spec_section(traced_transport, memory):
    transport, drv, irq, records = traced_transport
    drv.probe()
    dq = drv.queues[0]
    # The driver publishes an avail idx far ahead of what it wrote: a broken ring (2.7.13.3).
    dq.set_avail_idx(1000)
    drv.kick(0)
    irq.wait(5)
    faults = [r for r in records if (r.cat, r.kind) == ("queue", "fault")]
    assert faults, [(r.cat, r.kind) for r in records]
    assert faults[0].fields["fault"] == "AVAIL_IDX_JUMP" and faults[0].fields["section"] == "2.7.13.3"
