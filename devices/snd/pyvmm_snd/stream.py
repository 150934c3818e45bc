"""One PCM stream's control side: the spec's command lifecycle and the negotiated parameters.

The lifecycle (spec "PCM Command Lifecycle") is enforced exactly: a request that the
current state does not allow is answered BAD_MSG and changes nothing. The I/O messages a
stream holds belong to its data path (:class:`pyvmm_snd.streamio.StreamIo`), not to this
module.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from enum import Enum

from pyvmm_snd import rules
from pyvmm_snd import spec
from pyvmm_snd.errors import bad_msg, not_supp
from pyvmm_snd.spec import Direction, PcmFeature, PcmFormat, PcmRate, RequestCode
from pyvmm_snd.topology import StreamConfig

log = logging.getLogger(__name__)

MAX_BUFFER_BYTES = 4 << 20
"""Largest ring a driver may ask for (Linux needs < 2 MiB even at 8 ch x FLOAT64 x 192 kHz);
SET_PARAMS above it is NOT_SUPP. It bounds the period, hence every I/O message."""

MIN_PERIOD_US = 1000
"""Shortest period a driver may ask for, in microseconds of audio (SET_PARAMS below it is
NOT_SUPP). Every period costs one message round trip on the device loop, so the CPU per
stream grows as 1/period; Linux's own default minimum (``pcm_period_ms_min``) is 10 ms."""


class StreamState(Enum):
    """Named after the last accepted command; a fresh stream counts as "parameters set"."""

    SET_PARAMS = "set-params"
    PREPARED = "prepared"
    STARTED = "started"
    STOPPED = "stopped"
    RELEASED = "released"


STATE_AFTER: dict[RequestCode, StreamState] = {
    RequestCode.PCM_SET_PARAMS: StreamState.SET_PARAMS,
    RequestCode.PCM_PREPARE: StreamState.PREPARED,
    RequestCode.PCM_START: StreamState.STARTED,
    RequestCode.PCM_STOP: StreamState.STOPPED,
    RequestCode.PCM_RELEASE: StreamState.RELEASED,
}

ALLOWED: dict[StreamState, frozenset[RequestCode]] = {
    StreamState.SET_PARAMS: frozenset({RequestCode.PCM_SET_PARAMS, RequestCode.PCM_PREPARE}),
    StreamState.PREPARED: frozenset({RequestCode.PCM_SET_PARAMS, RequestCode.PCM_PREPARE,
                                     RequestCode.PCM_START, RequestCode.PCM_RELEASE}),
    StreamState.STARTED: frozenset({RequestCode.PCM_STOP}),
    StreamState.STOPPED: frozenset({RequestCode.PCM_START, RequestCode.PCM_RELEASE}),
    StreamState.RELEASED: frozenset({RequestCode.PCM_SET_PARAMS, RequestCode.PCM_PREPARE}),
}
"""Which commands each state accepts (spec: "possible valid transitions")."""


