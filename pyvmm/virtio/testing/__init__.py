"""Test helpers for virtio: a driver model of split virtqueues (rust-vmm mock.rs style), builders
of every kind of malformed chain, the Linux virtio-mmio probe sequence and a small echo device.

Importable by any test: ``from pyvmm.virtio.testing import DriverQueue, MmioDriver, EchoDevice``.
"""

from pyvmm.virtio.testing.devices import ECHO_CONFIG, ECHO_CONFIG_MAGIC, ECHO_DEVICE_ID, EchoDevice
from pyvmm.virtio.testing.driver import (
    DriverQueue, FakeInterrupt, GuestAllocator, Pending, UsedEntry, split_bytes,
)
from pyvmm.virtio.testing.malformed import BROKEN_RING, MALFORMED, MALFORMED_NEEDS_NO_INDIRECT
from pyvmm.virtio.testing.mmio_driver import MmioDriver, ProbeError

__all__ = [
    "BROKEN_RING", "DriverQueue", "ECHO_CONFIG", "ECHO_CONFIG_MAGIC", "ECHO_DEVICE_ID", "EchoDevice",
    "FakeInterrupt", "GuestAllocator", "MALFORMED", "MALFORMED_NEEDS_NO_INDIRECT", "MmioDriver",
    "Pending", "ProbeError", "UsedEntry", "split_bytes",
]
