"""Device plugins: virtio devices found through the ``pyvmm.devices`` entry point group.

The core knows the virtio transport, not the devices: a distribution such as
``pyvmm-snd`` registers ``virtio-snd = "pyvmm_snd.device:SoundDevice"`` and the user
selects it with ``--device virtio-snd,key=value``. A plugin class is constructed with the
option dict and may offer ``describe_options()`` for ``--device NAME,help``.
"""

from __future__ import annotations

import logging
from importlib.metadata import EntryPoint, entry_points

from pyvmm.config import DeviceSpec
from pyvmm.errors import VmmError
from pyvmm.virtio.device import VirtioDevice

log = logging.getLogger(__name__)

GROUP = "pyvmm.devices"


def available_devices() -> dict[str, EntryPoint]:
    return {ep.name: ep for ep in entry_points(group=GROUP)}


def device_class(name: str) -> type[VirtioDevice]:
    found = available_devices()
    if name not in found:
        known = ", ".join(sorted(found)) or "none installed"
        raise VmmError(f"unknown device {name!r} (available: {known})")
    try:
        cls = found[name].load()
    except Exception as exc:  # a broken plugin must not take the VMM down with a traceback
        raise VmmError(f"device plugin {name!r} failed to load: {exc}") from exc
    if not (isinstance(cls, type) and issubclass(cls, VirtioDevice)):
        raise VmmError(f"device plugin {name!r} does not provide a VirtioDevice")
    return cls


def describe(name: str) -> str:
    cls = device_class(name)
    describe_options = getattr(cls, "describe_options", None)
    text = describe_options() if describe_options else "(no options documented)"
    return f"{name}: {(cls.__doc__ or '').strip().splitlines()[0] if cls.__doc__ else ''}\n{text}"


def create_device(spec: DeviceSpec) -> VirtioDevice:
    cls = device_class(spec.name)
    try:
        return cls(dict(spec.options))
    except VmmError:
        raise
    except (ValueError, KeyError, TypeError) as exc:
        raise VmmError(f"--device {spec.name}: {exc}") from exc
