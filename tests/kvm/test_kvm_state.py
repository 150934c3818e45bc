"""Register and vCPU state round trips through the KVM_GET_*/KVM_SET_* ioctls."""

from __future__ import annotations

import errno
from dataclasses import dataclass

import pytest

from pyvmm.errors import VmmError
from pyvmm.kvm import Cap, CpuidEntry, ExitReason, Kvm, KvmError, MpState
from pyvmm.kvm.structs import kvm_lapic_state
from tinyguest import CODE, ON_KVM_PVM, TinyVm, kvm_test

pytestmark = kvm_test

GPRS = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp",
        "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15")


def test_open_missing_device_is_one_line_vmm_error(tmp_path):
    with pytest.raises(VmmError, match="does not exist") as info:
        Kvm(str(tmp_path / "kvm"))
    assert "\n" not in str(info.value)


def test_system_queries():
    with Kvm() as kvm:
        assert kvm.api_version() == 12
        assert kvm.get_vcpu_mmap_size() >= 4096
        assert kvm.check_extension(Cap.USER_MEMORY) > 0
        cpuid = kvm.get_supported_cpuid()
        assert any(e.function == 0 for e in cpuid)
        assert all(isinstance(e, CpuidEntry) for e in cpuid)
        msrs = kvm.get_msr_index_list()
        assert 0x10 in msrs  # IA32_TSC


def test_failing_ioctl_names_ioctl_and_errno():
    with TinyVm() as t:
        with pytest.raises(KvmError) as info:
            t.vm.set_user_memory_region(3, 0x1000_0000, 123, t.memory.regions[0].host_addr)  # size not page aligned
        assert info.value.errno == errno.EINVAL
        assert str(info.value).startswith("KVM_SET_USER_MEMORY_REGION failed: EINVAL (Invalid argument)")


def test_regs_round_trip_and_guest_sees_them():
    with TinyVm() as t:
        vcpu = t.vcpus[0]
        t.real_mode(vcpu)
        values = {name: 0x0101_0101_0101_0101 * (i + 1) for i, name in enumerate(GPRS)}
        values["rax"] = 41
        vcpu.set_regs(values)
        got = vcpu.get_regs()
        assert {name: getattr(got, name) for name in GPRS} == values
        assert got.rip == CODE
        t.load(CODE, bytes.fromhex("6640 f4"))  # inc eax; hlt   (16-bit code)
        _, last = t.run_until_stop(vcpu)
        assert last.reason == ExitReason.HLT
        after = vcpu.get_regs()
        assert after.rax == 42 and after.rip == CODE + 3 and after.rbx == values["rbx"]


@dataclass
class PlainSegment:  # what pyvmm.arch hands over: plain values with the kernel's field names
    base: int
    limit: int
    selector: int
    type: int
    present: int = 1
    dpl: int = 0
    db: int = 1
    s: int = 1
    l: int = 0
    g: int = 1


def test_sregs_from_plain_values_round_trip():
    with TinyVm() as t:
        vcpu = t.vcpus[0]
        vcpu.set_sregs({"cs": PlainSegment(0, 0xFFFF_FFFF, 0x18, 11), "ds": PlainSegment(0, 0xFFFF_FFFF, 0x10, 3),
                        "cr0": 0x31, "gdt": {"base": 0x500, "limit": 31}})
        sregs = vcpu.get_sregs()
        assert (sregs.cs.selector, sregs.cs.type, sregs.cs.db, sregs.cs.limit) == (0x18, 11, 1, 0xFFFF_FFFF)
        assert (sregs.ds.selector, sregs.ds.type) == (0x10, 3)
        assert sregs.cr0 & 1 and (sregs.gdt.base, sregs.gdt.limit) == (0x500, 31)


def _guest_mxcsr(t: TinyVm, vcpu) -> int:
    """MXCSR as the guest sees it: FXSAVE to 0x3000 (MXCSR at offset 24) in 64-bit mode, then HLT."""
    t.load(CODE, bytes.fromhex("0fae0425 00300000 f4"))  # fxsave [0x3000]; hlt
    t.long_mode(vcpu)
    sregs = vcpu.get_sregs()
    sregs.cr4 |= 1 << 9  # OSFXSR
    vcpu.set_sregs(sregs)
    _, last = t.run_until_stop(vcpu)
    assert last.reason == ExitReason.HLT, last.describe()
    return int.from_bytes(t.memory.read(0x3000 + 24, 4), "little")


def test_fpu_round_trip():
    with TinyVm() as t:
        vcpu = t.vcpus[0]
        fpu = vcpu.get_fpu()
        fpu.fcw = 0x37F
        fpu.xmm[3][:] = list(range(16))
        vcpu.set_fpu(fpu)
        back = vcpu.get_fpu()
        assert back.fcw == 0x37F
        assert list(back.xmm[3]) == list(range(16))
        # x86 KVM does not carry MXCSR in KVM_GET/SET_FPU (kvm_pvm and kvm_amd alike): it reads 0.
        assert back.mxcsr == 0


