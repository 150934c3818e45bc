import pytest

from pyvmm.arch.x86_64 import lapic, msr
from pyvmm.arch.x86_64.cpu_state import reset_state


def test_boot_msrs_clear_syscall_state_and_enable_mtrrs():
    values = dict(msr.boot_msrs())
    for index in (msr.MSR_STAR, msr.MSR_LSTAR, msr.MSR_CSTAR, msr.MSR_SYSCALL_MASK, msr.MSR_KERNEL_GS_BASE,
                  msr.MSR_IA32_SYSENTER_CS, msr.MSR_IA32_SYSENTER_ESP, msr.MSR_IA32_SYSENTER_EIP):
        assert values[index] == 0
    assert values[msr.MSR_IA32_MISC_ENABLE] & msr.MISC_ENABLE_FAST_STRING
    assert values[msr.MSR_MTRR_DEF_TYPE] == 0x806
    assert msr.MSR_IA32_TSC not in values


def test_unsupported_msrs_filtered():
    listed = [msr.MSR_STAR, msr.MSR_LSTAR]
    kept = msr.supported_only([(msr.MSR_STAR, 0), (msr.MSR_IA32_ARCH_CAPABILITIES, 0), (msr.MSR_LSTAR, 1),
                               (msr.MSR_MTRR_DEF_TYPE, 6)], listed)
    assert kept == [(msr.MSR_STAR, 0), (msr.MSR_LSTAR, 1), (msr.MSR_MTRR_DEF_TYPE, 6)]


def test_lapic_virtual_wire_keeps_other_bits():
    regs = bytearray(1024)
    regs[0x350:0x354] = (0x10000 | 0x200).to_bytes(4, "little")      # masked, SMI mode
    regs[0x360:0x364] = (0x10000).to_bytes(4, "little")
    lapic.set_virtual_wire(regs)
    assert int.from_bytes(regs[0x350:0x354], "little") == 0x10700
    assert int.from_bytes(regs[0x360:0x364], "little") == 0x10400
    assert regs[:0x350] == bytes(0x350) and regs[0x364:] == bytes(1024 - 0x364)
    with pytest.raises(ValueError):
        lapic.set_virtual_wire(bytearray(10))


def test_reset_state_is_real_mode_at_reset_vector():
    state = reset_state()
    assert state.cs.selector == 0xF000 and state.cs.base + state.rip == 0xFFFF_FFF0
    assert not state.cr0 & 1 and state.rflags == 2
