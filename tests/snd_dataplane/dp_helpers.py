"""Shared pieces of the data-plane tests: a fake loop with ``call_soon``, a driver that
records when each I/O message came back, WAV reading."""

from __future__ import annotations

import wave
from pathlib import Path

from pyvmm_snd.device import SoundDevice
from pyvmm_snd.spec import QueueIndex, RequestCode, Status
from snd_driver import FakeClockLoop, SndDriver

PERIOD = 4096  # bytes: 1024 frames of 48 kHz stereo S16
PERIOD_S = 1024 / 48000
BUFFER = 8 * PERIOD


class FakeLoop(FakeClockLoop):
    """FakeClockLoop plus ``call_soon`` (the fast clock schedules through it)."""

    def call_soon(self, fn, *args):
        return self.call_at(self.now, fn, *args)


class TimedDriver(SndDriver):
    """Records (loop time, queue, head) for every completion, in order, across all queues."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("loop", FakeLoop())
        if kwargs.get("device") is None:  # the options as given: SndDriver would default to backend=null
            kwargs["device"] = SoundDevice(kwargs.pop("options", None) or {})
        super().__init__(*args, **kwargs)
        self.completions: list[tuple[float, int, int]] = []
        inner = self.ctx.complete

        def complete(queue_index, chain, length, notify=True):
            self.completions.append((self.loop.time(), int(queue_index), chain.head))
            return inner(queue_index, chain, length, notify=notify)

        self.ctx.complete = complete

    def times(self, queue: QueueIndex) -> list[float]:
        return [t for t, q, _ in self.completions if q == queue]

    def monitor(self, line: str) -> str:
        """One line typed at the VMM monitor for this device, without its name (``late 0 2 5``)."""
        name, *args = line.split()
        return self.device.monitor_commands()[name](args)

    def run_stream(self, stream_id: int, **params) -> None:
        assert self.set_params(stream_id, **params) == Status.OK
        assert self.pcm(RequestCode.PCM_PREPARE, stream_id) == Status.OK


def read_wav(path: Path) -> tuple[wave._wave_params, bytes]:
    with wave.open(str(path), "rb") as w:
        return w.getparams(), w.readframes(w.getnframes())


def periods(n: int, size: int = PERIOD, seed: int = 1) -> list[bytes]:
    """Distinct, non-silent periods (so a replay or a reorder shows)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    return [rng.integers(1, 255, size, dtype=np.uint8).tobytes() for _ in range(n)]
