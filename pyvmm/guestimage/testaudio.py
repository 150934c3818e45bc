"""Known audio for bit-exact playback tests, generated at image build time.

Sample ``n`` of the interleaved stream (n = frame * channels + channel) is the signed
16-bit value of ``(n * RAMP_STEP) mod 2**16``: every sample in a clip shorter than 2**16
samples is distinct, so a test can tell dropped, repeated or swapped samples apart.
A device test recomputes the expected bytes with :func:`ramp_pcm`.
"""

from __future__ import annotations

import io
import wave

import numpy as np

RAMP_STEP = 7


def ramp_pcm(channels: int, frames: int) -> bytes:
    """Interleaved S16_LE samples of the ramp."""
    n = np.arange(frames * channels, dtype=np.uint32)
    return ((n * RAMP_STEP) & 0xFFFF).astype("<u2").tobytes()


def ramp_wav(rate: int, channels: int, frames: int) -> bytes:
    """The ramp as a RIFF/WAVE file (PCM, 16 bit)."""
    buf = io.BytesIO()
    with wave.open(buf, "wb") as wav:
        wav.setnchannels(channels)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(ramp_pcm(channels, frames))
    return buf.getvalue()
