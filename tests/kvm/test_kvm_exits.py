"""Exits by reason, decoded by VcpuFd.exit(): PIO, MMIO, HLT, memory slots, triple fault, emulation failure."""

from __future__ import annotations

import numpy as np
import pytest

from pyvmm.kvm import Cap, ExitReason, InternalError
from pyvmm.kvm.constants import KVM_MEM_READONLY
from tinyguest import CODE, MMIO_BASE, Recorder, TinyVm, kvm_test, u16, u32, u64

pytestmark = kvm_test


def test_pio_out_and_in_with_data_real_mode():
    with TinyVm() as t:
        dev = Recorder(replies={1: b"\x77", 2: bytes.fromhex("3412"), 3: bytes.fromhex("78563412")})
        t.pio.insert(dev, 0x10, 8)
        t.load(CODE, bytes.fromhex(
            "b042"        # mov al, 0x42
            "e610"        # out 0x10, al
            "e411"        # in al, 0x11
            "e610"        # out 0x10, al          (echo the byte read)
            "ba1200"      # mov dx, 0x12
            "ed"          # in ax, dx
            "ef"          # out dx, ax            (16-bit echo)
            "ba1300"      # mov dx, 0x13
            "66ed"        # in eax, dx
            "66ef"        # out dx, eax           (32-bit echo)
            "f4"))        # hlt
        t.real_mode(t.vcpus[0])
        exits, last = t.run_until_stop(t.vcpus[0])
        assert last.reason == ExitReason.HLT
        assert [(e.port, e.size, e.is_write, e.data) for e in exits] == [
            (0x10, 1, True, b"\x42"), (0x11, 1, False, b""), (0x10, 1, True, b"\x77"),
            (0x12, 2, False, b""), (0x12, 2, True, bytes.fromhex("3412")),
            (0x13, 4, False, b""), (0x13, 4, True, bytes.fromhex("78563412")),
        ]
        assert dev.reads == [(1, 1), (2, 2), (3, 4)]


def test_mmio_read_write_with_data_long_mode():
    with TinyVm() as t:
        dev = Recorder(replies={0x10: u64(0x1122334455667788)})
        t.mmio.insert(dev, MMIO_BASE, 0x1000)
        t.load(CODE, bytes.fromhex("b0a5") +                     # mov al, 0xa5
               bytes.fromhex("a2") + u64(MMIO_BASE) +            # mov [MMIO_BASE], al
               bytes.fromhex("66b8efbe") +                       # mov ax, 0xbeef
               bytes.fromhex("66a3") + u64(MMIO_BASE + 2) +      # mov [MMIO_BASE+2], ax
               bytes.fromhex("48a1") + u64(MMIO_BASE + 0x10) +   # mov rax, [MMIO_BASE+0x10]
               bytes.fromhex("48a3") + u64(MMIO_BASE + 8) +      # mov [MMIO_BASE+8], rax
               bytes.fromhex("f4"))                              # hlt
        t.long_mode(t.vcpus[0])
        exits, last = t.run_until_stop(t.vcpus[0])
        assert last.reason == ExitReason.HLT
        assert [(e.addr, e.size, e.is_write, e.data) for e in exits] == [
            (MMIO_BASE, 1, True, b"\xa5"), (MMIO_BASE + 2, 2, True, u16(0xBEEF)),
            (MMIO_BASE + 0x10, 8, False, b""), (MMIO_BASE + 8, 8, True, u64(0x1122334455667788)),
        ]
        assert t.vcpus[0].get_regs().rax == 0x1122334455667788


def test_hlt_without_irqchip_exits_with_rip_after_hlt():
    with TinyVm() as t:
        t.load(CODE, bytes.fromhex("90 90 f4"))  # nop; nop; hlt
        t.real_mode(t.vcpus[0])
        exits, last = t.run_until_stop(t.vcpus[0])
        assert exits == [] and last.reason == ExitReason.HLT
        assert t.vcpus[0].get_regs().rip == CODE + 3


