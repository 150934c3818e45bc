"""PCM sample formats of virtio-snd as numpy arrays: decode, encode, convert, gain.

Every linear format of the spec is supported (signed/unsigned integers of 8-32 bits in
1-, 2-, 3- or 4-byte little-endian containers, FLOAT and FLOAT64). Integers are
**low-aligned** in their container, as in ALSA: ``S24`` is ALSA ``S24_LE`` (24 significant
bits in the low three bytes of a 32-bit word), ``S24_3`` is packed 3-byte ``S24_3LE``.
Bits above the sample width are ignored on decode and written as the sign extension
(signed) or zero (unsigned) on encode.

G.711 mu-law and A-law (one byte per sample) behave as 16-bit integer formats: they
decode to 16-bit linear values and encode to the code with the nearest value.

IMA ADPCM, DSD and IEC958 sub-frames are not supported: :func:`sample_format` raises
``ValueError`` for them, so a topology that offers them can be refused at start-up
(:data:`SUPPORTED_FORMATS`).

Conversions between integer formats are exact (bit shifts); anything involving a float
format goes through float64, so 32-bit integers survive a float round trip too.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pyvmm_snd import spec
from pyvmm_snd.spec import PcmFormat


@dataclass(frozen=True)
class SampleFormat:
    """Storage of one linear PCM format."""

    format: PcmFormat
    width: int
    """Significant bits of the linear value (float formats: 32 or 64; G.711: 16)."""
    container: int
    """Bytes one sample occupies (1, 2, 3, 4 or 8)."""
    kind: str
    """``"int"``, ``"uint"``, ``"float"``, ``"mulaw"`` or ``"alaw"``."""

    @property
    def companded(self) -> bool:
        return self.kind in ("mulaw", "alaw")

    @property
    def is_float(self) -> bool:
        return self.kind == "float"

    @property
    def packed(self) -> bool:
        """Three-byte container: numpy has no dtype for it."""
        return self.container == 3

    @property
    def silence(self) -> bytes:
        """One silent sample: 0 for signed and float, the midpoint for unsigned (U8: 0x80)."""
        return spec.SAMPLE_LAYOUTS[self.format].silence

    @property
    def container_dtype(self) -> np.dtype:
        """The little-endian numpy dtype of one container (packed formats: 3 x uint8 per sample)."""
        if self.is_float:
            return np.dtype(f"<f{self.container}")
        if self.packed or self.companded:
            return np.dtype(np.uint8)
        return np.dtype(f"<{'i' if self.kind == 'int' else 'u'}{self.container}")

    @property
    def int_range(self) -> tuple[int, int]:
        """Smallest and largest signed sample value (integer formats)."""
        half = 1 << (self.width - 1)
        return -half, half - 1


def _table() -> dict[PcmFormat, SampleFormat]:
    table = {PcmFormat.MU_LAW: SampleFormat(PcmFormat.MU_LAW, 16, 1, "mulaw"),
             PcmFormat.A_LAW: SampleFormat(PcmFormat.A_LAW, 16, 1, "alaw")}
    for fmt, layout in spec.SAMPLE_LAYOUTS.items():
        name = fmt.name
        if name in ("FLOAT", "FLOAT64"):
            table[fmt] = SampleFormat(fmt, layout.width, layout.physical_width // 8, "float")
        elif name[0] in "SU" and name[1].isdigit():
            table[fmt] = SampleFormat(fmt, layout.width, layout.physical_width // 8,
                                      "int" if name[0] == "S" else "uint")
    return table


FORMATS: dict[PcmFormat, SampleFormat] = _table()
SUPPORTED_FORMATS = frozenset(FORMATS)
"""The formats the data plane (backends, gain) can handle."""


def _mulaw_values() -> np.ndarray:
    """16-bit linear value of each mu-law code (ITU-T G.711; codes are stored inverted)."""
    u = ~np.arange(256, dtype=np.int64) & 0xFF
    exponent, mantissa = u >> 4 & 7, u & 0xF
    magnitude = ((mantissa << 3) + 0x84 << exponent) - 0x84
    return np.where(u & 0x80, -magnitude, magnitude)


def _alaw_values() -> np.ndarray:
    """16-bit linear value of each A-law code (ITU-T G.711; even bits are stored inverted)."""
    a = np.arange(256, dtype=np.int64) ^ 0x55
    exponent, mantissa = a >> 4 & 7, a & 0xF
    magnitude = np.where(exponent == 0, (mantissa << 4) + 8, (mantissa << 4) + 0x108 << np.maximum(exponent - 1, 0))
    return np.where(a & 0x80, magnitude, -magnitude)


_G711_VALUES = {"mulaw": _mulaw_values(), "alaw": _alaw_values()}


def _g711_encode(values: np.ndarray, kind: str) -> np.ndarray:
    """The code whose value is nearest to each 16-bit value. Ties go to the larger value, so
    0 encodes as the spec's silence codes: A-law 0xD5 (+8) and mu-law 0xFF ("positive zero")."""
    table = _G711_VALUES[kind]
    order = np.lexsort((-np.arange(256), table))
    ordered = table[order]
    right = np.clip(np.searchsorted(ordered, values), 1, len(ordered) - 1)
    pick_left = values - ordered[right - 1] < ordered[right] - values
    return order[np.where(pick_left, right - 1, right)].astype(np.uint8)


