# The transport fixtures (sparse guest RAM, an allocator, a device loop) are the virtio tests' own.
from virtio.conftest import allocator, device_loop, memory  # noqa: F401
