"""RIFF/WAVE headers with ``struct``: the formats the stdlib ``wave`` module cannot write.

``wave`` (3.11) writes integer PCM only; virtio streams also carry IEEE float and 24-bit
samples in 32-bit containers, which need ``WAVE_FORMAT_IEEE_FLOAT`` and
``WAVE_FORMAT_EXTENSIBLE``. The header written here has a fixed size per layout, so the
sink can rewrite it in place after every period (:func:`build_header`).

Virtio format -> WAV storage (WAV has no unsigned formats above 8 bits, no signed 8-bit,
and MSB-aligned samples in wider containers):

=====================  ===========================================================
S8 / U8                8-bit unsigned PCM
S16 / U16              16-bit PCM
MU_LAW / A_LAW         16-bit PCM (decoded)
S24_3 / S20_3 / S18_3  24-bit PCM, samples shifted to the top (valid bits 18/20/24)
S24 / S20 (32-bit)     32-bit PCM, shifted to the top, EXTENSIBLE valid bits 24/20
S32 / U32              32-bit PCM
FLOAT / FLOAT64        IEEE float 32/64
=====================  ===========================================================

(unsigned virtio formats are re-centred on zero). EXTENSIBLE is used, as Microsoft asks,
for more than two channels, more than 16 bits, or valid bits < container bits; the channel
mask is 0 (unassigned) beyond stereo because the guest's ALSA channel order is kept.
"""

from __future__ import annotations

import functools
import struct
from dataclasses import dataclass

from pyvmm_snd import pcm_format
from pyvmm_snd.spec import PcmFormat

WAVE_FORMAT_PCM = 0x0001
WAVE_FORMAT_IEEE_FLOAT = 0x0003
WAVE_FORMAT_EXTENSIBLE = 0xFFFE
_GUID_TAIL = bytes.fromhex("00001000800000aa00389b71")
"""KSDATAFORMAT_SUBTYPE_* GUIDs in memory: the format tag (LE u32) followed by these 12 bytes."""

SPEAKER_MASKS = {1: 0x4, 2: 0x3}
"""FRONT_CENTER for mono, FRONT_LEFT|FRONT_RIGHT for stereo."""

MAX_RIFF_SIZE = 0xFFFFFFFF

_STORAGE: dict[PcmFormat, PcmFormat] = {
    PcmFormat.S8: PcmFormat.U8, PcmFormat.U8: PcmFormat.U8,
    PcmFormat.S16: PcmFormat.S16, PcmFormat.U16: PcmFormat.S16,
    PcmFormat.MU_LAW: PcmFormat.S16, PcmFormat.A_LAW: PcmFormat.S16,
    PcmFormat.S18_3: PcmFormat.S24_3, PcmFormat.U18_3: PcmFormat.S24_3,
    PcmFormat.S20_3: PcmFormat.S24_3, PcmFormat.U20_3: PcmFormat.S24_3,
    PcmFormat.S24_3: PcmFormat.S24_3, PcmFormat.U24_3: PcmFormat.S24_3,
    PcmFormat.S20: PcmFormat.S32, PcmFormat.U20: PcmFormat.S32,
    PcmFormat.S24: PcmFormat.S32, PcmFormat.U24: PcmFormat.S32,
    PcmFormat.S32: PcmFormat.S32, PcmFormat.U32: PcmFormat.S32,
    PcmFormat.FLOAT: PcmFormat.FLOAT, PcmFormat.FLOAT64: PcmFormat.FLOAT64,
}


@dataclass(frozen=True)
class WavLayout:
    """The ``fmt`` chunk, plus which virtio format the data chunk's bytes are in."""

    storage: PcmFormat
    channels: int
    rate: int
    valid_bits: int

    @functools.cached_property
    def container_bits(self) -> int:
        return pcm_format.sample_format(self.storage).container * 8

    @functools.cached_property
    def is_float(self) -> bool:
        return pcm_format.sample_format(self.storage).is_float

    @functools.cached_property
    def frame_bytes(self) -> int:
        return pcm_format.frame_bytes(self.storage, self.channels)

    @functools.cached_property
    def fmt_bytes(self) -> bytes:
        """:meth:`fmt_chunk`, built once: the WAV sink rewrites the header after every period."""
        return self.fmt_chunk()

    @functools.cached_property
    def header_size(self) -> int:
        return len(build_header(self, 0))

    @functools.cached_property
    def extensible(self) -> bool:
        return self.channels > 2 or (not self.is_float and self.container_bits > 16) \
            or self.valid_bits != self.container_bits

    @functools.cached_property
    def format_tag(self) -> int:
        if self.extensible:
            return WAVE_FORMAT_EXTENSIBLE
        return WAVE_FORMAT_IEEE_FLOAT if self.is_float else WAVE_FORMAT_PCM

    @property
    def subformat(self) -> int:
        return WAVE_FORMAT_IEEE_FLOAT if self.is_float else WAVE_FORMAT_PCM

    @classmethod
    def for_stream(cls, fmt: PcmFormat, channels: int, rate: int) -> WavLayout:
        """How a stream in virtio format ``fmt`` is stored; the data goes through
        ``pcm_format.convert(data, fmt, layout.storage)``."""
        pcm_format.sample_format(fmt)
        storage = _STORAGE[PcmFormat(fmt)]
        sf = pcm_format.sample_format(fmt)
        valid = sf.width if not sf.is_float and storage != PcmFormat.U8 else sf.container * 8
        return cls(storage, channels, rate, valid)

    def fmt_chunk(self) -> bytes:
        block = self.frame_bytes
        body = struct.pack("<HHIIHH", self.format_tag, self.channels, self.rate, self.rate * block, block,
                           self.container_bits)
        if self.format_tag == WAVE_FORMAT_EXTENSIBLE:
            mask = SPEAKER_MASKS.get(self.channels, 0)
            body += struct.pack("<HHI", 22, self.valid_bits, mask) + struct.pack("<I", self.subformat) + _GUID_TAIL
        elif self.format_tag != WAVE_FORMAT_PCM:
            body += struct.pack("<H", 0)
        return b"fmt " + struct.pack("<I", len(body)) + body


