"""pyvmm.vcpu.Vcpu: the threaded run loop, its dispatch, stop reasons, hooks and exit counts."""

from __future__ import annotations

import logging
import threading
import time

from pyvmm.kvm.constants import KVM_GUESTDBG_ENABLE, KVM_GUESTDBG_SINGLESTEP
from pyvmm.vcpu import StopKind, Vcpu
from tinyguest import CODE, MMIO_BASE, ON_KVM_AMD, Recorder, TinyVm, kvm_test, u64

pytestmark = kvm_test


def _pio_loop(count: int) -> bytes:
    return bytes.fromhex("b9") + count.to_bytes(2, "little") + bytes.fromhex(
        "e610"   # l: out 0x10, al
        "e2fc"   # loop l
        "f4")    # hlt


def test_dispatch_to_buses_counts_exits_and_stops_on_hlt():
    with TinyVm() as t:
        pio, mmio = Recorder(replies={0: b"\x5a"}), Recorder(replies={8: u64(0xAABB_CCDD)})
        t.pio.insert(pio, 0x10, 2)
        t.mmio.insert(mmio, MMIO_BASE, 0x100)
        t.load(CODE, bytes.fromhex("b9") + (100).to_bytes(4, "little") +   # mov ecx, 100
               bytes.fromhex("e610 e2fc") +                                # l: out 0x10, al; loop l
               bytes.fromhex("e411 e611") +                                # in al, 0x11; out 0x11, al
               bytes.fromhex("48a1") + u64(MMIO_BASE + 8) +                # mov rax, [MMIO_BASE+8]
               bytes.fromhex("48a3") + u64(MMIO_BASE + 0x10) +             # mov [MMIO_BASE+0x10], rax
               bytes.fromhex("f4"))
        t.long_mode(t.vcpus[0])
        stopped = []
        vcpu = Vcpu(t.vcpus[0], t.pio, t.mmio, memory=t.memory, on_stop=lambda v, s: stopped.append(s))
        vcpu.start()
        stop = vcpu.wait(timeout=20)
        vcpu.stop()
        assert stop is not None and stop.kind == StopKind.HALT, stop
        assert stopped == [stop]
        assert len(pio.values(0)) == 100 and pio.values(1) == [0]  # in from offset 1: no reply configured -> 0
        assert mmio.writes == [(0x10, u64(0xAABB_CCDD))]
        assert vcpu.exit_counts == {"IO": 102, "MMIO": 2, "HLT": 1}


def test_string_io_rep_outsb_and_insb():
    class Counter:
        def __init__(self):
            self.n, self.out = 0, []

        def read(self, offset, size):
            self.n += 1
            return bytes([self.n])

        def write(self, offset, data):
            self.out.append(data)

    with TinyVm() as t:
        dev = Counter()
        t.pio.insert(dev, 0x10, 1)
        t.memory.write(0x3000, b"WXYZ")
        t.load(CODE, bytes.fromhex(
            "be0030 b90400 ba1000 f36e"   # mov si, 0x3000; mov cx, 4; mov dx, 0x10; rep outsb
            "bf0031 b90500 f36c"          # mov di, 0x3100; mov cx, 5; rep insb
            "f4"))
        t.real_mode(t.vcpus[0])
        vcpu = Vcpu(t.vcpus[0], t.pio, t.mmio)
        vcpu.start()
        assert vcpu.wait(timeout=20).kind == StopKind.HALT
        assert b"".join(dev.out) == b"WXYZ"
        assert t.memory.read(0x3100, 5) == bytes([1, 2, 3, 4, 5])


def test_stop_from_another_thread_while_guest_spins():
    with TinyVm() as t:
        t.load(CODE, bytes.fromhex("ebfe"))  # jmp $
        t.long_mode(t.vcpus[0])
        vcpu = Vcpu(t.vcpus[0], t.pio, t.mmio)
        vcpu.start()
        spins, deadline = 0, time.monotonic() + 0.2
        while time.monotonic() < deadline:  # this thread runs: KVM_RUN released the GIL
            spins += 1
        assert spins > 0
        assert vcpu.running and vcpu.result is None
        stopper = threading.Thread(target=vcpu.request_stop)
        stopper.start()
        stopper.join()
        stop = vcpu.wait(timeout=10)
        assert stop is not None and stop.kind == StopKind.REQUESTED
        assert not vcpu.running or vcpu.stop() is stop
        assert t.vcpus[0].get_regs().rip == CODE
        # It can be started again: immediate_exit was cleared.
        vcpu.start()
        time.sleep(0.1)
        assert vcpu.running
        assert vcpu.stop().kind == StopKind.REQUESTED


def test_triple_fault_reports_shutdown_with_rip():
    with TinyVm() as t:
        t.load(CODE, bytes.fromhex("90 48a1") + u64(0x8000_0000_0000_0000))  # nop; mov rax, [non-canonical]
        t.long_mode(t.vcpus[0])
        sregs = t.vcpus[0].get_sregs()
        sregs.idt.limit = 0
        t.vcpus[0].set_sregs(sregs)
        vcpu = Vcpu(t.vcpus[0], t.pio, t.mmio, memory=t.memory)
        vcpu.start()
        stop = vcpu.wait(timeout=20)
        assert stop.kind == StopKind.SHUTDOWN, stop
        assert "triple fault" in stop.message
        if ON_KVM_AMD:
            # kvm_amd INITs the vCPU before KVM_RUN returns: the faulting RIP is gone, and
            # pyvmm says so instead of naming the reset vector 0xfff0.
            assert "RIP unknown" in stop.message and "0xfff0" in stop.message and stop.rip is None
        else:  # kvm_pvm and kvm_intel keep the state at the fault
            assert "RIP 0x1001" in stop.message and stop.rip == 0x1001
            assert stop.insn_bytes.startswith(bytes.fromhex("48a1"))


