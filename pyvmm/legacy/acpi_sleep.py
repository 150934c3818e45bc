"""The hardware-reduced ACPI sleep registers: how a guest with ACPI powers the machine off.

The FADT names two one-byte I/O registers (:data:`layout.ACPI_SLEEP_CONTROL_PORT` and
``..._STATUS_PORT``). Linux's ``acpi_power_off`` clears ``WAK_STS`` in the status
register, then writes ``SLP_EN | SLP_TYP << 2`` to the control register with the
``SLP_TYP`` of the DSDT's ``\\_S5`` package; that write calls ``on_poweroff()``, which the
VMM treats like a reset (``poweroff -f`` ends ``pyvmm run`` with status 0, as ``reboot -f``
does). Other sleep states are not offered (no ``\\_S1``..``\\_S4``), so a request for one
is logged (through the VM's guest-error limiter, :mod:`pyvmm.guest_log`) and ignored. The status register reads 0: the machine never wakes.
"""

from __future__ import annotations

import logging
from typing import Callable

from pyvmm.arch.x86_64.acpi import (
    S5_SLEEP_TYPE, SLEEP_CONTROL_SLP_EN, SLEEP_CONTROL_SLP_TYP_MASK, SLEEP_CONTROL_SLP_TYP_SHIFT,
)
from pyvmm.guest_log import guest_error
from pyvmm.log import TRACE

log = logging.getLogger(__name__)

CONTROL_OFFSET = 0
STATUS_OFFSET = 1
REGISTER_COUNT = 2


class AcpiSleepRegisters:
    """Control (offset 0) and status (offset 1) registers, placed on the PIO bus together."""

    def __init__(self, on_poweroff: Callable[[], None]):
        self._on_poweroff = on_poweroff

    def read(self, offset: int, size: int) -> bytes:
        if log.isEnabledFor(TRACE):
            log.log(TRACE, "acpi sleep read +%d/%d", offset, size)
        return bytes(size)

    def write(self, offset: int, data: bytes) -> None:
        if not data:
            return
        value = data[0]
        if log.isEnabledFor(TRACE):
            log.log(TRACE, "acpi sleep write +%d = %#04x", offset, value)
        if offset != CONTROL_OFFSET or not value & SLEEP_CONTROL_SLP_EN:
            return                       # WAK_STS clears and SLP_TYP set-up writes: nothing to do
        sleep_type = (value & SLEEP_CONTROL_SLP_TYP_MASK) >> SLEEP_CONTROL_SLP_TYP_SHIFT
        if sleep_type == S5_SLEEP_TYPE:
            log.info("guest powered off through the ACPI sleep control register (S5)")
            self._on_poweroff()
            return
        guest_error(log, "guest asked for ACPI sleep type %d, which is not offered (only S5 power-off); ignored",
                    sleep_type)

    def __repr__(self) -> str:
        return "AcpiSleepRegisters()"
