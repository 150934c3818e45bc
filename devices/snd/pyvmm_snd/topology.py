"""What the sound card looks like to the guest: streams, jacks, channel maps, controls.

Plain dataclasses built once from the ``--device virtio-snd,key=value,...`` options and
validated against the spec and the Linux driver's probe checks, so a bad option is a
one-line :class:`VmmError` at start-up instead of a guest that fails to probe.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from pyvmm.errors import VmmError

from pyvmm_snd import spec
from pyvmm_snd.spec import ChannelPosition as Pos
from pyvmm_snd.spec import CtlAccess, CtlRole, CtlType, Direction, PcmFeature, PcmFormat, PcmRate

MAX_STREAMS_PER_DIRECTION = 16
MAX_CHANNELS = spec.CHMAP_MAX_SIZE

# -- HDA pin configuration (High Definition Audio spec 7.3.3.31 and 7.3.4.9) ------------------

HDA_PORT_JACK = 0x0
HDA_LOCATION_FRONT = 0x02  # external, primary chassis, front
HDA_DEVICE_HP_OUT = 0x2
HDA_DEVICE_MIC_IN = 0xA
HDA_CONNECTION_MINI_JACK = 0x1  # 1/8" stereo/mono
HDA_COLOR_GREEN = 0x4
HDA_COLOR_PINK = 0x9

HDA_PINCAP_PRESENCE_DETECT = 1 << 2
HDA_PINCAP_HEADPHONE_DRIVE = 1 << 3
HDA_PINCAP_OUTPUT = 1 << 4
HDA_PINCAP_INPUT = 1 << 5


def hda_pin_defconf(*, port: int, location: int, device: int, connection: int, color: int,
                    misc: int = 0, association: int, sequence: int) -> int:
    """Pack an HDA pin "default configuration" register; Linux names the jack from ``device``."""
    return (port << 30 | location << 24 | device << 20 | connection << 16 | color << 12
            | misc << 8 | association << 4 | sequence)


# -- volume scale exposed through a dB TLV -----------------------------------------------------

VOLUME_MIN_CDB = -6400
"""Volume at raw value 0 in 0.01 dB (shown as mute)."""
VOLUME_STEP_CDB = 50
VOLUME_MAX = 128
"""Raw maximum: VOLUME_MIN_CDB + 128 * 0.5 dB = 0 dB."""

STANDARD_CHMAPS: dict[int, tuple[Pos, ...]] = {
    1: (Pos.MONO,),
    2: (Pos.FL, Pos.FR),
    3: (Pos.FL, Pos.FR, Pos.FC),
    4: (Pos.FL, Pos.FR, Pos.RL, Pos.RR),
    5: (Pos.FL, Pos.FR, Pos.RL, Pos.RR, Pos.FC),
    6: (Pos.FL, Pos.FR, Pos.RL, Pos.RR, Pos.FC, Pos.LFE),
    7: (Pos.FL, Pos.FR, Pos.RL, Pos.RR, Pos.FC, Pos.LFE, Pos.RC),
    8: (Pos.FL, Pos.FR, Pos.RL, Pos.RR, Pos.FC, Pos.LFE, Pos.SL, Pos.SR),
}
"""ALSA's usual layouts (mono, stereo, ..., 5.1, 7.1) for each channel count."""


@dataclass(frozen=True)
class StreamConfig:
    direction: Direction
    channels_min: int
    channels_max: int
    formats: frozenset[PcmFormat]
    rates: frozenset[PcmRate]
    features: int = 0
    """Bitmap of ``1 << PcmFeature`` the device offers."""
    hda_fn_nid: int = 0

    def info(self) -> spec.PcmInfo:
        return spec.PcmInfo(hda_fn_nid=self.hda_fn_nid, features=self.features, formats=spec.bits(self.formats),
                            rates=spec.bits(self.rates), direction=self.direction,
                            channels_min=self.channels_min, channels_max=self.channels_max)


