"""Bus routing: offsets relative to the device, overlaps refused, misses read as all-ones."""

import pytest

from pyvmm.bus import Bus, BusConflictError


class Recorder:
    def __init__(self):
        self.writes = []

    def read(self, offset, size):
        return bytes([offset & 0xFF]) * size

    def write(self, offset, data):
        self.writes.append((offset, bytes(data)))


def test_routing_and_offsets():
    bus = Bus("pio")
    a, b = Recorder(), Recorder()
    bus.insert(a, 0x3F8, 8)
    bus.insert(b, 0x60, 1)
    bus.write(0x3FB, b"\x80")
    assert a.writes == [(3, b"\x80")]
    assert bus.read(0x3FD, 1) == b"\x05"
    assert bus.read(0x60, 2) == b"\x00\x00"


def test_miss_reads_all_ones_and_drops_writes():
    bus = Bus("mmio")
    dev = Recorder()
    bus.insert(dev, 0x1000, 0x100)
    assert bus.read(0x1100, 4) == b"\xff" * 4
    assert bus.read(0x0FFF, 1) == b"\xff"
    bus.write(0x2000, b"x")
    assert dev.writes == []


@pytest.mark.parametrize("base,length", [(0x10, 0x10), (0x0, 0x11), (0x1F, 1), (0x0, 0x100)])
def test_overlap_refused(base, length):
    bus = Bus("pio")
    bus.insert(Recorder(), 0x10, 0x10)
    with pytest.raises(BusConflictError):
        bus.insert(Recorder(), base, length)


def test_remove():
    bus = Bus("pio")
    dev = Recorder()
    bus.insert(dev, 0x10, 4)
    bus.remove(dev)
    assert bus.resolve(0x10) is None
