import io
import wave

import numpy as np

from pyvmm.guestimage.testaudio import RAMP_STEP, ramp_pcm, ramp_wav


def test_ramp_samples_are_distinct_and_follow_the_formula():
    samples = np.frombuffer(ramp_pcm(2, 4800), dtype="<i2")
    assert len(samples) == 9600
    assert len(set(samples.tolist())) == 9600
    n = 5000
    assert samples[n] == np.int16(np.uint16((n * RAMP_STEP) % 65536).view(np.int16))


def test_wav_wraps_the_same_samples():
    data = ramp_wav(48000, 2, 100)
    with wave.open(io.BytesIO(data)) as wav:
        assert (wav.getnchannels(), wav.getsampwidth(), wav.getframerate(), wav.getnframes()) == (2, 2, 48000, 100)
        assert wav.readframes(100) == ramp_pcm(2, 100)
