"""Figures for the data path of an audio-like message (printed, never asserted)."""

import numpy as np
import pytest

from pyvmm.virtio.testing import DriverQueue

PERIOD = 4096


@pytest.mark.parametrize("indirect", [False, True])
def test_bench_playback_message(benchmark, memory, allocator, indirect):
    """pop + read header + read_into a period (split over 2 page pieces) + write status + add_used."""
    dq = DriverQueue(memory, allocator, 64)
    q = dq.device_queue()
    frames = np.empty(PERIOD // 2, dtype=np.int16)
    payload = b"\x01\x00\x00\x00" + bytes(range(256)) * (PERIOD // 256)

    def setup():
        dq.collect()
        dq.add_message(payload, 8, out_cuts=[4, 4 + 1500], indirect=indirect)

    def one():
        chain = q.pop()
        r = chain.reader()
        r.read(4)
        r.read_into(frames)
        w = chain.writer()
        w.write(b"\0" * 8)
        q.add_used(chain, w.written)
        q.needs_notification()

    benchmark.pedantic(one, setup=setup, rounds=2000)
    assert frames.view(np.uint8)[:4].tolist() == [0, 1, 2, 3]
