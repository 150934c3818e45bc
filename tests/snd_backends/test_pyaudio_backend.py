"""The pyaudio back end for real, without a sound card: PortAudio's ALSA host API is pointed
at ALSA's ``file`` plugin (playback lands in a raw file, capture reads ``infile``) through
an ``.asoundrc`` in a private HOME. Each scenario runs in a subprocess because ALSA reads
its configuration once per process."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap

import pytest

from pyvmm_snd import pcm_format
from pyvmm_snd.spec import PcmFormat

pytestmark = pytest.mark.skipif(importlib.util.find_spec("pyaudio") is None,
                                reason="pyaudio is not installed (pip install pyaudio; needs libportaudio2)")

ASOUNDRC = """
pcm.!default {{
    type file
    slave.pcm "null"
    file "{out}"
    infile "{infile}"
    format "raw"
}}
"""

PRELUDE = """
import json, os, sys, time
from pyvmm_snd import pcm_format
from pyvmm_snd.backends import BackendParams, create_backend
from pyvmm_snd.spec import Direction, PcmFormat
"""


def run_scenario(tmp_path, body: str, infile: bytes = b"") -> dict:
    out, inpath = tmp_path / "out.raw", tmp_path / "in.raw"
    inpath.write_bytes(infile)
    (tmp_path / ".asoundrc").write_text(ASOUNDRC.format(out=out, infile=inpath))
    env = dict(os.environ, HOME=str(tmp_path))
    env.pop("ALSA_CONFIG_PATH", None)
    proc = subprocess.run([sys.executable, "-c", PRELUDE + textwrap.dedent(body)], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["_stderr"] = proc.stderr
    return result


PLAYBACK = """
fmt, channels = PcmFormat["{fmt}"], {channels}
fb = pcm_format.frame_bytes(fmt, channels)
backend = create_backend("pyaudio", {{"buffer_ms": "2000"}}, Direction.OUTPUT)
p = BackendParams(0, Direction.OUTPUT, channels, fmt, 48000, 480 * fb, 1920 * fb)
backend.open(p)
data = bytes.fromhex(open("data.hex").read())
backend.write(data[:10 * p.period_bytes])  # one burst, then period by period
latency = backend.latency_bytes
for i in range(10, len(data) // p.period_bytes):
    backend.write(data[i * p.period_bytes:(i + 1) * p.period_bytes])
backend.close()
backend.close()
drained = backend.wait_drained(10)
print(json.dumps({{"device": backend.device["name"], "drained": drained, "latency": latency,
                  "written": backend.stats.written, "callbacks": backend.stats.events.get("callbacks", 0)}}))
"""


def random_frames(fmt, channels, frames, seed):
    import numpy as np

    rng = np.random.default_rng(seed)
    sf = pcm_format.sample_format(fmt)
    if sf.is_float:
        return rng.uniform(-1, 1, frames * channels).astype(sf.container_dtype).tobytes()
    low, high = sf.int_range
    return pcm_format.encode_int(rng.integers(low, high + 1, frames * channels), fmt)


@pytest.mark.parametrize("fmt, host_fmt", [(PcmFormat.S16, PcmFormat.S16), (PcmFormat.S24, PcmFormat.S32),
                                           (PcmFormat.FLOAT, PcmFormat.FLOAT), (PcmFormat.U16, PcmFormat.S16)],
                         ids=lambda f: f.name)
def test_playback_reaches_the_alsa_file_plugin(tmp_path, fmt, host_fmt):
    channels = 2
    data = random_frames(fmt, channels, 480 * 15, seed=fmt)
    (tmp_path / "data.hex").write_text(data.hex())
    result = run_scenario(tmp_path, PLAYBACK.format(fmt=fmt.name, channels=channels))
    assert result["device"] == "default" and result["drained"]
    assert result["written"] == len(data) and result["callbacks"] > 0
    assert result["latency"] >= 0
    raw = (tmp_path / "out.raw").read_bytes()
    host = pcm_format.convert(data, fmt, host_fmt)
    period = 480 * pcm_format.frame_bytes(host_fmt, channels)
    burst = raw.find(host[:10 * period])
    assert burst >= 0, "the first ten periods reached ALSA contiguously"
    position = burst + 10 * period
    for i in range(10, 15):  # later periods in order (the unpaced null sink may insert silence between)
        found = raw.find(host[i * period:(i + 1) * period], position)
        assert found >= position, f"period {i} missing or out of order"
        position = found + period


CAPTURE = """
backend = create_backend("pyaudio", {}, Direction.INPUT)
p = BackendParams(1, Direction.INPUT, 2, PcmFormat.S16, 48000, 1920, 7680)
backend.open(p)
time.sleep(0.05)
periods = [backend.read(p.period_bytes).hex() for _ in range(3)]
latency = backend.latency_bytes
backend.close()
backend.close()
print(json.dumps({"periods": periods, "callbacks": backend.stats.events.get("callbacks", 0),
                  "latency": latency}))
"""


def test_capture_reads_the_alsa_file_plugin_infile(tmp_path):
    """The infile holds S16 stereo frames numbered 0, 1, 2, ... (low, high 16 bits); ALSA's
    null slave is not paced, so the file is large enough not to be exhausted (after its
    end the plugin returns stale data)."""
    import numpy as np

    frames = 8 << 20
    counter = np.arange(frames, dtype=np.uint32)
    infile = np.stack([counter & 0xFFFF, counter >> 16], axis=1).astype("<u2").tobytes()
    result = run_scenario(tmp_path, CAPTURE, infile)
    assert result["callbacks"] > 0
    for text in result["periods"]:
        period = np.frombuffer(bytes.fromhex(text), "<u2").reshape(-1, 2).astype(np.int64)
        assert len(period) == 480
        numbers = period[:, 0] | period[:, 1] << 16
        assert np.array_equal(np.diff(numbers), np.ones(479)), "captured frames are consecutive infile frames"


ERRORS = """
from pyvmm.errors import VmmError
out = []
for options in ({"device": "no-such-card"}, {"device": "99"}, {"buffer_ms": "0"}):
    try:
        create_backend("pyaudio", options, Direction.OUTPUT)
        out.append("no error")
    except VmmError as exc:
        out.append(str(exc))
ok = create_backend("pyaudio", {"device": "def"}, Direction.INPUT)  # part of a name
out.append(ok.device["name"])
print(json.dumps({"messages": out}))
"""


def test_device_selection_errors(tmp_path):
    result = run_scenario(tmp_path, ERRORS)
    assert "ALSA lib" not in result["_stderr"], "host API probing noise goes to the DEBUG log, not stderr"
    messages = result["messages"]
    assert "no output device matches device='no-such-card'" in messages[0] and "0: default" in messages[0]
    assert "no output device matches device='99'" in messages[1]
    assert "buffer_ms=0 is outside" in messages[2]
    assert messages[3] == "default"
