"""Quiet answers for the PC ports a kernel pokes at boot, and one call installing the lot.

KVM's in-kernel devices already own some legacy ports and never exit to user space for
them: the PICs (0x20/0x21, 0xa0/0xa1, ELCR 0x4d0/0x4d1) with ``KVM_CREATE_IRQCHIP``, the
PIT (0x40-0x43) with ``KVM_CREATE_PIT2``, and system control port B (0x61: PIT channel 2
gate, speaker, refresh toggle, OUT2) when the PIT is created with the
``KVM_PIT_SPEAKER_DUMMY`` flag, which is the recommended setting (Firecracker does the
same). :class:`SystemControlPortB` is the fallback for a VMM that creates the PIT
without that flag: it only keeps polling loops (Linux's PIT TSC calibration waits for
bit 5) from spinning forever.

Everything here is logged per access at TRACE level, so ``--trace`` shows what the
guest probes.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from typing import BinaryIO, Callable

from pyvmm.bus import Bus
from pyvmm.legacy.cmos import CMOS_INDEX_PORT, CmosRtc
from pyvmm.legacy.debug_exit import DEBUG_EXIT_PORT, DebugExit
from pyvmm.legacy.i8042 import COMMAND_OFFSET, COMMAND_PORT, DATA_OFFSET, DATA_PORT, I8042
from pyvmm.legacy.irq import InterruptLine
from pyvmm.legacy.serial import COM1_BASE, REGISTER_COUNT, Serial16550
from pyvmm.log import TRACE

log = logging.getLogger(__name__)

PORT_B = 0x61
PORT_B_WRITABLE = 0x0F  # gate 2, speaker data, parity/channel check enables
PORT_B_REFRESH = 0x10
PORT_B_OUT2 = 0x20


class QuietPorts:
    """A range of ports nothing answers on: reads return ``fill``, writes are dropped."""

    def __init__(self, name: str, fill: int = 0xFF):
        self.name = name
        self._fill = fill

    def read(self, offset: int, size: int) -> bytes:
        if log.isEnabledFor(TRACE):
            log.log(TRACE, "%s read +%#x/%d (quiet)", self.name, offset, size)
        return bytes([self._fill]) * size

    def write(self, offset: int, data: bytes) -> None:
        if log.isEnabledFor(TRACE):
            log.log(TRACE, "%s write +%#x = %s (dropped)", self.name, offset, data.hex())

    def __repr__(self) -> str:
        return f"QuietPorts({self.name})"


class SystemControlPortB:
    """Port 0x61 without the in-kernel speaker stub: bits 3:0 are stored, and the refresh
    toggle (bit 4) and PIT OUT2 (bit 5) flip on every read, so loops waiting for either
    end (the values are not timed: calibration done this way is meaningless)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._value = 0
        self._toggle = 0

    def read(self, offset: int, size: int) -> bytes:
        with self._lock:
            self._toggle ^= PORT_B_REFRESH | PORT_B_OUT2
            value = self._value | self._toggle
        if log.isEnabledFor(TRACE):
            log.log(TRACE, "port B read = %#04x", value)
        return bytes([value]) * size

    def write(self, offset: int, data: bytes) -> None:
        if data:
            with self._lock:
                self._value = data[0] & PORT_B_WRITABLE
            if log.isEnabledFor(TRACE):
                log.log(TRACE, "port B write = %#04x", data[0])

    def __repr__(self) -> str:
        return "SystemControlPortB()"


class PortWindow:
    """Shows one register of a multi-port device at its own bus address: the i8042's data
    (0x60) and command (0x64) ports are not contiguous, port B (0x61) sits between them."""

    def __init__(self, device, offset: int):
        self.device = device
        self.offset = offset

    def read(self, offset: int, size: int) -> bytes:
        return self.device.read(self.offset + offset, size)

    def write(self, offset: int, data: bytes) -> None:
        self.device.write(self.offset + offset, data)

    def __repr__(self) -> str:
        return f"PortWindow({self.device!r}+{self.offset})"


# (name, base, length) of ports that only need a quiet answer.
QUIET_PORT_RANGES = (
    ("post", 0x80, 1),  # POST code / io_delay port
    ("dma-page", 0x81, 0x0F),  # DMA page registers 0x81-0x8f (0x87: channel 0)
    ("com2", 0x2F8, REGISTER_COUNT),  # absent UARTs: 0xff makes 8250 autoconfig skip them
    ("com3", 0x3E8, REGISTER_COUNT),
    ("com4", 0x2E8, REGISTER_COUNT),
    ("vga", 0x3C0, 0x20),
    ("pci-config", 0xCF8, 8),  # no PCI host bridge: the type 1/2 probes read all-ones
)


@dataclasses.dataclass
class LegacyDevices:
    """What :func:`install_legacy_devices` put on the bus, for the VMM to keep and wire."""

    serial: Serial16550
    i8042: I8042
    debug_exit: DebugExit
    cmos: CmosRtc
    port_b: SystemControlPortB | None


def install_legacy_devices(
    pio_bus: Bus,
    *,
    serial_sink: Callable[[bytes], object] | BinaryIO | None,
    serial_irq: InterruptLine | None,
    on_reset: Callable[[], None],
    on_exit: Callable[[int], None],
    emulate_port_b: bool = False,
) -> LegacyDevices:
    """Put COM1, the i8042, the debug-exit port, the CMOS RTC and the quiet ports on ``pio_bus``.

    ``serial_sink``/``serial_irq``: see :class:`Serial16550` (the IRQ is ISA IRQ 4).
    ``on_reset()``: the guest reset the CPU (i8042 0xFE); ``on_exit(status)``: the guest wrote
    the debug-exit port. Both are called on a vCPU thread. ``emulate_port_b``: set when the
    in-kernel PIT was created without ``KVM_PIT_SPEAKER_DUMMY``.
    """
    serial = Serial16550(sink=serial_sink, irq=serial_irq, name="ttyS0")
    i8042 = I8042(on_reset=on_reset)
    debug_exit = DebugExit(on_exit=on_exit)
    cmos = CmosRtc()
    pio_bus.insert(serial, COM1_BASE, REGISTER_COUNT)
    pio_bus.insert(PortWindow(i8042, DATA_OFFSET), DATA_PORT, 1)
    pio_bus.insert(PortWindow(i8042, COMMAND_OFFSET), COMMAND_PORT, 1)
    pio_bus.insert(debug_exit, DEBUG_EXIT_PORT, 1)
    pio_bus.insert(cmos, CMOS_INDEX_PORT, 2)
    port_b = None
    if emulate_port_b:
        port_b = SystemControlPortB()
        pio_bus.insert(port_b, PORT_B, 1)
    for name, base, length in QUIET_PORT_RANGES:
        pio_bus.insert(QuietPorts(name), base, length)
    return LegacyDevices(serial=serial, i8042=i8042, debug_exit=debug_exit, cmos=cmos, port_b=port_b)
