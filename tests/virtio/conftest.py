import pytest

from pyvmm.eventloop import DeviceEventLoop
from pyvmm.memory import GuestMemory
from pyvmm.virtio.testing import GuestAllocator

RAM_SIZE = 1 << 30  # sparse memfd: only touched pages cost memory; big enough for length-overflow chains


@pytest.fixture
def memory():
    mem = GuestMemory.create([(0, RAM_SIZE)])
    yield mem
    mem.close()


@pytest.fixture
def allocator(memory):
    return GuestAllocator(memory, 0x10_0000, 64 << 20)


@pytest.fixture
def device_loop():
    loop = DeviceEventLoop("test-devices").start()
    yield loop
    loop.stop()
