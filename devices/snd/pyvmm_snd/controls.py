"""Current values of the control elements (volume, switch, ...), and their checks.

The control plane reads and writes them for CTL_READ/CTL_WRITE; the data plane reads them
to apply gain; the host (monitor, tests) may change them, which notifies the guest with a
CTL_NOTIFY event through ``on_change``.
"""

from __future__ import annotations

import logging
from typing import Callable, Sequence

from pyvmm_snd import rules, spec
from pyvmm_snd.errors import RequestError, bad_msg, not_supp
from pyvmm_snd.spec import CtlAccess, CtlEventMask, CtlRole, CtlType
from pyvmm_snd.topology import VOLUME_MIN_CDB, VOLUME_STEP_CDB, ControlConfig

log = logging.getLogger(__name__)

_IEC958_SIZE = 176


def _signed(value: int, bits: int) -> int:
    value &= (1 << bits) - 1
    return value - (1 << bits) if value >> (bits - 1) else value


ACCESS_RULES = {
    CtlAccess.READ: rules.CTL_READ_ACCESS,
    CtlAccess.WRITE: rules.CTL_WRITE_ACCESS,
    CtlAccess.TLV_READ: rules.CTL_TLV_READ_ACCESS,
    CtlAccess.TLV_WRITE: rules.CTL_TLV_WRITE_ACCESS,
    CtlAccess.TLV_COMMAND: rules.CTL_TLV_COMMAND_ACCESS,
}
"""The spec rule a request for a control without that access breaks."""

