"""i8042 reset, debug-exit, CMOS RTC, quiet ports and the one-call installer."""

import datetime

import pytest

from pyvmm.bus import Bus
from pyvmm.legacy.cmos import CmosRtc
from pyvmm.legacy.debug_exit import DebugExit
from pyvmm.legacy.i8042 import I8042
from pyvmm.legacy.ports import QuietPorts, SystemControlPortB, install_legacy_devices


@pytest.fixture
def machine():
    events = []
    out = bytearray()
    bus = Bus("pio")
    devs = install_legacy_devices(
        bus,
        serial_sink=out.extend,
        serial_irq=None,
        on_reset=lambda: events.append("reset"),
        on_exit=lambda status: events.append(("exit", status)),
    )
    return bus, devs, events, out


def test_reboot_k_resets(machine):
    bus, _, events, _ = machine
    # arch/x86/kernel/reboot.c: wait for the input buffer to drain, then pulse reset.
    assert bus.read(0x64, 1)[0] & 0x02 == 0
    bus.write(0x64, b"\xfe")
    assert events == ["reset"]


def test_i8042_other_pulses_do_not_reset():
    events = []
    kbc = I8042(on_reset=lambda: events.append(1))
    kbc.write(4, b"\xff")  # pulse nothing
    assert events == []
    kbc.write(4, b"\xd1")
    kbc.write(0, b"\x03")  # output port, reset line high
    assert events == []
    kbc.write(4, b"\xd1")
    kbc.write(0, b"\x02")  # reset line low
    assert events == [1]


def test_i8042_status_and_commands(machine):
    bus = machine[0]
    status = bus.read(0x64, 1)[0]
    assert status & 0x01 == 0  # no data
    bus.write(0x64, b"\x20")
    assert bus.read(0x64, 1)[0] & 0x01
    ctr = bus.read(0x60, 1)[0]
    assert bus.read(0x64, 1)[0] & 0x01 == 0
    bus.write(0x64, b"\x60")
    bus.write(0x60, bytes([ctr | 0x01]))
    bus.write(0x64, b"\x20")
    assert bus.read(0x60, 1)[0] == ctr | 0x01
    bus.write(0x64, b"\xaa")
    assert bus.read(0x60, 1)[0] == 0x55
    bus.write(0x64, b"\xab")
    assert bus.read(0x60, 1)[0] == 0x00


def test_debug_exit(machine):
    bus, _, events, _ = machine
    bus.write(0x501, b"\x07")
    assert events == [("exit", 7)]
    assert bus.read(0x501, 1) == b"\xff"


def test_debug_exit_wide_write_uses_low_byte():
    seen = []
    DebugExit(on_exit=seen.append).write(0, (0x1203).to_bytes(2, "little"))
    assert seen == [3]


def test_serial_installed_at_com1(machine):
    bus, devs, _, out = machine
    bus.write(0x3F8, b"A")
    assert out == b"A"
    assert bus.read(0x3FD, 1)[0] & 0x60 == 0x60


@pytest.mark.parametrize("port", [0x80, 0x87, 0x2F8, 0x2FD, 0x3E8, 0x2E8, 0x3C0, 0x3DF, 0xCF8, 0xCFC])
def test_quiet_ports(machine, port):
    bus = machine[0]
    bus.write(port, b"\x12")
    assert bus.read(port, 1) == b"\xff"
    assert bus.resolve(port) is not None


def test_absent_com2_fails_8250_ier_probe(machine):
    bus = machine[0]
    bus.write(0x2F9, b"\x00")
    assert bus.read(0x2F9, 1)[0] & 0x0F != 0  # so autoconfig says "no UART here"


def test_quiet_ports_trace_logging(caplog):
    caplog.set_level(5)
    QuietPorts("post").write(0, b"\x01")
    assert "post" in caplog.text


def test_port_b_optional_and_toggles():
    bus = Bus("pio")
    devs = install_legacy_devices(
        bus, serial_sink=None, serial_irq=None, on_reset=lambda: None, on_exit=lambda s: None, emulate_port_b=True
    )
    assert isinstance(devs.port_b, SystemControlPortB)
    bus.write(0x61, b"\x03")
    a, b = bus.read(0x61, 1)[0], bus.read(0x61, 1)[0]
    assert a & 0x0F == b & 0x0F == 0x03
    assert (a ^ b) & 0x30 == 0x30


def test_cmos_rtc_bcd_time():
    when = datetime.datetime(2026, 11, 25, 21, 7, 59, tzinfo=datetime.timezone.utc)
    rtc = CmosRtc(clock=lambda: when)

    def reg(i):
        rtc.write(0, bytes([i | 0x80]))  # NMI-mask bit is not part of the index
        return rtc.read(1, 1)[0]

    assert reg(0x0A) & 0x80 == 0  # no update in progress
    assert reg(0x0D) & 0x80
    assert [reg(i) for i in (0, 2, 4, 7, 8, 9, 0x32)] == [0x59, 0x07, 0x21, 0x25, 0x11, 0x26, 0x20]
    assert reg(6) == 4  # Wednesday, Sunday = 1
    rtc.write(0, b"\x0b")
    rtc.write(1, b"\x04")  # binary, 12-hour
    assert reg(4) == 0x80 | 9
    assert reg(0) == 59
    rtc.write(0, b"\x40")
    rtc.write(1, b"\x99")
    assert reg(0x40) == 0x99  # NVRAM storage