def build_header(layout: WavLayout, data_size: int) -> bytes:
    """RIFF header, ``fmt``, ``fact`` (non-PCM tags) and the ``data`` chunk header for
    ``data_size`` bytes of samples; its length depends only on ``layout``."""
    chunks = layout.fmt_bytes
    if layout.format_tag != WAVE_FORMAT_PCM:
        chunks += b"fact" + struct.pack("<II", 4, data_size // layout.frame_bytes)
    chunks += b"data" + struct.pack("<I", data_size)
    riff_size = 4 + len(chunks) + data_size + (data_size & 1)
    return b"RIFF" + struct.pack("<I", riff_size) + b"WAVE" + chunks



@dataclass(frozen=True)
class WavInfo:
    layout: WavLayout
    data_offset: int
    data_size: int
    """From the header, clamped to the bytes present, whole frames."""
    riff_size: int
    header_data_size: int
    """The data chunk size exactly as the header states it."""

    @property
    def frames(self) -> int:
        return self.data_size // self.layout.frame_bytes


def parse_header(blob: bytes, file_size: int | None = None) -> WavInfo:
    """Parse a WAV file's leading bytes (at least up to the ``data`` chunk header).

    Accepts integer PCM (8/16/24/32-bit), IEEE float (32/64-bit) and EXTENSIBLE with a PCM or
    float sub-format; ``ValueError`` with the reason otherwise.
    """
    if len(blob) < 12 or blob[:4] != b"RIFF" or blob[8:12] != b"WAVE":
        raise ValueError("not a RIFF/WAVE file")
    riff_size = struct.unpack_from("<I", blob, 4)[0]
    file_size = len(blob) if file_size is None else file_size
    pos, layout = 12, None
    while pos + 8 <= len(blob):
        chunk_id, size = blob[pos:pos + 4], struct.unpack_from("<I", blob, pos + 4)[0]
        body = pos + 8
        if chunk_id == b"fmt ":
            layout = _parse_fmt(blob[body:body + size])
        elif chunk_id == b"data":
            if layout is None:
                raise ValueError("data chunk before fmt chunk")
            present = max(0, min(size, file_size - body))
            return WavInfo(layout, body, present - present % layout.frame_bytes, riff_size, size)
        pos = body + size + (size & 1)
    raise ValueError("no data chunk")


def _parse_fmt(body: bytes) -> WavLayout:
    if len(body) < 16:
        raise ValueError(f"fmt chunk of {len(body)} bytes")
    tag, channels, rate, _, block, bits = struct.unpack_from("<HHIIHH", body)
    valid = bits
    if tag == WAVE_FORMAT_EXTENSIBLE:
        if len(body) < 40:
            raise ValueError("EXTENSIBLE fmt chunk shorter than 40 bytes")
        valid = struct.unpack_from("<H", body, 18)[0] or bits
        tag = struct.unpack_from("<I", body, 24)[0]
        if body[28:40] != _GUID_TAIL:
            raise ValueError("EXTENSIBLE sub-format is not a KSDATAFORMAT_SUBTYPE GUID")
    if channels < 1 or rate < 1:
        raise ValueError(f"{channels} channels at {rate} Hz")
    storage = {(WAVE_FORMAT_PCM, 8): PcmFormat.U8, (WAVE_FORMAT_PCM, 16): PcmFormat.S16,
               (WAVE_FORMAT_PCM, 24): PcmFormat.S24_3, (WAVE_FORMAT_PCM, 32): PcmFormat.S32,
               (WAVE_FORMAT_IEEE_FLOAT, 32): PcmFormat.FLOAT,
               (WAVE_FORMAT_IEEE_FLOAT, 64): PcmFormat.FLOAT64}.get((tag, bits))
    if storage is None:
        raise ValueError(f"unsupported WAV sample format (tag {tag:#x}, {bits} bits)")
    if block != bits // 8 * channels:
        raise ValueError(f"block align {block} does not match {channels} x {bits} bits")
    return WavLayout(storage, channels, rate, valid)
