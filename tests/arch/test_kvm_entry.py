"""The boot state and tables run on real KVM: a few instructions at each entry point read
back what the boot loader wrote and report it through a port write."""

import os
import struct

import pytest

from pyvmm.arch.x86_64 import lapic, msr
from pyvmm.arch.x86_64.boot import load_kernel, setup_boot
from pyvmm.arch.x86_64.cpuid import CPU_MODELS, vcpu_cpuid
from pyvmm.arch.x86_64.elf import XEN_ELFNOTE_PHYS32_ENTRY

from arch_images import KERNEL_PADDR, build_elf, elf_note

pytestmark = [
    pytest.mark.kvm,
    pytest.mark.skipif(not os.path.exists("/dev/kvm"), reason="/dev/kvm is absent: KVM tests need it"),
]

REPORT_PORT = 0x501
PVH_ENTRY = KERNEL_PADDR + 0x100
# 32-bit: mov eax, [ebx] (start_info magic); mov dx, 0x501; out dx, eax; hlt
PVH_CODE = bytes([0x8B, 0x03, 0x66, 0xBA, 0x01, 0x05, 0xEF, 0xF4])
# 64-bit: mov eax, [rsi + 0x202] ("HdrS"); mov dx, 0x501; out dx, eax; hlt
LONG_CODE = bytes([0x8B, 0x86, 0x02, 0x02, 0x00, 0x00, 0x66, 0xBA, 0x01, 0x05, 0xEF, 0xF4])


@pytest.fixture
def kernel_file(tmp_path):
    text = bytearray(0x1000)
    text[:len(LONG_CODE)] = LONG_CODE
    text[0x100:0x100 + len(PVH_CODE)] = PVH_CODE
    notes = elf_note(b"Xen\0", XEN_ELFNOTE_PHYS32_ENTRY, struct.pack("<I", PVH_ENTRY))
    path = tmp_path / "vmlinux"
    path.write_bytes(build_elf([(KERNEL_PADDR, bytes(text), 0x1000)], notes=notes))
    return path


def run_to_port(memory, state, ncpus=1):
    from pyvmm.kvm.constants import ExitReason
    from pyvmm.kvm.system import Kvm

    with Kvm() as kvm:
        vm = kvm.create_vm()
        for slot, region in enumerate(memory.regions):
            vm.set_user_memory_region(slot, region.guest_addr, region.size, region.host_addr)
        vm.create_irqchip()
        vcpu = vm.create_vcpu(0)
        vcpu.set_cpuid(vcpu_cpuid(kvm.get_supported_cpuid(), 0, ncpus, CPU_MODELS["safe"]))
        vcpu.set_msrs(msr.supported_only(msr.boot_msrs(), kvm.get_msr_index_list()))
        apic = vcpu.get_lapic()
        regs = bytearray(apic.regs)
        lapic.set_virtual_wire(regs)
        apic.regs[:] = regs
        vcpu.set_lapic(apic)
        vcpu.set_sregs(state)
        vcpu.set_regs(state)
        try:
            reason = vcpu.run()
            exit_ = vcpu.exit()
            assert reason == ExitReason.IO, exit_.describe()
            assert exit_.port == REPORT_PORT and exit_.is_write and exit_.size == 4
            return int.from_bytes(exit_.data, "little")
        finally:
            vcpu.close()
            vm.close()


def test_pvh_entry_runs(memory, kernel_file):
    state = setup_boot(memory, load_kernel(memory, kernel_file), "console=ttyS0", None, ncpus=1, protocol="pvh")
    assert run_to_port(memory, state) == 0x336EC578


def test_long_mode_entry_runs(memory, kernel_file):
    state = setup_boot(memory, load_kernel(memory, kernel_file), "console=ttyS0", None, ncpus=1,
                       protocol="linux64")
    assert run_to_port(memory, state) == 0x53726448


def test_boot_msrs_accepted_and_read_back():
    from pyvmm.kvm.system import Kvm

    with Kvm() as kvm:
        wanted = msr.supported_only(msr.boot_msrs(), kvm.get_msr_index_list())
        assert (msr.MSR_MTRR_DEF_TYPE, msr.MTRR_ENABLE | msr.MTRR_TYPE_WRITE_BACK) in wanted
        vm = kvm.create_vm()
        vcpu = vm.create_vcpu(0)
        try:
            vcpu.set_msrs(wanted)
            assert vcpu.get_msrs([index for index, _ in wanted]) == dict(wanted)
        finally:
            vcpu.close()
            vm.close()
