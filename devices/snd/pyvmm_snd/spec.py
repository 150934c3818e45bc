"""virtio-sound wire format: every constant and struct of the spec, declared once.

Names follow the virtio spec (``device-types/sound/description.tex``) and the Linux UAPI
header ``include/uapi/linux/virtio_snd.h`` with the ``VIRTIO_SND_`` prefix dropped:
``VIRTIO_SND_R_PCM_INFO`` is ``RequestCode.PCM_INFO``, ``struct virtio_snd_pcm_info`` is
:class:`PcmInfo`. Nested headers (``struct virtio_snd_hdr hdr``) are flattened into their
fields (``code``, ``hda_fn_nid``) so a request reads ``req.stream_id``, not ``req.hdr.stream_id``.

Used by the device, the tests' driver model and the trace decoder (:func:`describe`).
"""

from __future__ import annotations

import ctypes
import struct
from dataclasses import dataclass
from enum import IntEnum

# --- identity, features, queues -------------------------------------------------------

DEVICE_ID = 25
F_CTLS = 0
"""Device feature bit: the device has control elements (CTL_* requests, ``controls``)."""


class QueueIndex(IntEnum):
    CONTROL = 0
    EVENT = 1
    TX = 2
    RX = 3


# --- codes ------------------------------------------------------------------------------


class RequestCode(IntEnum):
    JACK_INFO = 0x0001
    JACK_REMAP = 0x0002
    PCM_INFO = 0x0100
    PCM_SET_PARAMS = 0x0101
    PCM_PREPARE = 0x0102
    PCM_RELEASE = 0x0103
    PCM_START = 0x0104
    PCM_STOP = 0x0105
    CHMAP_INFO = 0x0200
    CTL_INFO = 0x0300
    CTL_ENUM_ITEMS = 0x0301
    CTL_READ = 0x0302
    CTL_WRITE = 0x0303
    CTL_TLV_READ = 0x0304
    CTL_TLV_WRITE = 0x0305
    CTL_TLV_COMMAND = 0x0306


class EventCode(IntEnum):
    JACK_CONNECTED = 0x1000
    JACK_DISCONNECTED = 0x1001
    PCM_PERIOD_ELAPSED = 0x1100
    PCM_XRUN = 0x1101
    CTL_NOTIFY = 0x1200


class Status(IntEnum):
    OK = 0x8000
    BAD_MSG = 0x8001
    NOT_SUPP = 0x8002
    IO_ERR = 0x8003


class Direction(IntEnum):
    OUTPUT = 0
    INPUT = 1


# --- jacks --------------------------------------------------------------------------------


class JackFeature(IntEnum):
    """Bit numbers in ``JackInfo.features``."""

    REMAP = 0


# --- PCM ------------------------------------------------------------------------------------


class PcmFeature(IntEnum):
    """Bit numbers in ``PcmInfo.features`` / ``PcmSetParams.features``."""

    SHMEM_HOST = 0
    SHMEM_GUEST = 1
    MSG_POLLING = 2
    EVT_SHMEM_PERIODS = 3
    EVT_XRUNS = 4


class PcmFormat(IntEnum):
    IMA_ADPCM = 0
    MU_LAW = 1
    A_LAW = 2
    S8 = 3
    U8 = 4
    S16 = 5
    U16 = 6
    S18_3 = 7
    U18_3 = 8
    S20_3 = 9
    U20_3 = 10
    S24_3 = 11
    U24_3 = 12
    S20 = 13
    U20 = 14
    S24 = 15
    U24 = 16
    S32 = 17
    U32 = 18
    FLOAT = 19
    FLOAT64 = 20
    DSD_U8 = 21
    DSD_U16 = 22
    DSD_U32 = 23
    IEC958_SUBFRAME = 24


@dataclass(frozen=True)
class SampleLayout:
    """How one sample of a format is stored (little-endian, LSB-aligned in its container)."""

    width: int
    """Significant bits."""
    physical_width: int
    """Bits the sample occupies in a frame."""
    silence: bytes
    """One silent sample (zero for signed/float, the midpoint for unsigned, codec idle otherwise)."""


