"""``tone``: a sine wave as capture source, phase-continuous across periods (playback is discarded).

A capture test can then check the guest recorded the right frequency without any host audio.
"""

from __future__ import annotations

import numpy as np

from pyvmm_snd import pcm_format
from pyvmm_snd.backends.base import BackendParams, PcmBackend, option_float
from pyvmm_snd.spec import Direction


class ToneBackend(PcmBackend):
    NAME = "tone"
    OPTIONS = {
        "frequency": "sine frequency in Hz (default 440)",
        "amplitude": "peak amplitude, 0..1 of full scale (default 0.5)",
    }

    def __init__(self, options: dict[str, str], direction: Direction):
        super().__init__(options, direction)
        self.frequency = option_float(self.NAME, options, "frequency", 440.0, 0.0, 192000.0)
        self.amplitude = option_float(self.NAME, options, "amplitude", 0.5, 0.0, 1.0)
        self.phase = 0.0
        """Position in the sine cycle, in cycles (0..1), of the next frame."""

    def open(self, params: BackendParams) -> None:
        super().open(params)
        self.phase = 0.0

    def read(self, nbytes: int) -> bytes:
        """``nbytes`` of the sine, computed BLOCK_FRAMES at a time: the float64 intermediates
        (several times the output size) stay small whatever the caller asks for."""
        params = self._require_open()
        self.stats.read += nbytes
        frames = nbytes // params.frame_bytes
        step = self.frequency / params.rate
        blocks = []
        for start in range(0, frames, self.BLOCK_FRAMES):
            count = min(self.BLOCK_FRAMES, frames - start)
            phases = self.phase + np.arange(count, dtype=np.float64) * step
            self.phase = (self.phase + count * step) % 1.0
            wave = self.amplitude * np.sin(2 * np.pi * phases)
            blocks.append(pcm_format.from_float(np.repeat(wave, params.channels), params.format))
        data = b"".join(blocks)
        return data + self.silence(nbytes - len(data))

    BLOCK_FRAMES = 4096

    def describe(self) -> str:
        return f"tone {self.frequency:g} Hz amplitude {self.amplitude:g}"