_FORMATS_BY_CODE: dict[int, SampleFormat] = {int(code): sf for code, sf in FORMATS.items()}


def sample_format(fmt: int) -> SampleFormat:
    """The storage description of ``fmt``; ``ValueError`` for a format the data plane cannot handle."""
    found = _FORMATS_BY_CODE.get(fmt)  # asked per period: no enum construction on the way
    if found is not None:
        return found
    try:
        return FORMATS[PcmFormat(fmt)]
    except (KeyError, ValueError):
        raise ValueError(f"sample format {spec.format_name(fmt)} is not supported by the audio data plane "
                         f"(supported: {' '.join(f.name.lower() for f in sorted(FORMATS))})") from None


def frame_bytes(fmt: int, channels: int) -> int:
    return sample_format(fmt).container * channels


def silence(fmt: int, nbytes: int) -> bytes:
    """``nbytes`` of silence (a whole number of samples is expected; a tail is cut from the pattern)."""
    pattern = sample_format(fmt).silence
    return (pattern * (nbytes // len(pattern) + 1))[:nbytes]


# -- integers -----------------------------------------------------------------------------------


def _whole(data: bytes | bytearray | memoryview, sf: SampleFormat) -> memoryview:
    view = memoryview(data).cast("B")
    return view[:len(view) - len(view) % sf.container]


def decode_int(data: bytes, fmt: int) -> np.ndarray:
    """Signed int64 sample values of an integer format (unsigned formats are re-centred on 0)."""
    sf = sample_format(fmt)
    if sf.is_float:
        raise ValueError(f"{sf.format.name} is not an integer format")
    raw_bytes = np.frombuffer(_whole(data, sf), dtype=np.uint8)
    if sf.companded:
        return _G711_VALUES[sf.kind][raw_bytes]
    if sf.packed:
        b = raw_bytes.reshape(-1, 3).astype(np.int64)
        raw = b[:, 0] | b[:, 1] << 8 | b[:, 2] << 16
    else:
        raw = raw_bytes.view(f"<u{sf.container}").astype(np.int64)
    mask = (1 << sf.width) - 1
    half = 1 << (sf.width - 1)
    value = raw & mask
    if sf.kind == "int":
        return np.where(value >= half, value - (1 << sf.width), value)
    return value - half


def encode_int(values: np.ndarray, fmt: int) -> bytes:
    """Bytes of signed sample ``values`` (clipped to the format's range) in integer format ``fmt``."""
    sf = sample_format(fmt)
    if sf.is_float:
        raise ValueError(f"{sf.format.name} is not an integer format")
    low, high = sf.int_range
    v = np.clip(np.asarray(values, dtype=np.int64), low, high)
    if sf.companded:
        return _g711_encode(v, sf.kind).tobytes()
    if sf.kind == "uint":
        v = v + (1 << (sf.width - 1))
    if sf.packed:
        v = v & 0xFFFFFF
        return np.stack([v & 0xFF, v >> 8 & 0xFF, v >> 16 & 0xFF], axis=-1).astype(np.uint8).tobytes()
    return v.astype(sf.container_dtype).tobytes()


# -- float -----------------------------------------------------------------------------------------


def to_float(data: bytes, fmt: int, dtype=np.float32) -> np.ndarray:
    """Interleaved samples of ``data`` as floats, full scale [-1.0, 1.0)."""
    sf = sample_format(fmt)
    if sf.is_float:
        return np.frombuffer(_whole(data, sf), dtype=sf.container_dtype).astype(dtype)
    return (decode_int(data, fmt) * (1.0 / (1 << (sf.width - 1)))).astype(dtype)


def from_float(samples: np.ndarray, fmt: int) -> bytes:
    """Encode full-scale float samples; integers are rounded and clipped, NaN becomes 0."""
    sf = sample_format(fmt)
    x = np.nan_to_num(np.asarray(samples, dtype=np.float64), nan=0.0, posinf=1.0, neginf=-1.0)
    if sf.is_float:
        return x.astype(sf.container_dtype).tobytes()
    low, high = sf.int_range
    return encode_int(np.clip(np.rint(x * (1 << (sf.width - 1))), low, high).astype(np.int64), fmt)


def convert(data: bytes, src: int, dst: int) -> bytes:
    """Re-encode interleaved samples from ``src`` to ``dst`` (same channel count and rate).

    Integer to integer is exact when widening and truncates (arithmetic shift) when narrowing.
    """
    if src == dst:
        return data if isinstance(data, bytes) else bytes(data)
    s, d = sample_format(src), sample_format(dst)
    if s.is_float or d.is_float:
        return from_float(to_float(data, src, np.float64), dst)
    values = decode_int(data, src)
    shift = d.width - s.width
    return encode_int(values << shift if shift >= 0 else values >> -shift, dst)


def remix_channels(frames: np.ndarray, channels: int) -> np.ndarray:
    """``frames`` (shape frames x channels_in) with ``channels`` columns: a mono source is
    copied to every channel, extra channels are dropped, missing ones repeat the source
    channels in order (stereo to 4 channels gives L R L R)."""
    have = frames.shape[1]
    if have == channels:
        return frames
    if channels < have:
        return frames[:, :channels]
    return frames[:, [i % have for i in range(channels)]]


def apply_gain(data: bytes, fmt: int, channels: int, gain: float | np.ndarray, mute: bool | np.ndarray) -> bytes:
    """Scale interleaved samples by ``gain`` (linear; a scalar or one value per channel) and
    silence them when ``mute`` (a bool or one bool per channel).

    Unity gain without mute returns ``data`` itself (bit-exact passthrough, no copy).
    A tail shorter than one frame is passed through unchanged.
    """
    gains = np.broadcast_to(np.asarray(gain, dtype=np.float64), (channels,))
    mutes = np.broadcast_to(np.asarray(mute, dtype=bool), (channels,))
    if not mutes.any() and np.all(gains == 1.0):
        return data
    sf = sample_format(fmt)
    frame = sf.container * channels
    whole = len(data) - len(data) % frame
    if mutes.all() or not np.any(gains):
        return silence(fmt, whole) + bytes(data[whole:])
    samples = to_float(data[:whole], fmt, np.float64).reshape(-1, channels)
    samples *= np.where(mutes, 0.0, gains)
    return from_float(samples.reshape(-1), fmt) + bytes(data[whole:])