def _unsigned(width: int, physical: int) -> SampleLayout:
    return SampleLayout(width, physical, (1 << (width - 1)).to_bytes(physical // 8, "little"))


def _zero(width: int, physical: int) -> SampleLayout:
    return SampleLayout(width, physical, bytes(max(1, physical // 8)))


SAMPLE_LAYOUTS: dict[PcmFormat, SampleLayout] = {
    PcmFormat.IMA_ADPCM: SampleLayout(4, 4, b"\x00"),
    PcmFormat.MU_LAW: SampleLayout(8, 8, b"\xff"),
    PcmFormat.A_LAW: SampleLayout(8, 8, b"\xd5"),
    PcmFormat.S8: _zero(8, 8),
    PcmFormat.U8: _unsigned(8, 8),
    PcmFormat.S16: _zero(16, 16),
    PcmFormat.U16: _unsigned(16, 16),
    PcmFormat.S18_3: _zero(18, 24),
    PcmFormat.U18_3: _unsigned(18, 24),
    PcmFormat.S20_3: _zero(20, 24),
    PcmFormat.U20_3: _unsigned(20, 24),
    PcmFormat.S24_3: _zero(24, 24),
    PcmFormat.U24_3: _unsigned(24, 24),
    PcmFormat.S20: _zero(20, 32),
    PcmFormat.U20: _unsigned(20, 32),
    PcmFormat.S24: _zero(24, 32),
    PcmFormat.U24: _unsigned(24, 32),
    PcmFormat.S32: _zero(32, 32),
    PcmFormat.U32: _unsigned(32, 32),
    PcmFormat.FLOAT: _zero(32, 32),
    PcmFormat.FLOAT64: _zero(64, 64),
    PcmFormat.DSD_U8: SampleLayout(8, 8, b"\x69"),
    PcmFormat.DSD_U16: SampleLayout(16, 16, b"\x69" * 2),
    PcmFormat.DSD_U32: SampleLayout(32, 32, b"\x69" * 4),
    PcmFormat.IEC958_SUBFRAME: _zero(32, 32),
}


class PcmRate(IntEnum):
    """Rate *indexes* (what ``PcmSetParams.rate`` carries); Hz in :data:`RATE_HZ`."""

    RATE_5512 = 0
    RATE_8000 = 1
    RATE_11025 = 2
    RATE_16000 = 3
    RATE_22050 = 4
    RATE_32000 = 5
    RATE_44100 = 6
    RATE_48000 = 7
    RATE_64000 = 8
    RATE_88200 = 9
    RATE_96000 = 10
    RATE_176400 = 11
    RATE_192000 = 12
    RATE_384000 = 13
    RATE_12000 = 14  # spec v1.4
    RATE_24000 = 15  # spec v1.4


RATE_HZ: dict[PcmRate, int] = {rate: int(rate.name.removeprefix("RATE_")) for rate in PcmRate}
HZ_TO_RATE: dict[int, PcmRate] = {hz: rate for rate, hz in RATE_HZ.items()}
LINUX_MAPPED_RATES = frozenset(PcmRate(i) for i in range(PcmRate.RATE_192000 + 1))
"""Rates the Linux driver maps to ALSA rates; it ignores the other bits and fails probe if none is left."""


# --- channel maps ---------------------------------------------------------------------------

CHMAP_MAX_SIZE = 18


class ChannelPosition(IntEnum):
    NONE = 0
    NA = 1
    MONO = 2
    FL = 3
    FR = 4
    RL = 5
    RR = 6
    FC = 7
    LFE = 8
    SL = 9
    SR = 10
    RC = 11
    FLC = 12
    FRC = 13
    RLC = 14
    RRC = 15
    FLW = 16
    FRW = 17
    FLH = 18
    FCH = 19
    FRH = 20
    TC = 21
    TFL = 22
    TFR = 23
    TFC = 24
    TRL = 25
    TRR = 26
    TRC = 27
    TFLC = 28
    TFRC = 29
    TSL = 30
    TSR = 31
    LLFE = 32
    RLFE = 33
    BC = 34
    BLC = 35
    BRC = 36


# --- control elements -------------------------------------------------------------------------


class CtlRole(IntEnum):
    """Role values; the wire ``role`` is ``(role << 1) | direction`` unless UNDEFINED."""

    UNDEFINED = 0
    VOLUME = 1
    MUTE = 2
    GAIN = 3


def encode_ctl_role(role: CtlRole, direction: Direction) -> int:
    return 0 if role == CtlRole.UNDEFINED else (int(role) << 1) | int(direction)


def decode_ctl_role(value: int) -> tuple[CtlRole, Direction | None]:
    """Raises ValueError for an undefined role value."""
    if value == 0:
        return CtlRole.UNDEFINED, None
    return CtlRole((value & 0xFFFFFFFE) >> 1), Direction(value & 1)


class CtlType(IntEnum):
    BOOLEAN = 0
    INTEGER = 1
    INTEGER64 = 2
    ENUMERATED = 3
    BYTES = 4
    IEC958 = 5


CTL_MAX_COUNT: dict[CtlType, int] = {
    CtlType.BOOLEAN: 128,
    CtlType.INTEGER: 128,
    CtlType.INTEGER64: 64,
    CtlType.ENUMERATED: 128,
    CtlType.BYTES: 512,
    CtlType.IEC958: 1,
}


class CtlAccess(IntEnum):
    """Bit numbers in ``CtlInfo.access``."""

    READ = 0
    WRITE = 1
    VOLATILE = 2
    INACTIVE = 3
    TLV_READ = 4
    TLV_WRITE = 5
    TLV_COMMAND = 6


class CtlEventMask(IntEnum):
    """Bit numbers in ``CtlEvent.mask``."""

    VALUE = 0
    INFO = 1
    TLV = 2


CTL_NAME_SIZE = 44
CTL_ENUM_ITEM_SIZE = 64
CTL_TLV_MAX_VALUE_BYTES = 65536
"""The driver must not send a TLV ``value`` larger than this."""

# ALSA TLV payloads carried in CTL_TLV_* (include/uapi/sound/tlv.h); not virtio constants.
ALSA_TLVT_DB_SCALE = 1
ALSA_TLV_DB_SCALE_MUTE = 0x10000


def bits(values) -> int:
    """Bitmap with ``1 << v`` set for each value."""
    mask = 0
    for value in values:
        mask |= 1 << int(value)
    return mask


def bit_list(mask: int) -> list[int]:
    return [i for i in range(mask.bit_length()) if mask >> i & 1]


# --- wire structs -------------------------------------------------------------------------------

u8, u16, u32, u64 = ctypes.c_uint8, ctypes.c_uint16, ctypes.c_uint32, ctypes.c_uint64


class _Wire(ctypes.LittleEndianStructure):
    _pack_ = 1

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={_show(getattr(self, name))}" for name, *_ in self._fields_)
        return f"{type(self).__name__}({fields})"


def _show(value) -> str:
    if isinstance(value, ctypes.Array):
        return bytes(value).hex() if value._type_ is u8 else repr(list(value))
    return repr(value)


class Config(_Wire):
    """``struct virtio_snd_config`` (``controls`` only valid with F_CTLS)."""

    _fields_ = [("jacks", u32), ("streams", u32), ("chmaps", u32), ("controls", u32)]


class Hdr(_Wire):
    _fields_ = [("code", u32)]


class Event(_Wire):
    _fields_ = [("code", u32), ("data", u32)]


class QueryInfo(_Wire):
    _fields_ = [("code", u32), ("start_id", u32), ("count", u32), ("size", u32)]


class Info(_Wire):
    """``struct virtio_snd_info``: the prefix of every *_info item."""

    _fields_ = [("hda_fn_nid", u32)]


class JackHdr(_Wire):
    _fields_ = [("code", u32), ("jack_id", u32)]


class JackInfo(_Wire):
    _fields_ = [
        ("hda_fn_nid", u32),
        ("features", u32),
        ("hda_reg_defconf", u32),
        ("hda_reg_caps", u32),
        ("connected", u8),
        ("padding", u8 * 7),
    ]


class JackRemap(_Wire):
    _fields_ = [("code", u32), ("jack_id", u32), ("association", u32), ("sequence", u32)]


class PcmHdr(_Wire):
    _fields_ = [("code", u32), ("stream_id", u32)]


class PcmInfo(_Wire):
    _fields_ = [
        ("hda_fn_nid", u32),
        ("features", u32),
        ("formats", u64),
        ("rates", u64),
        ("direction", u8),
        ("channels_min", u8),
        ("channels_max", u8),
        ("padding", u8 * 5),
    ]


class PcmSetParams(_Wire):
    _fields_ = [
        ("code", u32),
        ("stream_id", u32),
        ("buffer_bytes", u32),
        ("period_bytes", u32),
        ("features", u32),
        ("channels", u8),
        ("format", u8),
        ("rate", u8),
        ("padding", u8),
    ]


class PcmXfer(_Wire):
    _fields_ = [("stream_id", u32)]


class PcmStatus(_Wire):
    _fields_ = [("status", u32), ("latency_bytes", u32)]


PCM_XFER = struct.Struct("<I")
"""``PcmXfer`` and ``PcmStatus`` as ``struct`` formats, for the per-period data path (a ctypes
round trip costs microseconds there); checked against the ctypes layouts below."""
PCM_STATUS = struct.Struct("<II")
assert PCM_XFER.size == ctypes.sizeof(PcmXfer) and PCM_STATUS.size == ctypes.sizeof(PcmStatus)


class ChmapHdr(_Wire):
    _fields_ = [("code", u32), ("chmap_id", u32)]


class ChmapInfo(_Wire):
    _fields_ = [
        ("hda_fn_nid", u32),
        ("direction", u8),
        ("channels", u8),
        ("positions", u8 * CHMAP_MAX_SIZE),
    ]


class CtlHdr(_Wire):
    _fields_ = [("code", u32), ("control_id", u32)]


class CtlIntegerRange(_Wire):
    _fields_ = [("min", u32), ("max", u32), ("step", u32)]


class CtlInteger64Range(_Wire):
    _fields_ = [("min", u64), ("max", u64), ("step", u64)]


class CtlEnumerated(_Wire):
    _fields_ = [("items", u32)]


class CtlInfoValue(ctypes.LittleEndianUnion):
    _pack_ = 1
    _fields_ = [("integer", CtlIntegerRange), ("integer64", CtlInteger64Range), ("enumerated", CtlEnumerated)]


class CtlInfo(_Wire):
    """``struct virtio_snd_ctl_info``.

    The C union holds ``le64`` members, so on x86-64 and arm64 it is 8-byte aligned:
    4 bytes of implicit padding follow ``name`` (offset 68) and the struct is 96 bytes,
    which is what the Linux driver passes as ``size``. The padding is explicit here.
    """

    _fields_ = [
        ("hda_fn_nid", u32),
        ("role", u32),
        ("type", u32),
        ("access", u32),
        ("count", u32),
        ("index", u32),
        ("name", ctypes.c_char * CTL_NAME_SIZE),
        ("_align", u8 * 4),
        ("value", CtlInfoValue),
    ]


class CtlEnumItem(_Wire):
    _fields_ = [("item", ctypes.c_char * CTL_ENUM_ITEM_SIZE)]


class CtlIec958(_Wire):
    _fields_ = [("status", u8 * 24), ("subcode", u8 * 147), ("pad", u8), ("dig_subframe", u8 * 4)]


class CtlValueUnion(ctypes.LittleEndianUnion):
    _pack_ = 1
    _fields_ = [
        ("integer", u32 * 128),
        ("integer64", u64 * 64),
        ("enumerated", u32 * 128),
        ("bytes", u8 * 512),
        ("iec958", CtlIec958),
    ]


class CtlValue(_Wire):
    _fields_ = [("value", CtlValueUnion)]


class CtlTlv(_Wire):
    """Header of ``struct virtio_snd_ctl_tlv``; ``length`` bytes of u32 values follow."""

    _fields_ = [("type", u32), ("length", u32)]


class CtlEvent(_Wire):
    """``struct virtio_snd_ctl_event``: note the u16 ``control_id``."""

    _fields_ = [("code", u32), ("control_id", u16), ("mask", u16)]


_SIZES = {
    Config: 16, Hdr: 4, Event: 8, QueryInfo: 16, Info: 4, JackHdr: 8, JackInfo: 24, JackRemap: 16,
    PcmHdr: 8, PcmInfo: 32, PcmSetParams: 24, PcmXfer: 4, PcmStatus: 8, ChmapHdr: 8, ChmapInfo: 24,
    CtlHdr: 8, CtlInfo: 96, CtlEnumItem: 64, CtlIec958: 176, CtlValue: 512, CtlTlv: 8, CtlEvent: 8,
}
for _cls, _size in _SIZES.items():
    assert ctypes.sizeof(_cls) == _size, f"{_cls.__name__} is {ctypes.sizeof(_cls)} bytes, spec says {_size}"
assert CtlInfo.value.offset == 72


def parse(struct_type: type[_Wire], data: bytes) -> _Wire:
    """Decode the leading bytes of ``data``; raises ValueError when too short."""
    size = ctypes.sizeof(struct_type)
    if len(data) < size:
        raise ValueError(f"{struct_type.__name__} needs {size} bytes, got {len(data)}")
    return struct_type.from_buffer_copy(data[:size])


# --- human-readable one-liners (logs, traces) -------------------------------------------------


def _name(enum_type: type[IntEnum], value: int) -> str:
    try:
        return enum_type(value).name
    except ValueError:
        return f"{value:#x}"


def format_name(value: int) -> str:
    return _name(PcmFormat, value)


def rate_name(value: int) -> str:
    try:
        return str(RATE_HZ[PcmRate(value)])
    except ValueError:
        return f"rate#{value}"


def request_name(request: bytes) -> str:
    """``PCM_SET_PARAMS`` for a request's code (``UNKNOWN_0x...``/``SHORT`` otherwise)."""
    if len(request) < 4:
        return "SHORT"
    code = int.from_bytes(request[:4], "little")
    try:
        return RequestCode(code).name
    except ValueError:
        return f"UNKNOWN_{code:#06x}"


def status_name(value: int) -> str:
    return _name(Status, value)


def _features(mask: int) -> str:
    return "+".join(_name(PcmFeature, b) for b in bit_list(mask)) or "none"


def describe(request: bytes, response: bytes | None = None) -> str:
    """One line for a control request (and its response status if ``response`` is given).

    ``PCM_SET_PARAMS stream=0 buffer=32768 period=4096 ch=2 fmt=S16 rate=48000 -> OK``
    """
    text = _describe_request(bytes(request))
    if response is not None:
        text += " -> " + (status_name(int.from_bytes(response[:4], "little")) if len(response) >= 4 else "(no status)")
    return text


def _describe_request(data: bytes) -> str:
    if len(data) < 4:
        return f"(short request, {len(data)} bytes)"
    code = int.from_bytes(data[:4], "little")
    try:
        name = RequestCode(code).name
    except ValueError:
        return f"unknown request {code:#06x} ({len(data)} bytes)"
    try:
        return name + _describe_body(RequestCode(code), data)
    except ValueError:
        return f"{name} (short: {len(data)} bytes)"


def _describe_body(code: RequestCode, data: bytes) -> str:
    if code in (RequestCode.JACK_INFO, RequestCode.PCM_INFO, RequestCode.CHMAP_INFO, RequestCode.CTL_INFO):
        q = parse(QueryInfo, data)
        return f" start={q.start_id} count={q.count} size={q.size}"
    if code == RequestCode.JACK_REMAP:
        r = parse(JackRemap, data)
        return f" jack={r.jack_id} association={r.association} sequence={r.sequence}"
    if code == RequestCode.PCM_SET_PARAMS:
        p = parse(PcmSetParams, data)
        return (
            f" stream={p.stream_id} buffer={p.buffer_bytes} period={p.period_bytes} ch={p.channels}"
            f" fmt={format_name(p.format)} rate={rate_name(p.rate)} features={_features(p.features)}"
        )
    if code in (RequestCode.PCM_PREPARE, RequestCode.PCM_RELEASE, RequestCode.PCM_START, RequestCode.PCM_STOP):
        return f" stream={parse(PcmHdr, data).stream_id}"
    h = parse(CtlHdr, data)
    text = f" control={h.control_id}"
    if code == RequestCode.CTL_WRITE and len(data) >= 8 + 16:
        text += " value=" + " ".join(str(v) for v in struct.unpack_from("<4I", data, 8)) + " ..."
    if code in (RequestCode.CTL_TLV_WRITE, RequestCode.CTL_TLV_COMMAND) and len(data) >= 16:
        tlv = parse(CtlTlv, data[8:])
        text += f" tlv_type={tlv.type} tlv_length={tlv.length}"
    return text


def describe_event(data: bytes) -> str:
    """One line for an event-queue buffer (8 bytes)."""
    event = parse(Event, data)
    name = _name(EventCode, event.code)
    if event.code == EventCode.CTL_NOTIFY:
        ctl = parse(CtlEvent, data)
        reasons = "+".join(_name(CtlEventMask, b) for b in bit_list(ctl.mask)) or "none"
        return f"{name} control={ctl.control_id} mask={reasons}"
    what = {EventCode.JACK_CONNECTED: "jack", EventCode.JACK_DISCONNECTED: "jack"}.get(event.code, "stream")
    return f"{name} {what}={event.data}"