@dataclass(frozen=True)
class JackConfig:
    hda_reg_defconf: int
    hda_reg_caps: int
    connected: bool = True
    features: int = 0
    hda_fn_nid: int = 0

    def info(self, connected: bool | None = None) -> spec.JackInfo:
        return spec.JackInfo(hda_fn_nid=self.hda_fn_nid, features=self.features,
                             hda_reg_defconf=self.hda_reg_defconf, hda_reg_caps=self.hda_reg_caps,
                             connected=int(self.connected if connected is None else connected))


@dataclass(frozen=True)
class ChmapConfig:
    direction: Direction
    positions: tuple[Pos, ...]
    hda_fn_nid: int = 0

    def info(self) -> spec.ChmapInfo:
        info = spec.ChmapInfo(hda_fn_nid=self.hda_fn_nid, direction=self.direction, channels=len(self.positions))
        for i, position in enumerate(self.positions):
            info.positions[i] = position
        return info


@dataclass(frozen=True)
class ControlConfig:
    """One control element; its current value lives in the device (see ``controls.py``)."""

    name: str
    type: CtlType
    access: int
    """Bitmap of ``1 << CtlAccess``."""
    count: int = 1
    index: int = 0
    role: CtlRole = CtlRole.UNDEFINED
    direction: Direction = Direction.OUTPUT
    minimum: int = 0
    maximum: int = 1
    step: int = 0
    items: tuple[str, ...] = ()
    """Option names of an ENUMERATED control."""
    default: tuple[int, ...] = (0,)
    tlv: bytes = b""
    """Metadata returned by CTL_TLV_READ (an ALSA TLV: type, length, values)."""
    stream_id: int | None = None
    """The PCM stream the control acts on (for the data plane)."""
    hda_fn_nid: int = 0

    def has(self, access: CtlAccess) -> bool:
        return bool(self.access >> access & 1)

    def info(self) -> spec.CtlInfo:
        info = spec.CtlInfo(hda_fn_nid=self.hda_fn_nid, role=spec.encode_ctl_role(self.role, self.direction),
                            type=self.type, access=self.access, count=self.count, index=self.index,
                            name=self.name.encode("ascii"))
        if self.type == CtlType.INTEGER:
            info.value.integer.min = self.minimum & 0xFFFFFFFF
            info.value.integer.max = self.maximum & 0xFFFFFFFF
            info.value.integer.step = self.step
        elif self.type == CtlType.INTEGER64:
            info.value.integer64.min = self.minimum & 0xFFFFFFFFFFFFFFFF
            info.value.integer64.max = self.maximum & 0xFFFFFFFFFFFFFFFF
            info.value.integer64.step = self.step
        elif self.type == CtlType.ENUMERATED:
            info.value.enumerated.items = len(self.items)
        return info


@dataclass(frozen=True)
class Topology:
    streams: tuple[StreamConfig, ...]
    jacks: tuple[JackConfig, ...] = ()
    chmaps: tuple[ChmapConfig, ...] = ()
    controls: tuple[ControlConfig, ...] = ()
    backend: str = "null"
    """Audio back end for the data plane (stored for it; not interpreted here)."""
    backend_options: dict[str, str] = field(default_factory=dict)

    def config(self) -> spec.Config:
        return spec.Config(jacks=len(self.jacks), streams=len(self.streams), chmaps=len(self.chmaps),
                           controls=len(self.controls))

    def validate(self) -> None:
        """Check every item against the spec's device rules and the Linux driver's probe checks."""
        _validate(self)


# -- building ------------------------------------------------------------------------------------------


def volume_tlv() -> bytes:
    """ALSA DB_SCALE TLV: raw 0 = VOLUME_MIN_CDB (muted), +VOLUME_STEP_CDB per raw step."""
    values = [VOLUME_MIN_CDB & 0xFFFFFFFF, VOLUME_STEP_CDB | spec.ALSA_TLV_DB_SCALE_MUTE]
    header = spec.CtlTlv(type=spec.ALSA_TLVT_DB_SCALE, length=4 * len(values))
    return bytes(header) + b"".join(v.to_bytes(4, "little") for v in values)


