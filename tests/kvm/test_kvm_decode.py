"""Exit decoding and argument checks that need no /dev/kvm (a kvm_run page built in memory)."""

from __future__ import annotations

import ctypes

import pytest

from pyvmm.kvm import ExitReason, InternalError, SystemEvent
from pyvmm.kvm import structs as s
from pyvmm.kvm.constants import KVM_EXIT_IO_OUT, KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES
from pyvmm.kvm.exits import decode_exit
from pyvmm.kvm.ioctls import KVM_SET_USER_MEMORY_REGION, KvmError
from pyvmm.kvm.vm_fd import VmFd


def _page():
    buf = bytearray(4096)
    return s.kvm_run.from_buffer(buf), memoryview(buf)


def test_decode_io_out_with_string_count():
    run, page = _page()
    run.exit_reason = ExitReason.IO
    run.io.direction, run.io.size, run.io.port, run.io.count, run.io.data_offset = KVM_EXIT_IO_OUT, 2, 0x3F8, 3, 1024
    page[1024:1030] = b"aabbcc"
    e = decode_exit(run, page)
    assert (e.port, e.size, e.count, e.is_write, e.data) == (0x3F8, 2, 3, True, b"aabbcc")
    assert e.describe() == "IO port 0x3f8 size 2 x3 out 616162626363"


def test_decode_mmio_read_and_write():
    run, page = _page()
    run.exit_reason = ExitReason.MMIO
    run.mmio.phys_addr, run.mmio.len, run.mmio.is_write = 0xD000_0010, 4, 1
    ctypes.memmove(run.mmio.data, b"\x01\x02\x03\x04\xff\xff\xff\xff", 8)
    e = decode_exit(run, page)
    assert (e.addr, e.size, e.is_write, e.data) == (0xD000_0010, 4, True, b"\x01\x02\x03\x04")
    run.mmio.is_write = 0
    assert decode_exit(run, page).data == b"" and "read" in decode_exit(run, page).describe()


def test_decode_emulation_failure_with_instruction_bytes():
    run, page = _page()
    run.exit_reason = ExitReason.INTERNAL_ERROR
    f = run.emulation_failure
    f.suberror, f.ndata, f.flags, f.insn_size = InternalError.EMULATION, 3, KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES, 2
    ctypes.memmove(f.insn_bytes, b"\xdb\xe2", 2)
    e = decode_exit(run, page)
    assert e.insn_bytes == b"\xdb\xe2" and e.suberror == InternalError.EMULATION
    assert e.describe() == "INTERNAL_ERROR suberror EMULATION insn db e2"


def test_decode_internal_error_without_bytes_lists_data():
    run, page = _page()
    run.exit_reason = ExitReason.INTERNAL_ERROR
    run.internal.suberror, run.internal.ndata = InternalError.DELIVERY_EV, 2
    run.internal.data[0], run.internal.data[1] = 0x80000b0e, 0x1234
    e = decode_exit(run, page)
    assert e.internal_data == (0x80000B0E, 0x1234) and e.insn_bytes == b""
    assert e.describe() == "INTERNAL_ERROR suberror DELIVERY_EV data [0x80000b0e 0x1234]"


def test_decode_fail_entry_system_event_debug_and_unknown():
    run, page = _page()
    run.exit_reason = ExitReason.FAIL_ENTRY
    run.fail_entry.hardware_entry_failure_reason, run.fail_entry.cpu = 0x21, 1
    assert decode_exit(run, page).describe() == "FAIL_ENTRY hardware reason 0x21 cpu 1"
    run.exit_reason = ExitReason.SYSTEM_EVENT
    run.system_event.type, run.system_event.ndata = SystemEvent.RESET, 1
    e = decode_exit(run, page)
    assert e.event_type == SystemEvent.RESET and e.describe() == "SYSTEM_EVENT RESET"
    run.exit_reason = ExitReason.DEBUG
    run.debug.exception, run.debug.pc = 1, 0x1002
    assert decode_exit(run, page).debug_pc == 0x1002
    run.exit_reason = 99
    assert decode_exit(run, page).describe() == "EXIT_99"


def test_kvm_error_message():
    err = KvmError(KVM_SET_USER_MEMORY_REGION, 22, "slot 0")
    assert str(err) == "KVM_SET_USER_MEMORY_REGION failed: EINVAL (Invalid argument): slot 0"
    assert err.errno == 22


@pytest.mark.parametrize("kwargs", [dict(length=3), dict(length=0, datamatch=1), dict(length=0, pio=True)])
def test_ioeventfd_argument_checks(kwargs):
    vm = VmFd(-1, kvm=None)
    with pytest.raises(ValueError):
        vm.ioeventfd(0, 0x1000, **kwargs)


def test_fill_copies_plain_values_into_nested_structs_and_arrays():
    from types import SimpleNamespace

    sregs = s.fill(s.kvm_sregs(), {"cs": SimpleNamespace(selector=8, l=1), "gdt": {"base": 0x500, "limit": 31},
                                  "efer": 0x500, "interrupt_bitmap": [1, 0, 0, 2]})
    assert (sregs.cs.selector, sregs.cs.l, sregs.cs.base) == (8, 1, 0)
    assert (sregs.gdt.base, sregs.gdt.limit, sregs.efer) == (0x500, 31, 0x500)
    assert list(sregs.interrupt_bitmap) == [1, 0, 0, 2]
    regs = s.fill(s.kvm_regs(rax=7), SimpleNamespace(rip=0x1000, unrelated=1))
    assert (regs.rax, regs.rip) == (7, 0x1000)
