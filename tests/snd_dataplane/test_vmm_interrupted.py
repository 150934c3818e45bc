"""No audio is lost when the VMM side is interrupted mid-stream: the playback WAV is complete
and valid after SIGTERM/SIGINT (clean close) and valid after SIGKILL (the header always covers
every whole period written). The real guest driver plays through QEMU + the vhost-user back end,
and the back-end process is the one interrupted."""

from __future__ import annotations

import signal
import struct
import time

import pytest

from qemu_harness import qemu_sound_guest

pytestmark = pytest.mark.qemu

FRAME = 4                       # S16_LE stereo
RATE = 48000
PERIOD_BYTES = RATE * FRAME // 100   # aplay --period-time=10000


def riff_sizes(data: bytes) -> tuple[int, int, int]:
    """(RIFF size field, data chunk size field, bytes actually after the data header)."""
    assert data[:4] == b"RIFF" and data[8:12] == b"WAVE", data[:16]
    riff_size = struct.unpack_from("<I", data, 4)[0]
    offset = 12
    while offset + 8 <= len(data):
        chunk, size = struct.unpack_from("<4sI", data, offset)
        if chunk == b"data":
            return riff_size, size, len(data) - offset - 8
        offset += 8 + size + (size & 1)
    raise AssertionError("no data chunk")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL])
def test_playback_wav_valid_after_interruption(tmp_path, sig):
    wav = tmp_path / "out.wav"
    options = {"playback": "1", "capture": "0", "backend.path": str(wav)}
    with qemu_sound_guest(options) as guest:
        guest.session.run("(aplay -q -D hw:0,0 -t raw -f S16_LE -c 2 -r 48000 --period-time=10000 "
                          "/dev/urandom > /dev/null 2>&1 &)", timeout=60)
        deadline = time.monotonic() + 30
        while (not wav.exists() or wav.stat().st_size < 44 + RATE * FRAME // 2) and time.monotonic() < deadline:
            time.sleep(0.1)  # at least half a second of audio has reached the file
        guest.backend.send_signal(sig)
        status = guest.backend.wait(timeout=30)
    data = wav.read_bytes()
    riff_size, data_size, present = riff_sizes(data)
    assert data_size >= RATE * FRAME // 2, data_size
    assert data_size % FRAME == 0, data_size
    if sig == signal.SIGKILL:
        assert status == -signal.SIGKILL
        # The header is rewritten after every period: at most the period being written is uncounted.
        assert data_size <= present < data_size + PERIOD_BYTES, (data_size, present)
    else:
        assert status == 0, guest.backend_log.read_text()[-2000:]
        assert data_size == present, (data_size, present)
        assert riff_size == len(data) - 8, (riff_size, len(data))
