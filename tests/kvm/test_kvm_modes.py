"""CPU modes: 64-bit long mode entered through KVM_SET_SREGS, and real -> protected -> long in guest code."""

from __future__ import annotations

from pyvmm.kvm import ExitReason
from tinyguest import (
    CODE, DATA, EFER_LMA, GDT_PTR, PML4, SEL_CODE32, SEL_CODE64, Recorder, TinyVm, kvm_test, u16, u32, u64,
)

pytestmark = kvm_test

PM32, LM64 = CODE + 0x100, CODE + 0x200


def test_long_mode_via_sregs():
    with TinyVm() as t:
        dev = Recorder()
        t.pio.insert(dev, 0x10, 1)
        t.load(CODE, bytes.fromhex("48b8") + u64(0x1122_3344_5566_7788) +  # mov rax, imm64
               bytes.fromhex("48a3") + u64(DATA) +                          # mov [DATA], rax
               bytes.fromhex("48c1e820") +                                  # shr rax, 32
               bytes.fromhex("e610") +                                      # out 0x10, al
               bytes.fromhex("f4"))                                         # hlt
        vcpu = t.vcpus[0]
        t.long_mode(vcpu)
        _, last = t.run_until_stop(vcpu)
        assert last.reason == ExitReason.HLT
        assert t.memory.read_u64(DATA) == 0x1122_3344_5566_7788
        assert dev.values() == [0x44]
        sregs = vcpu.get_sregs()
        assert sregs.efer & EFER_LMA and sregs.cs.l == 1


def test_real_to_protected_to_long_mode_in_guest_code():
    with TinyVm() as t:
        dev = Recorder()
        t.pio.insert(dev, 0x10, 1)
        real = bytes.fromhex(
            "fa"            # cli
            "b001 e610"     # mov al, 1; out 0x10, al
            "660f0116") + u16(GDT_PTR) + bytes.fromhex(  # lgdt [GDT_PTR] (32-bit base)
            "0f20c0"        # mov eax, cr0
            "6683c801"      # or eax, 1 (PE)
            "0f22c0"        # mov cr0, eax
            "66ea") + u32(PM32) + u16(SEL_CODE32)        # jmp dword SEL_CODE32:PM32
        pm32 = bytes.fromhex(
            "b810000000"    # mov eax, 0x10
            "8ed8 8ec0 8ed0"  # mov ds/es/ss, ax
            "b002 e610"     # mov al, 2; out 0x10, al
            "0f20e0 83c820 0f22e0"  # cr4 |= PAE
            "b8") + u32(PML4) + bytes.fromhex(
            "0f22d8"        # mov cr3, eax
            "b9800000c0 0f32 0d00010000 0f30"  # EFER.LME = 1 (rdmsr/or/wrmsr on 0xc0000080)
            "0f20c0 0d00000080 0f22c0"        # cr0 |= PG  -> long mode active (compatibility)
            "ea") + u32(LM64) + u16(SEL_CODE64)          # jmp SEL_CODE64:LM64
        lm64 = bytes.fromhex("b003 e610") + bytes.fromhex("48b8") + u64(0xCAFE_F00D_DEAD_BEEF) + \
            bytes.fromhex("48a3") + u64(DATA) + bytes.fromhex("f4")
        t.load(CODE, real)
        t.load(PM32, pm32)
        t.load(LM64, lm64)
        vcpu = t.vcpus[0]
        t.real_mode(vcpu)
        _, last = t.run_until_stop(vcpu)
        assert dev.values() == [1, 2, 3], last.describe()
        assert last.reason == ExitReason.HLT
        assert t.memory.read_u64(DATA) == 0xCAFE_F00D_DEAD_BEEF
        sregs = vcpu.get_sregs()
        assert sregs.efer & EFER_LMA and sregs.cs.l == 1 and sregs.cs.selector == SEL_CODE64