class ControlStore:
    def __init__(self, configs: Sequence[ControlConfig]):
        self.configs = tuple(configs)
        self.values: list[list[int] | bytes] = [self._initial(c) for c in self.configs]
        self.on_change: Callable[[int, int], None] | None = None
        """Called with ``(control_id, mask)`` after a value changed (mask: 1 << CtlEventMask)."""
        self._gains: dict[int, float] = {}
        """:meth:`stream_gain` per stream, asked once per period: cleared by every value change."""

    @staticmethod
    def _initial(config: ControlConfig) -> list[int] | bytes:
        if config.type == CtlType.BYTES:
            return bytes((list(config.default) * config.count)[:config.count])
        if config.type == CtlType.IEC958:
            return bytes(_IEC958_SIZE)
        default = list(config.default)
        return default * config.count if len(default) == 1 else default

    def __len__(self) -> int:
        return len(self.configs)

    def config(self, control_id: int) -> ControlConfig:
        if not 0 <= control_id < len(self.configs):
            raise bad_msg(f"control {control_id} does not exist ({len(self.configs)} controls)")
        return self.configs[control_id]

    def find(self, stream_id: int, role: CtlRole) -> int | None:
        """The id of the control with ``role`` acting on ``stream_id`` (for the data plane)."""
        for i, c in enumerate(self.configs):
            if c.stream_id == stream_id and c.role == role:
                return i
        return None

    def value(self, control_id: int) -> list[int] | bytes:
        return self.values[control_id]

    def stream_gain(self, stream_id: int) -> float:
        """Linear gain the data plane applies to ``stream_id``: 0.0 when switched off or at the
        bottom of the volume scale (the TLV marks it as mute), 1.0 at 0 dB or without controls."""
        gain = self._gains.get(stream_id)
        if gain is None:
            gain = self._gains[stream_id] = self._compute_gain(stream_id)
        return gain

    def _compute_gain(self, stream_id: int) -> float:
        switch = self.find(stream_id, CtlRole.MUTE)
        if switch is not None and not self.values[switch][0]:
            return 0.0
        volume = self.find(stream_id, CtlRole.VOLUME)
        if volume is None:
            return 1.0
        raw = self.values[volume][0]
        if raw <= 0:
            return 0.0
        centi_db = VOLUME_MIN_CDB + raw * VOLUME_STEP_CDB
        return 10 ** (centi_db / 2000)

    # -- guest requests -------------------------------------------------------------------

    def _require(self, config: ControlConfig, access: CtlAccess) -> None:
        if not config.has(access):
            raise not_supp(f"control {config.name!r} has no {access.name} access", ACCESS_RULES.get(access))

    def enum_items(self, control_id: int) -> bytes:
        config = self.config(control_id)
        if config.type != CtlType.ENUMERATED:
            raise bad_msg(f"control {config.name!r} is not ENUMERATED")
        return b"".join(bytes(spec.CtlEnumItem(item=name.encode("ascii"))) for name in config.items)

    def read(self, control_id: int) -> spec.CtlValue:
        config = self.config(control_id)
        self._require(config, CtlAccess.READ)
        out = spec.CtlValue()
        current = self.values[control_id]
        if config.type in (CtlType.BYTES, CtlType.IEC958):
            raw = bytes(current)
            ctypes_bytes = out.value.bytes
            for i, b in enumerate(raw):
                ctypes_bytes[i] = b
        elif config.type == CtlType.INTEGER64:
            for i, v in enumerate(current):
                out.value.integer64[i] = v & 0xFFFFFFFFFFFFFFFF
        else:
            for i, v in enumerate(current):
                out.value.integer[i] = v & 0xFFFFFFFF
        return out

    def write(self, control_id: int, value: spec.CtlValue) -> bool:
        """Apply a guest CTL_WRITE; True if the value changed."""
        config = self.config(control_id)
        self._require(config, CtlAccess.WRITE)
        return self._store(control_id, config, self._decode(config, value))

    def tlv_read(self, control_id: int) -> bytes:
        config = self.config(control_id)
        self._require(config, CtlAccess.TLV_READ)
        return config.tlv

    def tlv_write(self, control_id: int, command: bool, tlv: bytes) -> None:
        config = self.config(control_id)
        self._require(config, CtlAccess.TLV_COMMAND if command else CtlAccess.TLV_WRITE)
        raise not_supp(f"control {config.name!r}: TLV {'commands' if command else 'writes'} are not implemented")

    # -- host side --------------------------------------------------------------------------

    def config_or_none(self, control_id: int) -> ControlConfig | None:
        return self.configs[control_id] if 0 <= control_id < len(self.configs) else None

    def validate(self, control_id: int, values: Sequence[int] | bytes) -> list[int] | bytes:
        """The normalised value, or ValueError for a value the control cannot take."""
        config = self.config_or_none(control_id)
        if config is None:
            raise ValueError(f"control {control_id} does not exist")
        if isinstance(values, (bytes, bytearray)):
            decoded: list[int] | bytes = bytes(values)
        else:
            decoded = list(values) * config.count if len(values) == 1 else list(values)
        try:
            self._check(config, decoded)
        except RequestError as exc:
            raise ValueError(str(exc)) from None
        return decoded

    def set(self, control_id: int, values: Sequence[int] | bytes) -> bool:
        """Change a value from the host; True if it changed (ValueError if it is not acceptable)."""
        decoded = self.validate(control_id, values)
        return self._store(control_id, self.configs[control_id], decoded)

    # -- helpers -------------------------------------------------------------------------------

    def _decode(self, config: ControlConfig, value: spec.CtlValue) -> list[int] | bytes:
        n = config.count
        if config.type == CtlType.BYTES:
            decoded: list[int] | bytes = bytes(value.value.bytes[:n])
        elif config.type == CtlType.IEC958:
            decoded = bytes(value.value.bytes[:_IEC958_SIZE])
        elif config.type == CtlType.INTEGER64:
            decoded = [_signed(v, 64) for v in value.value.integer64[:n]]
        elif config.type == CtlType.INTEGER:
            decoded = [_signed(v, 32) for v in value.value.integer[:n]]
        else:
            decoded = list(value.value.integer[:n])
        self._check(config, decoded)
        return decoded

    def _check(self, config: ControlConfig, values: list[int] | bytes) -> None:
        expected = _IEC958_SIZE if config.type == CtlType.IEC958 else config.count
        if len(values) != expected:
            raise bad_msg(f"control {config.name!r}: {len(values)} values, expected {expected}")
        for v in values if config.type not in (CtlType.BYTES, CtlType.IEC958) else ():
            if config.type == CtlType.BOOLEAN and v not in (0, 1):
                raise bad_msg(f"control {config.name!r}: boolean value {v}")
            if config.type == CtlType.ENUMERATED and not 0 <= v < len(config.items):
                raise bad_msg(f"control {config.name!r}: item {v} of {len(config.items)}")
            if config.type in (CtlType.INTEGER, CtlType.INTEGER64):
                if not config.minimum <= v <= config.maximum:
                    raise bad_msg(f"control {config.name!r}: value {v} outside {config.minimum}-{config.maximum}")
                if config.step and (v - config.minimum) % config.step:
                    raise bad_msg(f"control {config.name!r}: value {v} is not on a step of {config.step}")

    def _store(self, control_id: int, config: ControlConfig, values: list[int] | bytes) -> bool:
        changed = values != self.values[control_id]
        self.values[control_id] = values
        if changed:
            self._gains.clear()
            shown = values if isinstance(values, list) else f"{len(values)} bytes"
            log.info("control %d %r (index %d) = %s", control_id, config.name, config.index, shown)
            if self.on_change is not None:
                self.on_change(control_id, 1 << CtlEventMask.VALUE)
        return changed
