"""Interrupt line objects the legacy devices drive.

Devices call ``set_level(high)`` when their interrupt condition changes (see the
interrupt notes in :mod:`pyvmm.legacy.serial`). These adapters connect that to KVM:
a GSI of the in-kernel irqchip through ``KVM_IRQ_LINE``, or an irqfd that can only
signal edges.
"""

from __future__ import annotations

from typing import Protocol


class InterruptLine(Protocol):
    def set_level(self, high: bool) -> None: ...


class GsiLine:
    """Drives in-kernel irqchip GSI ``gsi`` through ``vm.irq_line(gsi, level)`` (a
    :class:`pyvmm.kvm.VmFd`). On an edge-triggered pin (ISA IRQs in the MP table) each
    low->high change is one interrupt."""

    def __init__(self, vm, gsi: int):
        self._vm = vm
        self.gsi = gsi

    def set_level(self, high: bool) -> None:
        self._vm.irq_line(self.gsi, high)

    def __repr__(self) -> str:
        return f"GsiLine({self.gsi})"


class EdgeTriggerLine:
    """Adapts a ``trigger()``-only line (an irqfd) to ``set_level``: rising edges fire it."""

    def __init__(self, edge_line):
        self._edge_line = edge_line

    def set_level(self, high: bool) -> None:
        if high:
            self._edge_line.trigger()