def stream_controls(stream_id: int, stream: StreamConfig, index: int) -> list[ControlConfig]:
    """Volume (INTEGER with a dB TLV) and switch (BOOLEAN, ALSA sense: 1 = sound on) for a stream."""
    prefix = "PCM Playback" if stream.direction == Direction.OUTPUT else "Capture"
    rw = spec.bits([CtlAccess.READ, CtlAccess.WRITE])
    volume = ControlConfig(
        name=f"{prefix} Volume", index=index, type=CtlType.INTEGER, role=CtlRole.VOLUME,
        direction=stream.direction, access=rw | 1 << CtlAccess.TLV_READ, minimum=0, maximum=VOLUME_MAX, step=1,
        default=(VOLUME_MAX,), tlv=volume_tlv(), stream_id=stream_id, hda_fn_nid=stream.hda_fn_nid)
    switch = ControlConfig(
        name=f"{prefix} Switch", index=index, type=CtlType.BOOLEAN, role=CtlRole.MUTE,
        direction=stream.direction, access=rw, minimum=0, maximum=1, default=(1,), stream_id=stream_id,
        hda_fn_nid=stream.hda_fn_nid)
    return [volume, switch]


def default_jacks(streams: tuple[StreamConfig, ...]) -> tuple[JackConfig, ...]:
    """A front headphone jack if there is playback, a front mic jack if there is capture."""
    jacks = []
    if any(s.direction == Direction.OUTPUT for s in streams):
        jacks.append(JackConfig(
            hda_reg_defconf=hda_pin_defconf(port=HDA_PORT_JACK, location=HDA_LOCATION_FRONT, device=HDA_DEVICE_HP_OUT,
                                            connection=HDA_CONNECTION_MINI_JACK, color=HDA_COLOR_GREEN,
                                            association=1, sequence=0xF),
            hda_reg_caps=HDA_PINCAP_PRESENCE_DETECT | HDA_PINCAP_HEADPHONE_DRIVE | HDA_PINCAP_OUTPUT))
    if any(s.direction == Direction.INPUT for s in streams):
        jacks.append(JackConfig(
            hda_reg_defconf=hda_pin_defconf(port=HDA_PORT_JACK, location=HDA_LOCATION_FRONT, device=HDA_DEVICE_MIC_IN,
                                            connection=HDA_CONNECTION_MINI_JACK, color=HDA_COLOR_PINK,
                                            association=2, sequence=0x0),
            hda_reg_caps=HDA_PINCAP_PRESENCE_DETECT | HDA_PINCAP_INPUT))
    return tuple(jacks)


def default_chmaps(streams: tuple[StreamConfig, ...]) -> tuple[ChmapConfig, ...]:
    """One standard map per channel count each direction's streams can use."""
    chmaps = []
    for direction in Direction:
        counts = sorted({n for s in streams if s.direction == direction
                         for n in range(s.channels_min, s.channels_max + 1) if n in STANDARD_CHMAPS})
        chmaps += [ChmapConfig(direction, STANDARD_CHMAPS[n]) for n in counts]
    return tuple(chmaps)


# -- option parsing -------------------------------------------------------------------------------------

OPTION_HELP = {
    "playback": ("1", "number of playback (output) streams, 0-16"),
    "capture": ("1", "number of capture (input) streams, 0-16"),
    "channels": ("1-8", "channel count range MIN-MAX or N, 1-18"),
    "formats": ("s16+s24+s32+float", "sample formats joined by '+': "
                + " ".join(f.name.lower() for f in PcmFormat)),
    "rates": ("8000-192000", "frame rates in Hz: a range LOW-HIGH or a list joined by '+'"),
    "jacks": ("on", "headphone (with playback) and microphone (with capture) jacks"),
    "chmaps": ("on", "standard channel maps (mono, stereo, ..., 7.1)"),
    "controls": ("on", "volume and switch control per stream (VIRTIO_SND_F_CTLS)"),
    "xruns": ("on", "offer xrun notifications (VIRTIO_SND_PCM_F_EVT_XRUNS)"),
    "backend": ("null", "audio back end of the data plane; its own options are passed through as backend.KEY=VALUE"),
}

_BOOL = {"on": True, "yes": True, "true": True, "1": True, "off": False, "no": False, "false": False, "0": False}


