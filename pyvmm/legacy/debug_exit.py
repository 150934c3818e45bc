"""The debug-exit port (PIO 0x501): how a guest ends the VMM with an exit status.

The default guest's /init writes its command's exit status here through /dev/port.
Unlike QEMU's isa-debug-exit (which exits with ``(V << 1) | 1``) the status is the
byte written, unchanged, so ``pyvmm run -- false`` exits 1.
"""

from __future__ import annotations

import logging
from typing import Callable

from pyvmm.log import TRACE

log = logging.getLogger(__name__)

DEBUG_EXIT_PORT = 0x501


class DebugExit:
    """A write of value V calls ``on_exit(V & 0xff)`` (from the vCPU thread); reads are 0xff."""

    def __init__(self, on_exit: Callable[[int], None]):
        self._on_exit = on_exit

    def read(self, offset: int, size: int) -> bytes:
        if log.isEnabledFor(TRACE):
            log.log(TRACE, "debug-exit read +%d/%d", offset, size)
        return b"\xff" * size

    def write(self, offset: int, data: bytes) -> None:
        if not data:
            return
        status = data[0]
        log.info("guest requested exit with status %d through the debug-exit port", status)
        self._on_exit(status)

    def __repr__(self) -> str:
        return "DebugExit()"