@dataclass(frozen=True)
class PcmParams:
    buffer_bytes: int
    period_bytes: int
    features: int
    channels: int
    format: PcmFormat
    rate: PcmRate

    @property
    def rate_hz(self) -> int:
        return spec.RATE_HZ[self.rate]

    @property
    def frame_bits(self) -> int:
        return spec.SAMPLE_LAYOUTS[self.format].physical_width * self.channels

    @property
    def frame_bytes(self) -> float:
        """Bytes per frame (fractional only for 4-bit IMA ADPCM mono)."""
        return self.frame_bits / 8

    @property
    def period_frames(self) -> int:
        return self.period_bytes * 8 // self.frame_bits

    @property
    def period_seconds(self) -> float:
        return self.period_frames / self.rate_hz

    def wants(self, feature: PcmFeature) -> bool:
        return bool(self.features >> feature & 1)

    def __str__(self) -> str:
        return (f"{self.channels}ch {self.format.name} {self.rate_hz}Hz period={self.period_bytes}"
                f" buffer={self.buffer_bytes}")

    @classmethod
    def from_request(cls, config: StreamConfig, req: spec.PcmSetParams) -> PcmParams:
        """Check SET_PARAMS against what PCM_INFO advertised: NOT_SUPP for an unoffered
        format/rate/channel count/feature, BAD_MSG for impossible buffer geometry."""
        if req.format >= len(PcmFormat) or PcmFormat(req.format) not in config.formats:
            raise not_supp(f"format {spec.format_name(req.format)} not offered",
                           rules.UNDEFINED_VALUE if req.format >= len(PcmFormat) else rules.UNADVERTISED_VALUE)
        if req.rate >= len(PcmRate) or PcmRate(req.rate) not in config.rates:
            raise not_supp(f"rate {spec.rate_name(req.rate)} not offered",
                           rules.UNDEFINED_VALUE if req.rate >= len(PcmRate) else rules.UNADVERTISED_VALUE)
        if not config.channels_min <= req.channels <= config.channels_max:
            raise not_supp(f"{req.channels} channels outside {config.channels_min}-{config.channels_max}",
                           rules.CHANNELS_RANGE)
        if req.features & ~config.features:
            raise not_supp(f"features {req.features:#x} not offered (offered {config.features:#x})",
                           rules.UNDEFINED_VALUE if req.features >> len(PcmFeature) else rules.UNADVERTISED_VALUE)
        params = cls(req.buffer_bytes, req.period_bytes, req.features, req.channels,
                     PcmFormat(req.format), PcmRate(req.rate))
        if req.period_bytes == 0 or req.buffer_bytes == 0:
            raise bad_msg(f"zero-sized buffer ({req.buffer_bytes}) or period ({req.period_bytes})",
                          rules.PERIOD_DIVIDES_BUFFER)
        if req.buffer_bytes % req.period_bytes:
            raise bad_msg(f"buffer {req.buffer_bytes} is not a multiple of period {req.period_bytes}",
                          rules.PERIOD_DIVIDES_BUFFER)
        if req.period_bytes * 8 % params.frame_bits:
            raise bad_msg(f"period {req.period_bytes} is not a whole number of {params.frame_bytes:g}-byte frames")
        if req.buffer_bytes > MAX_BUFFER_BYTES:
            raise not_supp(f"buffer {req.buffer_bytes} exceeds {MAX_BUFFER_BYTES} bytes")
        if params.period_frames * 1_000_000 < MIN_PERIOD_US * params.rate_hz:
            raise not_supp(f"period of {params.period_frames} frames at {params.rate_hz} Hz is shorter than "
                           f"the device minimum of {MIN_PERIOD_US} us")
        return params

    @classmethod
    def default_for(cls, config: StreamConfig) -> PcmParams:
        """What PREPARE uses if the driver never sent SET_PARAMS (as QEMU and vhost-device do):
        stereo S16 48 kHz where offered, 10 ms periods, 4 periods per buffer."""
        channels = min(max(2, config.channels_min), config.channels_max)
        fmt = PcmFormat.S16 if PcmFormat.S16 in config.formats else min(config.formats)
        mapped = config.rates & spec.LINUX_MAPPED_RATES or config.rates
        rate = PcmRate.RATE_48000 if PcmRate.RATE_48000 in mapped else max(mapped, key=spec.RATE_HZ.get)
        frame_bits = spec.SAMPLE_LAYOUTS[fmt].physical_width * channels
        frames = max(8, spec.RATE_HZ[rate] // 100 // 8 * 8)  # a multiple of 8 frames is whole bytes
        period = frames * frame_bits // 8
        return cls(4 * period, period, 0, channels, fmt, rate)


class PcmStream:
    """State and parameters of one stream."""

    def __init__(self, stream_id: int, config: StreamConfig):
        self.id = stream_id
        self.config = config
        self.state = StreamState.SET_PARAMS
        self.params: PcmParams | None = None

    @property
    def direction(self) -> Direction:
        return self.config.direction

    @property
    def effective_params(self) -> PcmParams:
        return self.params or PcmParams.default_for(self.config)

    def check(self, code: RequestCode) -> None:
        """Raise BAD_MSG if the lifecycle does not allow ``code`` now."""
        if code not in ALLOWED[self.state]:
            raise bad_msg(f"stream {self.id}: {code.name} not allowed in state {self.state.value}", rules.LIFECYCLE)

    def apply(self, code: RequestCode, params: PcmParams | None = None) -> None:
        """Accept an already checked command."""
        self.check(code)
        if code == RequestCode.PCM_SET_PARAMS:
            assert params is not None
            self.params = params
        old, self.state = self.state, STATE_AFTER[code]
        log.debug("stream %d: %s -> %s", self.id, old.value, self.state.value)

    def reset(self) -> None:
        """Back to the initial state (device reset)."""
        self.state = StreamState.SET_PARAMS
        self.params = None