def describe_options() -> str:
    lines = ["options (key=value, comma-separated):"]
    for key, (default, text) in OPTION_HELP.items():
        lines.append(f"  {key:<9} {text} (default {default})")
    lines.append("example: --device virtio-snd,playback=1,capture=0,channels=2,formats=s16,rates=48000")
    return "\n".join(lines)


def from_options(options: dict[str, str]) -> Topology:
    """Build and validate the topology; every error is a one-line VmmError naming the option."""
    unknown = [k for k in options if k not in OPTION_HELP and not k.startswith("backend.")]
    if unknown:
        raise VmmError(f"virtio-snd: unknown option {unknown[0]!r} (known: {', '.join(OPTION_HELP)}; "
                       f"--device virtio-snd,help lists them)")
    get = {key: options.get(key, default) for key, (default, _) in OPTION_HELP.items()}
    playback = _count(get["playback"], "playback")
    capture = _count(get["capture"], "capture")
    if playback + capture == 0:
        raise VmmError("virtio-snd: playback=0 and capture=0 leave the card without any stream")
    channels_min, channels_max = _channels(get["channels"])
    formats = _formats(get["formats"])
    rates = _rates(get["rates"])
    features = spec.bits([PcmFeature.EVT_XRUNS]) if _flag(get["xruns"], "xruns") else 0
    streams = tuple(
        StreamConfig(direction, channels_min, channels_max, formats, rates, features)
        for direction, n in ((Direction.OUTPUT, playback), (Direction.INPUT, capture)) for _ in range(n))
    controls: list[ControlConfig] = []
    if _flag(get["controls"], "controls"):
        ordinal = {Direction.OUTPUT: 0, Direction.INPUT: 0}
        for stream_id, stream in enumerate(streams):
            controls += stream_controls(stream_id, stream, ordinal[stream.direction])
            ordinal[stream.direction] += 1
    topology = Topology(
        streams=streams,
        jacks=default_jacks(streams) if _flag(get["jacks"], "jacks") else (),
        chmaps=default_chmaps(streams) if _flag(get["chmaps"], "chmaps") else (),
        controls=tuple(controls),
        backend=get["backend"],
        backend_options={k.removeprefix("backend."): v for k, v in options.items() if k.startswith("backend.")},
    )
    topology.validate()
    return topology


def _flag(text: str, key: str) -> bool:
    try:
        return _BOOL[text.strip().lower()]
    except KeyError:
        raise VmmError(f"virtio-snd: {key}={text!r} is not on/off") from None


def _count(text: str, key: str) -> int:
    if not re.fullmatch(r"\d+", text.strip()):
        raise VmmError(f"virtio-snd: {key}={text!r} is not a number of streams")
    value = int(text)
    if value > MAX_STREAMS_PER_DIRECTION:
        raise VmmError(f"virtio-snd: {key}={value} exceeds {MAX_STREAMS_PER_DIRECTION} streams")
    return value


def _channels(text: str) -> tuple[int, int]:
    match = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", text)
    if not match:
        raise VmmError(f"virtio-snd: channels={text!r} is not N or MIN-MAX")
    low = int(match[1])
    high = int(match[2]) if match[2] else low
    if low < 1 or high > MAX_CHANNELS or low > high:
        raise VmmError(f"virtio-snd: channels={text!r} must satisfy 1 <= MIN <= MAX <= {MAX_CHANNELS}")
    return low, high


def _formats(text: str) -> frozenset[PcmFormat]:
    formats = set()
    for name in filter(None, (p.strip().upper() for p in text.split("+"))):
        try:
            formats.add(PcmFormat[name])
        except KeyError:
            raise VmmError(f"virtio-snd: unknown sample format {name.lower()!r} in formats= "
                           f"(known: {' '.join(f.name.lower() for f in PcmFormat)})") from None
    if not formats:
        raise VmmError("virtio-snd: formats= is empty")
    return frozenset(formats)


