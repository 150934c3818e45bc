"""``null``: playback is discarded, capture is silence (the device's default back end)."""

from __future__ import annotations

from pyvmm_snd.backends.base import PcmBackend


class NullBackend(PcmBackend):
    NAME = "null"
    OPTIONS: dict[str, str] = {}