def test_memory_slot_shared_both_ways():
    """The guest's stores appear in the host's numpy view; the host's stores are what the guest loads."""
    with TinyVm() as t:
        dev = Recorder()
        t.pio.insert(dev, 0x10, 1)
        t.memory.write_u8(0x4000, 0x5A)
        t.load(CODE, bytes.fromhex(
            "bf0020"    # mov di, 0x2000
            "b90001"    # mov cx, 256
            "31c0"      # xor ax, ax
            "aa"        # stosb              (es:di = al; di++)
            "fec0"      # inc al
            "e2fb"      # loop stosb
            "a00040"    # mov al, [0x4000]
            "e610"      # out 0x10, al
            "f4"))      # hlt
        t.real_mode(t.vcpus[0])
        _, last = t.run_until_stop(t.vcpus[0])
        assert last.reason == ExitReason.HLT
        view = t.memory.view(0x2000, 256)
        assert np.array_equal(view, np.arange(256, dtype=np.uint8))
        assert dev.values() == [0x5A]


def test_second_slot_and_readonly_slot():
    """A second slot maps more host memory; writes to a KVM_MEM_READONLY slot exit as MMIO."""
    with TinyVm() as t:
        if not t.kvm.check_extension(Cap.READONLY_MEM):
            pytest.skip("KVM_CAP_READONLY_MEM absent")
        from pyvmm.memory import MemoryRegion

        extra = MemoryRegion.create(0x2000_0000, 0x10000)
        rom = MemoryRegion.create(0x2010_0000, 0x1000)
        try:
            extra.array[:4] = [1, 2, 3, 4]
            rom.array[:4] = [9, 9, 9, 9]
            t.vm.set_user_memory_region(1, extra.guest_addr, extra.size, extra.host_addr)
            t.vm.set_user_memory_region(2, rom.guest_addr, rom.size, rom.host_addr, flags=KVM_MEM_READONLY)
            dev = Recorder()
            t.mmio.insert(dev, rom.guest_addr, rom.size)
            t.load(CODE, bytes.fromhex("a1") + u64(extra.guest_addr) +          # mov eax, [extra]
                   bytes.fromhex("ffc0") +                                     # inc eax
                   bytes.fromhex("a3") + u64(extra.guest_addr + 4) +           # mov [extra+4], eax
                   bytes.fromhex("a1") + u64(rom.guest_addr) +                 # mov eax, [rom]
                   bytes.fromhex("a3") + u64(rom.guest_addr) +                 # mov [rom], eax (-> MMIO exit)
                   bytes.fromhex("f4"))
            t.long_mode(t.vcpus[0])
            exits, last = t.run_until_stop(t.vcpus[0])
            assert last.reason == ExitReason.HLT
            assert bytes(extra.array[4:8]) == u32(0x04030201 + 1)
            assert [(e.addr, e.is_write, e.data) for e in exits] == [(rom.guest_addr, True, bytes([9, 9, 9, 9]))]
            assert bytes(rom.array[:4]) == bytes([9, 9, 9, 9])
        finally:
            t.vm.set_user_memory_region(1, extra.guest_addr, 0, extra.host_addr)
            t.vm.set_user_memory_region(2, rom.guest_addr, 0, rom.host_addr, flags=KVM_MEM_READONLY)
            extra.close()
            rom.close()


def test_triple_fault_is_shutdown_exit():
    """#GP with an empty IDT escalates to a triple fault: KVM_EXIT_SHUTDOWN."""
    with TinyVm() as t:
        t.load(CODE, bytes.fromhex("48a1") + u64(0x8000_0000_0000_0000))  # mov rax, [non-canonical]
        vcpu = t.vcpus[0]
        t.long_mode(vcpu)
        sregs = vcpu.get_sregs()
        sregs.idt.base, sregs.idt.limit = 0, 0
        vcpu.set_sregs(sregs)
        _, last = t.run_until_stop(vcpu)
        assert last.reason == ExitReason.SHUTDOWN, last.describe()


def test_emulation_failure_reports_rip_and_bytes():
    """On kvm_pvm guest kernel code is emulated and x87 ``fnclex`` is not: KVM_EXIT_INTERNAL_ERROR."""
    with TinyVm() as t:
        t.load(CODE, bytes.fromhex("90 db e2 f4"))  # nop; fnclex; hlt
        vcpu = t.vcpus[0]
        t.long_mode(vcpu)
        _, last = t.run_until_stop(vcpu)
        if last.reason == ExitReason.HLT:
            pytest.skip("this KVM executes fnclex without the emulator (hardware virtualization)")
        assert last.reason == ExitReason.INTERNAL_ERROR, last.describe()
        assert last.suberror == InternalError.EMULATION
        assert vcpu.get_regs().rip == CODE + 1
        if last.insn_bytes:
            assert last.insn_bytes[:2] == b"\xdb\xe2"
        assert "INTERNAL_ERROR suberror EMULATION" in last.describe()