def _rates(text: str) -> frozenset[PcmRate]:
    range_match = re.fullmatch(r"\s*(\d+)\s*-\s*(\d+)\s*", text)
    if range_match:
        low, high = int(range_match[1]), int(range_match[2])
        rates = {spec.HZ_TO_RATE[hz] for hz in spec.HZ_TO_RATE if low <= hz <= high}
        if not rates:
            raise VmmError(f"virtio-snd: rates={text!r} contains no virtio rate "
                           f"({' '.join(str(hz) for hz in sorted(spec.HZ_TO_RATE))})")
    else:
        rates = set()
        for part in filter(None, (p.strip() for p in text.split("+"))):
            if not part.isdigit() or int(part) not in spec.HZ_TO_RATE:
                raise VmmError(f"virtio-snd: rate {part!r} in rates= is not a virtio rate "
                               f"({' '.join(str(hz) for hz in sorted(spec.HZ_TO_RATE))})")
            rates.add(spec.HZ_TO_RATE[int(part)])
        if not rates:
            raise VmmError("virtio-snd: rates= is empty")
    if not rates & spec.LINUX_MAPPED_RATES:
        raise VmmError(f"virtio-snd: rates={text!r} has no rate the Linux driver supports (5512-192000 Hz "
                       "without 12000/24000)")
    return frozenset(rates)


# -- validation -------------------------------------------------------------------------------------------


def _validate(topology: Topology) -> None:
    def fail(message: str) -> None:
        raise VmmError(f"virtio-snd: {message}")

    for i, s in enumerate(topology.streams):
        if not 1 <= s.channels_min <= s.channels_max <= 255:
            fail(f"stream {i}: invalid channel range {s.channels_min}-{s.channels_max}")
        if not s.formats:
            fail(f"stream {i}: no sample format")
        if not s.rates & spec.LINUX_MAPPED_RATES:
            fail(f"stream {i}: no rate the Linux driver maps")
        if s.features & ~spec.bits(PcmFeature) or s.features & spec.bits(
                [PcmFeature.SHMEM_HOST, PcmFeature.SHMEM_GUEST, PcmFeature.MSG_POLLING, PcmFeature.EVT_SHMEM_PERIODS]):
            fail(f"stream {i}: features {s.features:#x} include one this device does not implement")
    for i, j in enumerate(topology.jacks):
        if j.features & ~spec.bits(spec.JackFeature):
            fail(f"jack {i}: undefined feature bits {j.features:#x}")
    for i, c in enumerate(topology.chmaps):
        if not 1 <= len(c.positions) <= spec.CHMAP_MAX_SIZE:
            fail(f"chmap {i}: {len(c.positions)} positions (1-{spec.CHMAP_MAX_SIZE} allowed)")
        if any(not 0 <= p < len(Pos) for p in c.positions):
            fail(f"chmap {i}: position out of range")
    seen: set[tuple[str, int]] = set()
    for i, ctl in enumerate(topology.controls):
        if not ctl.name or len(ctl.name) >= spec.CTL_NAME_SIZE or not ctl.name.isascii():
            fail(f"control {i}: name {ctl.name!r} must be 1-{spec.CTL_NAME_SIZE - 1} ASCII characters")
        if (ctl.name, ctl.index) in seen:
            fail(f"control {i}: duplicate name/index {ctl.name!r}/{ctl.index}")
        seen.add((ctl.name, ctl.index))
        if not 1 <= ctl.count <= spec.CTL_MAX_COUNT[ctl.type]:
            fail(f"control {i} ({ctl.name}): count {ctl.count} out of 1-{spec.CTL_MAX_COUNT[ctl.type]}")
        if ctl.access & ~spec.bits(CtlAccess):
            fail(f"control {i} ({ctl.name}): undefined access bits")
        if ctl.type == CtlType.ENUMERATED and (
                not ctl.items or any(not it or len(it) >= spec.CTL_ENUM_ITEM_SIZE or not it.isascii()
                                     for it in ctl.items)):
            fail(f"control {i} ({ctl.name}): enumerated items must be 1-63 ASCII characters, at least one")
        if len(ctl.default) not in (1, ctl.count):
            fail(f"control {i} ({ctl.name}): default has {len(ctl.default)} values for count {ctl.count}")
        if ctl.stream_id is not None and not 0 <= ctl.stream_id < len(topology.streams):
            fail(f"control {i} ({ctl.name}): stream {ctl.stream_id} does not exist")