def test_emulation_failure_reports_rip_and_instruction_bytes(caplog):
    with TinyVm() as t:
        t.load(CODE, bytes.fromhex("90 90 db e2 f4"))  # nop; nop; fnclex; hlt
        t.long_mode(t.vcpus[0])
        vcpu = Vcpu(t.vcpus[0], t.pio, t.mmio, memory=t.memory)
        with caplog.at_level(logging.ERROR, logger="pyvmm.vcpu"):
            vcpu.start()
            stop = vcpu.wait(timeout=20)
        if stop.kind == StopKind.HALT:
            import pytest

            pytest.skip("this KVM executes fnclex without its emulator")
        assert stop.kind == StopKind.INTERNAL_ERROR and stop.is_error, stop
        assert stop.rip == CODE + 2
        assert stop.insn_bytes[:2] == b"\xdb\xe2"
        assert "RIP 0x1002" in stop.message and "db e2" in stop.message
        assert any("RIP 0x1002" in r.getMessage() for r in caplog.records)


def test_on_hlt_hook_can_continue():
    with TinyVm() as t:
        dev = Recorder()
        t.pio.insert(dev, 0x10, 1)
        t.load(CODE, bytes.fromhex("f4 b001 e610 f4"))  # hlt; out 0x10, 1; hlt
        t.real_mode(t.vcpus[0])
        halts = []

        def on_hlt(v: Vcpu) -> bool:
            halts.append(v.id)
            return len(halts) == 1

        vcpu = Vcpu(t.vcpus[0], t.pio, t.mmio, on_hlt=on_hlt)
        vcpu.start()
        stop = vcpu.wait(timeout=20)
        assert stop.kind == StopKind.HALT and halts == [0, 0] and dev.values() == [1]


def test_device_exception_stops_vm_with_error():
    class Broken:
        def read(self, offset, size):
            raise RuntimeError("device bug")

        def write(self, offset, data):
            raise RuntimeError("device bug")

    with TinyVm() as t:
        t.pio.insert(Broken(), 0x10, 1)
        t.load(CODE, bytes.fromhex("e610 f4"))
        t.real_mode(t.vcpus[0])
        vcpu = Vcpu(t.vcpus[0], t.pio, t.mmio)
        vcpu.start()
        stop = vcpu.wait(timeout=20)
        assert stop.kind == StopKind.ERROR and "device bug" in stop.message and stop.is_error


def test_short_device_read_is_padded():
    class Short:
        def read(self, offset, size):
            return b"\x11"

        def write(self, offset, data):
            pass

    with TinyVm() as t:
        t.pio.insert(Short(), 0x10, 4)
        t.load(CODE, bytes.fromhex("ba1000 66ed f4"))  # mov dx, 0x10; in eax, dx; hlt
        t.real_mode(t.vcpus[0])
        vcpu = Vcpu(t.vcpus[0], t.pio, t.mmio)
        vcpu.start()
        assert vcpu.wait(timeout=20).kind == StopKind.HALT
        assert t.vcpus[0].get_regs().rax & 0xFFFF_FFFF == 0xFFFF_FF11


def test_debug_hook_sees_single_steps():
    with TinyVm() as t:
        t.load(CODE, bytes.fromhex("90 90 90 f4"))
        t.real_mode(t.vcpus[0])
        t.vcpus[0].set_guest_debug(KVM_GUESTDBG_ENABLE | KVM_GUESTDBG_SINGLESTEP)
        steps = []
        vcpu = Vcpu(t.vcpus[0], t.pio, t.mmio, on_debug=lambda v, e: steps.append(e.debug_pc) or True)
        vcpu.start()
        stop = vcpu.wait(timeout=20)
        assert stop.kind == StopKind.HALT, stop
        assert steps[:3] == [CODE + 1, CODE + 2, CODE + 3] or steps[:3] == [CODE, CODE + 1, CODE + 2], steps


def test_trace_logging_of_exits(caplog):
    with TinyVm() as t:
        t.pio.insert(Recorder(), 0x10, 1)
        t.load(CODE, _pio_loop(3))
        t.real_mode(t.vcpus[0])
        vcpu = Vcpu(t.vcpus[0], t.pio, t.mmio)
        with caplog.at_level(5, logger="pyvmm.vcpu"):
            vcpu.start()
            vcpu.wait(timeout=20)
        lines = [r.getMessage() for r in caplog.records if r.levelno == 5]
        assert lines.count("vcpu0 exit IO port 0x10 size 1 out 00") == 3


def test_pio_exit_cost_figure(capsys):
    """Prints the cost of one PIO exit through the Python loop (a figure, not an assertion)."""
    count = 20000
    with TinyVm() as t:
        t.pio.insert(Recorder(), 0x10, 1)
        t.load(CODE, _pio_loop(count))
        t.real_mode(t.vcpus[0])
        vcpu = Vcpu(t.vcpus[0], t.pio, t.mmio)
        start = time.perf_counter()
        vcpu.start()
        stop = vcpu.wait(timeout=120)
        elapsed = time.perf_counter() - start
        assert stop.kind == StopKind.HALT and vcpu.exit_counts["IO"] == count
    with capsys.disabled():
        print(f"\n[bench] PIO exit through pyvmm.vcpu.Vcpu + Bus: {elapsed / count * 1e6:.1f} us/exit ({count} exits)")
