"""The probe of this KVM's guest debugging (64-bit ring-0 code, where a kernel runs).

On kvm_pvm (this project's machines) guest kernel code runs in an instruction emulator:
single-step and execution breakpoints work there, but ``int3`` is not intercepted (the guest
dies with an emulation failure) and data watchpoints never fire. These expectations are
kvm_pvm's, and named as such. On a hardware KVM single-step, execution breakpoints and
watchpoints work; ``int3`` is intercepted on hardware, but not by kvm_amd nested in QEMU's
software CPU (the real-KVM tier, ``scripts/real-kvm``: TCG treats ``int3`` as a software
interrupt, not as the #BP exception KVM intercepts, so the probe guest triple-faults), so
this test does not insist on it: the stub's fallback covers both cases.
"""

from __future__ import annotations

import pytest

from pyvmm.gdbstub.probe import probe_debug_support
from tinyguest import ON_KVM_PVM, kvm_test

pytestmark = [*kvm_test, pytest.mark.realkvm]


def test_probe_finds_what_works():
    support = probe_debug_support()
    assert support.guest_debug
    assert support.single_step and support.hw_breakpoints
    if ON_KVM_PVM:
        # kvm_pvm only: int3 and data breakpoints in emulated ring-0 code.
        assert not support.sw_breakpoints
        assert not support.watchpoints
    else:
        assert support.watchpoints
    assert "single-step yes" in support.describe()
