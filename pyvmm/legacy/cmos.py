"""A minimal MC146818 CMOS RTC (index port 0x70, data port 0x71) reading the host clock.

Linux reads the wall clock from it at boot when no paravirtual clock answers, and waits
while "update in progress" (status A bit 7) is set: an absent device (0xff) would make it
spin. Time registers come from the host's UTC clock in the format status B selects (BCD
or binary, 24 or 12 hour); writes to them are ignored (the guest cannot set the host
clock). The other 128 bytes are plain storage. No alarms, periodic interrupts or IRQ 8.
"""

from __future__ import annotations

import datetime
import logging
import threading
from typing import Callable

from pyvmm.log import TRACE

log = logging.getLogger(__name__)

CMOS_INDEX_PORT = 0x70
CMOS_DATA_PORT = 0x71
INDEX_OFFSET = 0
DATA_OFFSET = 1
NVRAM_SIZE = 128
INDEX_MASK = 0x7F  # bit 7 of the index write is the NMI mask

REG_SECONDS = 0x00
REG_MINUTES = 0x02
REG_HOURS = 0x04
REG_WEEKDAY = 0x06
REG_DAY = 0x07
REG_MONTH = 0x08
REG_YEAR = 0x09
REG_STATUS_A = 0x0A
REG_STATUS_B = 0x0B
REG_STATUS_C = 0x0C
REG_STATUS_D = 0x0D
REG_CENTURY = 0x32

STATUS_A_DEFAULT = 0x26  # 32.768 kHz divider, 1024 Hz rate, UIP clear
STATUS_B_24H = 0x02
STATUS_B_BINARY = 0x04
STATUS_B_DEFAULT = STATUS_B_24H
STATUS_D_VALID = 0x80  # battery good, time valid
HOUR_PM = 0x80

TIME_REGISTERS = {REG_SECONDS, REG_MINUTES, REG_HOURS, REG_WEEKDAY, REG_DAY, REG_MONTH, REG_YEAR, REG_CENTURY}


def _utc_now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


class CmosRtc:
    """Install at 0x70 with length 2. ``clock`` returns the time to report (for tests)."""

    def __init__(self, clock: Callable[[], datetime.datetime] = _utc_now):
        self._clock = clock
        self._lock = threading.Lock()
        self._index = 0
        self._nvram = bytearray(NVRAM_SIZE)
        self._nvram[REG_STATUS_A] = STATUS_A_DEFAULT
        self._nvram[REG_STATUS_B] = STATUS_B_DEFAULT
        self._nvram[REG_STATUS_D] = STATUS_D_VALID

    def read(self, offset: int, size: int) -> bytes:
        with self._lock:
            if offset == DATA_OFFSET:
                value = self._read_register(self._index)
            elif offset == INDEX_OFFSET:
                value = 0xFF  # the index port is write-only
            else:
                value = 0xFF
        if log.isEnabledFor(TRACE):
            log.log(TRACE, "cmos read +%d (index %#04x) = %#04x", offset, self._index, value)
        return bytes([value]) * size

    def write(self, offset: int, data: bytes) -> None:
        if not data:
            return
        value = data[0]
        if log.isEnabledFor(TRACE):
            log.log(TRACE, "cmos write +%d = %#04x", offset, value)
        with self._lock:
            if offset == INDEX_OFFSET:
                self._index = value & INDEX_MASK
            elif offset == DATA_OFFSET:
                self._write_register(self._index, value)

    def _read_register(self, index: int) -> int:
        if index in TIME_REGISTERS:
            return self._time_register(index)
        if index == REG_STATUS_C:
            return 0  # no interrupt flags; reading clears them anyway
        return self._nvram[index]

    def _write_register(self, index: int, value: int) -> None:
        if index in TIME_REGISTERS:
            log.debug("cmos: guest write to time register %#04x ignored", index)
        elif index == REG_STATUS_A:
            self._nvram[index] = value & 0x7F  # UIP is read-only
        elif index in (REG_STATUS_C, REG_STATUS_D):
            pass  # read-only
        else:
            self._nvram[index] = value

    def _time_register(self, index: int) -> int:
        now = self._clock()
        status_b = self._nvram[REG_STATUS_B]
        if index == REG_HOURS:
            hour = now.hour
            pm = 0
            if not status_b & STATUS_B_24H:
                pm = HOUR_PM if hour >= 12 else 0
                hour = hour % 12 or 12
            return self._encode(hour, status_b) | pm
        value = {
            REG_SECONDS: now.second,
            REG_MINUTES: now.minute,
            REG_WEEKDAY: now.isoweekday() % 7 + 1,  # 1 = Sunday
            REG_DAY: now.day,
            REG_MONTH: now.month,
            REG_YEAR: now.year % 100,
            REG_CENTURY: now.year // 100,
        }[index]
        return self._encode(value, status_b)

    @staticmethod
    def _encode(value: int, status_b: int) -> int:
        if status_b & STATUS_B_BINARY:
            return value
        return ((value // 10) << 4) | (value % 10)

    def __repr__(self) -> str:
        return "CmosRtc()"
