"""The part of the PC keyboard controller (i8042) a guest without a keyboard still uses.

Linux's ``reboot=k`` resets the machine by writing 0xFE ("pulse output line 0", the CPU
reset line) to the command port 0x64 after waiting for the input buffer to drain; that
write calls ``on_reset()``. Everything else is answered just enough for a probe to see a
quiet controller with no keyboard: status reads "nothing to read, ready for input", the
controller command byte can be read (0x20) and written (0x60), self tests pass, the
output port can be written (0xD1, bit 0 clear is also a reset). No scancodes and no
interrupts (the guest kernel is built without serio).

Ports: data 0x60 (offset 0), command/status 0x64 (offset 4). 0x61 between them is
system control port B, not the i8042 (see :mod:`pyvmm.legacy.ports`).
"""

from __future__ import annotations

import collections
import logging
import threading
from typing import Callable

from pyvmm.log import TRACE

log = logging.getLogger(__name__)

DATA_PORT = 0x60
COMMAND_PORT = 0x64
DATA_OFFSET = 0
COMMAND_OFFSET = COMMAND_PORT - DATA_PORT

STATUS_OBF = 0x01  # output buffer full: a byte waits at 0x60
STATUS_SYS = 0x04  # system flag: self test passed
STATUS_CMD = 0x08  # last write was to the command port

CMD_READ_CTR = 0x20
CMD_WRITE_CTR = 0x60
CMD_DISABLE_AUX = 0xA7
CMD_ENABLE_AUX = 0xA8
CMD_TEST_AUX = 0xA9
CMD_SELF_TEST = 0xAA
CMD_TEST_KBD = 0xAB
CMD_DISABLE_KBD = 0xAD
CMD_ENABLE_KBD = 0xAE
CMD_READ_OUTPUT_PORT = 0xD0
CMD_WRITE_OUTPUT_PORT = 0xD1
CMD_PULSE_FIRST = 0xF0  # 0xF0-0xFF: pulse output lines whose bit (3:0) is 0
CMD_PULSE_RESET = 0xFE  # pulse the reset line only: reboot=k, and the ACPI reset register

SELF_TEST_OK = 0x55
INTERFACE_TEST_OK = 0x00
OUTPUT_PORT_RESET_LINE = 0x01  # active low: 0 holds the CPU in reset
OUTPUT_PORT_DEFAULT = 0x03  # reset line high, A20 enabled

CTR_DEFAULT = 0x30  # both ports' clocks disabled, no interrupts: there is no keyboard


class I8042:
    """Keyboard controller stub; ``on_reset()`` is called when the guest resets the CPU.

    Install at 0x60 (offset 0) and 0x64 (offset 4), e.g. through
    :func:`pyvmm.legacy.ports.install_legacy_devices`.
    """

    def __init__(self, on_reset: Callable[[], None]):
        self._on_reset = on_reset
        self._lock = threading.Lock()
        self._output: collections.deque[int] = collections.deque()
        self._ctr = CTR_DEFAULT
        self._output_port = OUTPUT_PORT_DEFAULT
        self._status = STATUS_SYS
        self._pending_command: int | None = None  # a command waiting for its data byte

    def read(self, offset: int, size: int) -> bytes:
        with self._lock:
            if offset == DATA_OFFSET:
                value = self._output.popleft() if self._output else 0x00
            elif offset == COMMAND_OFFSET:
                value = self._status | (STATUS_OBF if self._output else 0)
            else:
                value = 0xFF
        if log.isEnabledFor(TRACE):
            log.log(TRACE, "i8042 read +%d = %#04x", offset, value)
        return bytes([value]) * size

    def write(self, offset: int, data: bytes) -> None:
        if not data:
            return
        value = data[0]
        if log.isEnabledFor(TRACE):
            log.log(TRACE, "i8042 write +%d = %#04x", offset, value)
        with self._lock:
            if offset == COMMAND_OFFSET:
                self._status |= STATUS_CMD
                reset = self._command(value)
            elif offset == DATA_OFFSET:
                self._status &= ~STATUS_CMD
                reset = self._data(value)
            else:
                reset = False
        if reset:
            log.info("guest reset the CPU through the i8042")
            self._on_reset()

    def _command(self, cmd: int) -> bool:
        self._pending_command = None
        if cmd == CMD_READ_CTR:
            self._output.append(self._ctr)
        elif cmd in (CMD_WRITE_CTR, CMD_WRITE_OUTPUT_PORT):
            self._pending_command = cmd
        elif cmd == CMD_SELF_TEST:
            self._output.append(SELF_TEST_OK)
        elif cmd in (CMD_TEST_KBD, CMD_TEST_AUX):
            self._output.append(INTERFACE_TEST_OK)
        elif cmd == CMD_READ_OUTPUT_PORT:
            self._output.append(self._output_port)
        elif cmd in (CMD_DISABLE_AUX, CMD_ENABLE_AUX, CMD_DISABLE_KBD, CMD_ENABLE_KBD):
            bit = 0x20 if cmd in (CMD_DISABLE_AUX, CMD_ENABLE_AUX) else 0x10
            if cmd in (CMD_DISABLE_AUX, CMD_DISABLE_KBD):
                self._ctr |= bit
            else:
                self._ctr &= ~bit
        elif cmd >= CMD_PULSE_FIRST:
            return not cmd & OUTPUT_PORT_RESET_LINE
        else:
            log.debug("i8042: command %#04x ignored", cmd)
        return False

    def _data(self, value: int) -> bool:
        cmd, self._pending_command = self._pending_command, None
        if cmd == CMD_WRITE_CTR:
            self._ctr = value
        elif cmd == CMD_WRITE_OUTPUT_PORT:
            self._output_port = value
            return not value & OUTPUT_PORT_RESET_LINE
        else:
            # A byte for the (absent) keyboard: no device answers.
            log.debug("i8042: keyboard data %#04x dropped (no keyboard)", value)
        return False

    def __repr__(self) -> str:
        return "I8042()"
