"""Boot the cached guest vmlinux on KVM with only this package's boot layout and a bare
serial-output loop: PVH with 2 vCPUs and the 64-bit protocol, each with a tiny initramfs
whose /init exits 0. Isolates the boot layout from the rest of the VMM when a boot fails."""

import os
import re
import signal
import struct
import threading
import time
from pathlib import Path

import pytest

from pyvmm.arch.x86_64 import lapic, layout, msr
from pyvmm.arch.x86_64.boot import load_kernel, setup_boot
from pyvmm.arch.x86_64.cpuid import CPU_MODELS, vcpu_cpuid
from pyvmm.memory import GuestMemory

pytestmark = [
    pytest.mark.kvm, pytest.mark.guest,
    pytest.mark.skipif(not os.path.exists("/dev/kvm"), reason="/dev/kvm is absent: KVM tests need it"),
]

CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "pyvmm" / "kernel"
CMDLINE = "console=ttyS0 noxsave clearcpuid=smap,smep,popcnt rodata=off tsc=reliable no_timer_check reboot=k panic=-1"
COM1 = 0x3F8
BOOT_SECONDS = 200
INIT_EXIT = re.compile(rb"exitcode=0x[0-9a-f]{8}")


def exit0_elf() -> bytes:
    """A static x86-64 program doing exit(0)."""
    code = b"\xb8\x3c\x00\x00\x00\x31\xff\x0f\x05"        # mov eax, 60; xor edi, edi; syscall
    base, offset = 0x400000, 64 + 56
    size = offset + len(code)
    header = struct.pack("<16sHHIQQQIHHHHHH", b"\x7fELF\x02\x01\x01" + bytes(9), 2, 62, 1, base + offset,
                         64, 0, 0, 64, 56, 1, 64, 0, 0)
    return header + struct.pack("<IIQQQQQQ", 1, 5, 0, base, base, size, size, 0x1000) + code


def newc(name: str, mode: int, data: bytes, ino: int) -> bytes:
    raw_name = name.encode() + b"\0"
    fields = (ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(raw_name), 0)
    out = b"070701" + b"".join(b"%08X" % v for v in fields) + raw_name
    out += bytes(-len(out) % 4)
    return out + data + bytes(-len(data) % 4)


def initramfs() -> bytes:
    return newc("init", 0o100755, exit0_elf(), 1) + newc("TRAILER!!!", 0, b"", 0)


def boot(vmlinux: Path, protocol: str, ncpus: int) -> str:
    from pyvmm.kvm.constants import ExitReason
    from pyvmm.kvm.system import Kvm

    memory = GuestMemory.create(layout.ram_layout(128 * layout.MiB))
    console = bytearray()
    done = threading.Event()
    lock = threading.Lock()

    def run(vcpu):
        while not done.is_set():
            reason = vcpu.run()
            exit_ = vcpu.exit()
            if reason == ExitReason.IO:
                if exit_.is_write and exit_.port == COM1:
                    with lock:
                        console.extend(exit_.data[:1])
                        if INIT_EXIT.search(console):
                            done.set()
                elif not exit_.is_write:    # 0x60: transmitter empty, at the line status register
                    vcpu.complete_io_in(bytes([0x60 if exit_.port == COM1 + 5 else 0xFF]) * exit_.size)
            elif reason == ExitReason.MMIO:
                if not exit_.is_write:
                    vcpu.complete_mmio_read(bytes(exit_.size))
            elif reason != ExitReason.INTR:
                with lock:
                    console.extend(f"\n[vcpu {vcpu.id}: {exit_.describe()}]\n".encode())
                done.set()

    previous = signal.signal(signal.SIGUSR1, lambda *_: None)
    try:
        with Kvm() as kvm:
            vm = kvm.create_vm()
            vm.set_tss_addr(0xFFFB_D000)
            for slot, region in enumerate(memory.regions):
                vm.set_user_memory_region(slot, region.guest_addr, region.size, region.host_addr)
            vm.create_irqchip()
            vm.create_pit2()
            kernel = load_kernel(memory, vmlinux)
            state = setup_boot(memory, kernel, CMDLINE, initramfs(), ncpus, protocol)
            vcpus = []
            for index in range(ncpus):
                vcpu = vm.create_vcpu(index)
                vcpu.set_cpuid(vcpu_cpuid(kvm.get_supported_cpuid(), index, ncpus, CPU_MODELS["safe"]))
                vcpu.set_msrs(msr.supported_only(msr.boot_msrs(), kvm.get_msr_index_list()))
                apic = vcpu.get_lapic()
                regs = bytearray(apic.regs)
                lapic.set_virtual_wire(regs)
                apic.regs[:] = regs
                vcpu.set_lapic(apic)
                if index == 0:
                    vcpu.set_sregs(state)
                    vcpu.set_regs(state)
                vcpus.append(vcpu)
            threads = [threading.Thread(target=run, args=(v,), daemon=True) for v in vcpus]
            for thread in threads:
                thread.start()
            done.wait(BOOT_SECONDS)
            done.set()
            for vcpu, thread in zip(vcpus, threads):
                while thread.is_alive():
                    vcpu.immediate_exit = True
                    signal.pthread_kill(thread.ident, signal.SIGUSR1)
                    thread.join(0.2)
                vcpu.close()
            vm.close()
    finally:
        signal.signal(signal.SIGUSR1, previous)
        memory.close()
    return console.decode(errors="replace")


@pytest.mark.timeout(BOOT_SECONDS + 60)
@pytest.mark.parametrize("protocol, ncpus", [("pvh", 2), ("linux64", 1)])
def test_guest_kernel_reaches_user_space(protocol, ncpus):
    found = sorted(CACHE.glob("*/vmlinux"), key=lambda p: p.stat().st_mtime)
    if not found:
        pytest.skip(f"no built guest kernel under {CACHE} (build the guest image first)")
    started = time.monotonic()
    console = boot(found[-1], protocol, ncpus)
    print(f"{protocol}, {ncpus} vCPU(s): {time.monotonic() - started:.1f} s to init's exit")
    assert "BIOS-e820: [mem 0x0000000000100000-0x0000000007ffffff] usable" in console, console
    assert f"Processors: {ncpus}" in console, console
    assert f"Brought up 1 node, {ncpus} CPU" in console, console
    assert "Unpacking initramfs" in console and "Run /init as init process" in console, console
    assert "Attempted to kill init! exitcode=0x00000000" in console, console
