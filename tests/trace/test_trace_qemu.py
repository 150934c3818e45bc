"""End to end: the real virtio_snd driver (QEMU TCG + pyvmm's vhost-user back end) plays 10 s
with ``--trace-file``; every line fits the schema and ``pyvmm trace summary`` prints the
per-stream figures of what the driver did."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest

sys.path.insert(0, str(Path(__file__).parent.parent / "e2e_snd"))
from snd_checks import booted  # noqa: E402

from pyvmm.trace.schema import SCHEMA  # noqa: E402

pytestmark = pytest.mark.qemu

SECONDS = 10
BYTES_PER_SECOND = 48000 * 2 * 2


def test_trace_of_a_10s_aplay_validates_and_summarizes(tmp_path):
    trace = tmp_path / "aplay.jsonl"
    with booted({"backend": "null"}, backend_args=["--trace-file", str(trace)]) as guest:
        result = guest.session.run(f"aplay -q -d {SECONDS} -f S16_LE -c 2 -r 48000 -t raw /dev/zero; echo rc=$?",
                                   timeout=120)
        assert "rc=0" in result.output, result.output
    records = [json.loads(line) for line in trace.read_text().splitlines()]
    validator = jsonschema.Draft202012Validator(SCHEMA)
    for rec in records:
        validator.validate(rec)
    kinds = {(r["cat"], r["kind"]) for r in records}
    assert {("ctl", "request"), ("io", "queued"), ("io", "complete"), ("queue", "notify"), ("irq", "used")} <= kinds
    codes = [r["code"] for r in records if r["cat"] == "ctl"]
    for code in ("PCM_INFO", "PCM_SET_PARAMS", "PCM_PREPARE", "PCM_START", "PCM_STOP", "PCM_RELEASE"):
        assert code in codes
    played = sum(r["bytes"] for r in records if (r["cat"], r["kind"]) == ("io", "complete") and r["status"] == "OK")
    assert abs(played - SECONDS * BYTES_PER_SECOND) < 0.1 * SECONDS * BYTES_PER_SECOND, played
    summary = subprocess.run([sys.executable, "-m", "pyvmm", "trace", "summary", str(trace)],
                             capture_output=True, text=True, check=True).stdout
    print(summary)
    assert "snd0 stream 0 (playback):" in summary or "virtio-snd0 stream 0 (playback):" in summary
    assert "gap between completions ms min/median/p99/max:" in summary
    assert "completion lateness ms min/median/p99/max: -" not in summary  # real-time deadlines were traced