def test_mxcsr_travels_through_xsave_and_reaches_the_guest():
    with TinyVm(vcpus=2) as t:
        fresh, changed = t.vcpus
        # A new vCPU's MXCSR is the reset value 0x1F80: pyvmm's VM relies on it (vm.py).
        assert fresh.get_mxcsr() == 0x1F80
        assert _guest_mxcsr(t, fresh) == 0x1F80
        changed.set_mxcsr(0x1F80 | 0x6000)  # round toward zero
        assert changed.get_mxcsr() == 0x7F80
        assert _guest_mxcsr(t, changed) == 0x7F80


def test_msrs_round_trip_and_refused_msr_named():
    with TinyVm() as t:
        vcpu = t.vcpus[0]
        values = {0x174: 0x10, 0xC000_0082: 0xFFFF_FFFF_8100_0000, 0xC000_0102: 0x1234_5000}  # SYSENTER_CS, LSTAR, KERNEL_GS_BASE
        vcpu.set_msrs(values)
        assert vcpu.get_msrs(values) == values
        with pytest.raises(KvmError, match="MSR 0xdead0000"):
            vcpu.set_msrs([(0x174, 0x8), (0xDEAD_0000, 1)])


def _comparable(entries):
    """CPUID entries minus what KVM itself rewrites: leaf 0xD EBX (indices 0 and 1) is the XSAVE
    area size for the vCPU's current XCR0/XSS, recomputed on every update (kvm_amd on 6.12 gave
    576 for a supported 2696); kvm_pvm substitutes its own leaves 1, 7 and 0xD (platform.md)."""
    out = []
    for e in entries:
        if ON_KVM_PVM and e.function in (1, 7, 0xD):
            continue
        out.append(e._replace(ebx=0) if e.function == 0xD and e.index in (0, 1) else e)
    return out


def test_cpuid_set_from_tuples_and_get_back():
    with TinyVm() as t:
        vcpu = t.vcpus[0]
        supported = t.kvm.get_supported_cpuid()
        vcpu.set_cpuid([tuple(e) for e in supported])
        got = vcpu.get_cpuid()
        assert [(e.function, e.index) for e in got] == [(e.function, e.index) for e in supported]
        assert _comparable(got) == _comparable(supported)
        leaf0 = next(e for e in got if e.function == 0)
        assert leaf0.eax >= 1 and leaf0.ebx != 0  # max basic leaf and vendor string


def test_get_cpuid_counts_only_entries_the_kernel_wrote(monkeypatch):
    """Linux 6.1's KVM_GET_CPUID2 fills the entries but leaves ``nent`` at the buffer's size
    (seen on kvm_amd under Debian 6.1): pyvmm must not return the untouched slots too."""
    import pyvmm.kvm.vcpu_fd as vcpu_fd_module
    from pyvmm.kvm import ioctls

    real_ioctl = vcpu_fd_module.ioctl

    def ioctl_of_linux_6_1(fd, request, arg=0, detail=""):
        capacity = getattr(arg, "nent", None)
        result = real_ioctl(fd, request, arg, detail)
        if request == ioctls.KVM_GET_CPUID2:
            arg.nent = capacity  # the count is not written back on success
        return result

    with TinyVm() as t:
        vcpu = t.vcpus[0]
        supported = t.kvm.get_supported_cpuid()
        vcpu.set_cpuid(supported)
        monkeypatch.setattr(vcpu_fd_module, "ioctl", ioctl_of_linux_6_1)
        got = vcpu.get_cpuid(max_entries=len(supported) + 40)
        assert len(got) == len(supported)
        assert [(e.function, e.index) for e in got] == [(e.function, e.index) for e in supported]


def test_lapic_and_mp_state_with_irqchip():
    with TinyVm(irqchip=True, vcpus=2) as t:
        for vcpu in t.vcpus:
            lapic = vcpu.get_lapic()
            assert lapic.get_reg(0x20) >> 24 == vcpu.id  # APIC ID
        assert t.vcpus[0].get_mp_state() == MpState.RUNNABLE
        assert t.vcpus[1].get_mp_state() == MpState.UNINITIALIZED
        lapic: kvm_lapic_state = t.vcpus[0].get_lapic()
        lapic.set_reg(0x80, 0x20)  # TPR
        t.vcpus[0].set_lapic(lapic)
        assert t.vcpus[0].get_lapic().get_reg(0x80) == 0x20


def test_guest_debug_single_step_exits_with_debug():
    with TinyVm() as t:
        vcpu = t.vcpus[0]
        if not t.kvm.check_extension(Cap.SET_GUEST_DEBUG):
            pytest.skip("KVM_CAP_SET_GUEST_DEBUG absent")
        from pyvmm.kvm.constants import KVM_GUESTDBG_ENABLE, KVM_GUESTDBG_SINGLESTEP

        t.load(CODE, bytes.fromhex("90 90 f4"))
        t.real_mode(vcpu)
        vcpu.set_guest_debug(KVM_GUESTDBG_ENABLE | KVM_GUESTDBG_SINGLESTEP)
        _, last = t.run_until_stop(vcpu)
        vcpu.set_guest_debug(0)
        assert last.reason in (ExitReason.DEBUG, ExitReason.HLT), last.describe()
        if last.reason == ExitReason.HLT:
            pytest.xfail("this KVM ignored single-step (seen on kvm_pvm)")
        assert last.debug_pc in (CODE, CODE + 1)
