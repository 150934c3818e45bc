"""Model-specific registers a VMM sets before the first instruction (as Firecracker does)."""

from __future__ import annotations

import logging
from collections.abc import Iterable

log = logging.getLogger(__name__)

MSR_IA32_TSC = 0x10
MSR_IA32_SYSENTER_CS = 0x174
MSR_IA32_SYSENTER_ESP = 0x175
MSR_IA32_SYSENTER_EIP = 0x176
MSR_IA32_MISC_ENABLE = 0x1A0
MSR_MTRR_DEF_TYPE = 0x2FF
MSR_IA32_ARCH_CAPABILITIES = 0x10A
MSR_STAR = 0xC0000081
MSR_LSTAR = 0xC0000082
MSR_CSTAR = 0xC0000083
MSR_SYSCALL_MASK = 0xC0000084
MSR_KERNEL_GS_BASE = 0xC0000102

MISC_ENABLE_FAST_STRING = 1 << 0
MTRR_ENABLE = 1 << 11
MTRR_TYPE_WRITE_BACK = 6


def boot_msrs() -> list[tuple[int, int]]:
    """``(index, value)`` pairs: syscall MSRs cleared, fast strings on, MTRRs on with write-back
    default (without it Linux treats all memory as uncached). The TSC is left to KVM."""
    return [
        (MSR_IA32_SYSENTER_CS, 0),
        (MSR_IA32_SYSENTER_ESP, 0),
        (MSR_IA32_SYSENTER_EIP, 0),
        (MSR_STAR, 0),
        (MSR_CSTAR, 0),
        (MSR_KERNEL_GS_BASE, 0),
        (MSR_SYSCALL_MASK, 0),
        (MSR_LSTAR, 0),
        (MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
        (MSR_MTRR_DEF_TYPE, MTRR_ENABLE | MTRR_TYPE_WRITE_BACK),
    ]


# KVM emulates the MTRRs for every guest but leaves them out of KVM_GET_MSR_INDEX_LIST
# (seen on this host: 0x2ff accepted, not listed).
KVM_UNLISTED_MSRS = frozenset({MSR_MTRR_DEF_TYPE})


def supported_only(msrs: Iterable[tuple[int, int]], supported: Iterable[int]) -> list[tuple[int, int]]:
    """Drop MSRs missing from KVM's index list (``KVM_GET_MSR_INDEX_LIST``): KVM_SET_MSRS stops
    at the first one it refuses, and some hosts refuse some (e.g. IA32_ARCH_CAPABILITIES)."""
    known = set(supported) | KVM_UNLISTED_MSRS
    kept = []
    for index, value in msrs:
        if index in known:
            kept.append((index, value))
        else:
            log.debug("not setting MSR %#x: KVM does not list it", index)
    return kept
