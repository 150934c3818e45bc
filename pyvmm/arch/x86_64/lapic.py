"""Local APIC set-up in the ``kvm_lapic_state.regs`` register page: virtual-wire mode.

LINT0 delivers the PIC's interrupts as ExtINT and LINT1 NMIs, the wiring the MP
table announces, so the kernel's early timer checks find the PIT through the PIC.
"""

from __future__ import annotations

import struct

APIC_REGS_SIZE = 1024
APIC_LVT_LINT0 = 0x350
APIC_LVT_LINT1 = 0x360
DELIVERY_MODE_SHIFT = 8
DELIVERY_MODE_MASK = 0x7 << DELIVERY_MODE_SHIFT
DELIVERY_MODE_NMI = 0x4
DELIVERY_MODE_EXTINT = 0x7


def _set_delivery_mode(regs: bytearray, offset: int, mode: int) -> None:
    (value,) = struct.unpack_from("<I", regs, offset)
    value = (value & ~DELIVERY_MODE_MASK) | (mode << DELIVERY_MODE_SHIFT)
    struct.pack_into("<I", regs, offset, value)


def set_virtual_wire(regs: bytearray) -> None:
    """Modify a LAPIC register page (as read by KVM_GET_LAPIC) in place."""
    if len(regs) != APIC_REGS_SIZE:
        raise ValueError(f"LAPIC register page is {len(regs)} bytes, expected {APIC_REGS_SIZE}")
    _set_delivery_mode(regs, APIC_LVT_LINT0, DELIVERY_MODE_EXTINT)
    _set_delivery_mode(regs, APIC_LVT_LINT1, DELIVERY_MODE_NMI)
