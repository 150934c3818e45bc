"""Sample formats: byte layouts, round trips through float and between formats, gain."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyvmm_snd import pcm_format
from pyvmm_snd.pcm_format import FORMATS, sample_format
from pyvmm_snd.spec import PcmFormat

INT_FORMATS = sorted(f for f, sf in FORMATS.items() if sf.kind in ("int", "uint"))
G711 = [PcmFormat.MU_LAW, PcmFormat.A_LAW]
FLOAT_FORMATS = [PcmFormat.FLOAT, PcmFormat.FLOAT64]


def values_for(fmt: PcmFormat, max_size: int = 64):
    low, high = sample_format(fmt).int_range
    return st.lists(st.integers(low, high), min_size=0, max_size=max_size)


def test_supported_formats_are_linear_and_g711():
    names = {f.name for f in FORMATS}
    assert names == {"S8", "U8", "S16", "U16", "S18_3", "U18_3", "S20_3", "U20_3", "S24_3", "U24_3",
                     "S20", "U20", "S24", "U24", "S32", "U32", "FLOAT", "FLOAT64", "MU_LAW", "A_LAW"}
    for fmt in (PcmFormat.IMA_ADPCM, PcmFormat.DSD_U8, PcmFormat.DSD_U32, PcmFormat.IEC958_SUBFRAME, 99):
        with pytest.raises(ValueError, match="not supported"):
            sample_format(fmt)


@pytest.mark.parametrize("fmt, container, frame2", [
    (PcmFormat.U8, 1, 2), (PcmFormat.S16, 2, 4), (PcmFormat.S24_3, 3, 6), (PcmFormat.S24, 4, 8),
    (PcmFormat.S32, 4, 8), (PcmFormat.FLOAT, 4, 8), (PcmFormat.FLOAT64, 8, 16)])
def test_container_and_frame_sizes(fmt, container, frame2):
    assert sample_format(fmt).container == container
    assert pcm_format.frame_bytes(fmt, 2) == frame2


def test_silence_values():
    assert pcm_format.silence(PcmFormat.U8, 4) == b"\x80" * 4
    assert pcm_format.silence(PcmFormat.S8, 3) == b"\0" * 3
    assert pcm_format.silence(PcmFormat.U16, 4) == b"\x00\x80" * 2
    assert pcm_format.silence(PcmFormat.U24, 4) == b"\x00\x00\x80\x00"
    assert pcm_format.silence(PcmFormat.S16, 6) == bytes(6)
    assert pcm_format.silence(PcmFormat.FLOAT, 8) == bytes(8)
    # silence decodes to zero in every format (A-law has no zero code: +8/32768)
    for fmt in FORMATS:
        tolerance = 8 / 32768 if fmt == PcmFormat.A_LAW else 0
        assert np.abs(pcm_format.to_float(pcm_format.silence(fmt, 48), fmt)).max() <= tolerance
        assert pcm_format.from_float(np.zeros(3), fmt) == pcm_format.silence(fmt, 3 * sample_format(fmt).container)


def test_g711_code_values():
    decode = pcm_format.decode_int
    # ITU-T G.711 reference points: mu-law 0x80/0x00 = +/-32124, 0xFF/0x7F = 0; A-law 0xAA/0x2A = +/-32256,
    # 0xD5/0x55 = +/-8
    assert decode(bytes([0x80, 0x00, 0xFF, 0x7F, 0xF0]), PcmFormat.MU_LAW).tolist() == [32124, -32124, 0, 0, 120]
    assert decode(bytes([0xAA, 0x2A, 0xD5, 0x55]), PcmFormat.A_LAW).tolist() == [32256, -32256, 8, -8]
    assert pcm_format.silence(PcmFormat.MU_LAW, 2) == b"\xff\xff" and pcm_format.silence(PcmFormat.A_LAW, 1) == b"\xd5"


@pytest.mark.parametrize("fmt", G711, ids=lambda f: f.name)
def test_g711_codes_round_trip_and_encoding_is_nearest(fmt):
    codes = bytes(range(256))
    values = pcm_format.decode_int(codes, fmt)
    again = pcm_format.encode_int(values, fmt)
    expected = codes.replace(b"\x7f", b"\xff") if fmt == PcmFormat.MU_LAW else codes  # mu-law has two zeros
    assert again == expected
    assert len(set(values.tolist())) == (255 if fmt == PcmFormat.MU_LAW else 256)
    everything = np.arange(-32768, 32768)
    encoded = pcm_format.decode_int(pcm_format.encode_int(everything, fmt), fmt)
    best = np.abs(everything[:, None] - np.unique(values)[None, :]).min(axis=1)
    assert np.array_equal(np.abs(encoded - everything), best)
    assert np.all(np.diff(encoded) >= 0)  # monotonic


def test_g711_converts_to_s16_and_float():
    raw = bytes([0x80, 0x00, 0xFF])
    assert struct.unpack("<3h", pcm_format.convert(raw, PcmFormat.MU_LAW, PcmFormat.S16)) == (32124, -32124, 0)
    assert pcm_format.convert(struct.pack("<3h", 32124, -32124, 0), PcmFormat.S16, PcmFormat.MU_LAW) == raw
    assert pcm_format.to_float(bytes([0xAA]), PcmFormat.A_LAW)[0] == pytest.approx(32256 / 32768)


def test_known_byte_layouts():
    # S24: 24 bits low-aligned in 32 (ALSA S24_LE), sign-extended on encode
    assert pcm_format.encode_int(np.array([-1, 0x7FFFFF, -0x800000]), PcmFormat.S24) == \
        struct.pack("<3i", -1, 0x7FFFFF, -0x800000)
    # S24_3: packed three bytes
    assert pcm_format.encode_int(np.array([0x123456, -2]), PcmFormat.S24_3) == bytes.fromhex("563412feffff")
    # U8 / U16: offset binary
    assert pcm_format.encode_int(np.array([-128, 0, 127]), PcmFormat.U8) == bytes([0, 0x80, 0xFF])
    assert pcm_format.encode_int(np.array([0]), PcmFormat.U16) == b"\x00\x80"
    # S20 in 32: bits above 20 are ignored on decode
    assert list(pcm_format.decode_int(struct.pack("<I", 0xABC80000), PcmFormat.S20)) == [-0x80000]
    assert list(pcm_format.decode_int(struct.pack("<I", 0xFF000001), PcmFormat.S24)) == [1]
    # full scale
    assert pcm_format.to_float(struct.pack("<h", -32768), PcmFormat.S16)[0] == -1.0
    assert pcm_format.from_float(np.array([1.0, -1.0, 2.0]), PcmFormat.S16) == struct.pack("<3h", 32767, -32768, 32767)


@pytest.mark.parametrize("fmt", INT_FORMATS, ids=lambda f: f.name)
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_int_round_trip_through_float(fmt, data):
    values = data.draw(values_for(fmt))
    raw = pcm_format.encode_int(np.array(values, dtype=np.int64), fmt)
    assert len(raw) == len(values) * sample_format(fmt).container
    assert list(pcm_format.decode_int(raw, fmt)) == values
    dtype = np.float32 if sample_format(fmt).width <= 24 else np.float64
    assert pcm_format.from_float(pcm_format.to_float(raw, fmt, dtype), fmt) == raw


@pytest.mark.parametrize("fmt", FLOAT_FORMATS, ids=lambda f: f.name)
@settings(max_examples=60, deadline=None)
@given(values=st.lists(st.floats(-1, 1, width=32), max_size=64))
def test_float_round_trip(fmt, values):
    raw = np.array(values, dtype=sample_format(fmt).container_dtype).tobytes()
    assert pcm_format.from_float(pcm_format.to_float(raw, fmt, np.float64), fmt) == raw


@settings(max_examples=80, deadline=None)
@given(src=st.sampled_from(INT_FORMATS), dst=st.sampled_from(INT_FORMATS), data=st.data())
def test_int_conversion_widening_is_exact_and_back(src, dst, data):
    values = data.draw(values_for(src, 32))
    raw = pcm_format.encode_int(np.array(values, dtype=np.int64), src)
    converted = pcm_format.convert(raw, src, dst)
    ws, wd = sample_format(src).width, sample_format(dst).width
    expected = [v << (wd - ws) if wd >= ws else v >> (ws - wd) for v in values]
    assert list(pcm_format.decode_int(converted, dst)) == expected
    if wd >= ws:
        assert pcm_format.convert(converted, dst, src) == raw


@settings(max_examples=60, deadline=None)
@given(src=st.sampled_from(sorted(FORMATS)), data=st.data())
def test_conversion_to_float_and_back_preserves_values(src, data):
    sf = sample_format(src)
    if sf.is_float:
        values = data.draw(st.lists(st.floats(-1, 1, width=32), max_size=32))
        raw = np.array(values, dtype=sf.container_dtype).tobytes()
    else:
        raw = pcm_format.encode_int(np.array(data.draw(values_for(src, 32)), dtype=np.int64), src)
    via = pcm_format.convert(raw, src, PcmFormat.FLOAT64)
    assert pcm_format.convert(via, PcmFormat.FLOAT64, src) == raw


def test_convert_to_float_scales_to_full_scale():
    raw = struct.pack("<2h", 16384, -32768)
    assert np.frombuffer(pcm_format.convert(raw, PcmFormat.S16, PcmFormat.FLOAT), "<f4").tolist() == [0.5, -1.0]


@pytest.mark.parametrize("fmt", sorted(FORMATS), ids=lambda f: f.name)
def test_unity_gain_is_bit_exact_passthrough(fmt):
    raw = bytes(range(256)) * 3
    raw = raw[:len(raw) - len(raw) % pcm_format.frame_bytes(fmt, 2)]
    out = pcm_format.apply_gain(raw, fmt, 2, 1.0, False)
    assert out is raw
    assert pcm_format.apply_gain(raw, fmt, 2, [1.0, 1.0], [False, False]) is raw


@pytest.mark.parametrize("fmt", sorted(FORMATS), ids=lambda f: f.name)
def test_mute_gives_format_silence(fmt):
    raw = pcm_format.from_float(np.linspace(-0.9, 0.9, 64), fmt)
    out = pcm_format.apply_gain(raw, fmt, 2, 1.0, True)
    assert out == pcm_format.silence(fmt, len(raw))
    assert pcm_format.apply_gain(raw, fmt, 2, 0.0, False) == pcm_format.silence(fmt, len(raw))


def test_u8_mute_is_0x80():
    assert pcm_format.apply_gain(b"\x00\xff\x10\x90", PcmFormat.U8, 1, 1.0, True) == b"\x80" * 4


def test_gain_scales_and_clips():
    raw = struct.pack("<4h", 1000, -1000, 30000, -30000)
    half = pcm_format.apply_gain(raw, PcmFormat.S16, 2, 0.5, False)
    assert struct.unpack("<4h", half) == (500, -500, 15000, -15000)
    double = pcm_format.apply_gain(raw, PcmFormat.S16, 2, 2.0, False)
    assert struct.unpack("<4h", double) == (2000, -2000, 32767, -32768)
    # per channel: left muted, right halved
    per = pcm_format.apply_gain(raw, PcmFormat.S16, 2, [1.0, 0.5], [True, False])
    assert struct.unpack("<4h", per) == (0, -500, 0, -15000)
    u8 = pcm_format.apply_gain(bytes([0x80 + 100, 0x80 - 100]), PcmFormat.U8, 1, 0.5, False)
    assert u8 == bytes([0x80 + 50, 0x80 - 50])
    s32 = pcm_format.apply_gain(struct.pack("<i", 2**30 + 1), PcmFormat.S32, 1, 0.5, False)
    assert struct.unpack("<i", s32) == (2**29 + 0,)  # rint(half of an odd value) rounds to even


def test_gain_leaves_partial_frame_tail():
    raw = struct.pack("<2h", 1000, 1000) + b"\x01"
    assert pcm_format.apply_gain(raw, PcmFormat.S16, 2, 0.5, False)[-1:] == b"\x01"


def test_remix_channels():
    frames = np.array([[1, 2], [3, 4]])
    assert pcm_format.remix_channels(frames, 1).tolist() == [[1], [3]]
    assert pcm_format.remix_channels(frames, 4).tolist() == [[1, 2, 1, 2], [3, 4, 3, 4]]
    assert pcm_format.remix_channels(np.array([[7], [8]]), 3).tolist() == [[7, 7, 7], [8, 8, 8]]
