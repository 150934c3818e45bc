"""The ctypes mirrors must match the kernel headers byte for byte (checked with the host C compiler)."""

from __future__ import annotations

import ctypes
import shutil
import subprocess

import pytest

from pyvmm.kvm import ioctls as io
from pyvmm.kvm import structs as s

STRUCTS = [
    "kvm_run", "kvm_regs", "kvm_sregs", "kvm_segment", "kvm_dtable", "kvm_fpu", "kvm_msr_entry", "kvm_msrs",
    "kvm_msr_list", "kvm_cpuid_entry2", "kvm_cpuid2", "kvm_lapic_state", "kvm_pit_config",
    "kvm_userspace_memory_region", "kvm_irqfd", "kvm_ioeventfd", "kvm_irq_level", "kvm_guest_debug",
    "kvm_mp_state", "kvm_clock_data", "kvm_translation", "kvm_enable_cap", "kvm_vcpu_events",
]
OFFSETS = [
    ("kvm_run", "exit_reason"), ("kvm_run", "immediate_exit"), ("kvm_run", "kvm_valid_regs"),
    ("kvm_run", "io.port"), ("kvm_run", "io.data_offset"), ("kvm_run", "mmio.data"), ("kvm_run", "mmio.len"),
    ("kvm_run", "mmio.is_write"), ("kvm_run", "internal.data"), ("kvm_run", "emulation_failure.insn_bytes"),
    ("kvm_run", "fail_entry.cpu"), ("kvm_run", "system_event.data"), ("kvm_run", "debug.arch.dr7"),
    ("kvm_sregs", "gdt"), ("kvm_sregs", "efer"), ("kvm_sregs", "interrupt_bitmap"), ("kvm_fpu", "xmm"),
    ("kvm_fpu", "mxcsr"), ("kvm_ioeventfd", "flags"), ("kvm_vcpu_events", "exception_payload"),
    ("kvm_vcpu_events", "reserved"),
]
IOCTLS = [
    "KVM_GET_API_VERSION", "KVM_CREATE_VM", "KVM_GET_MSR_INDEX_LIST", "KVM_CHECK_EXTENSION",
    "KVM_GET_VCPU_MMAP_SIZE", "KVM_GET_SUPPORTED_CPUID", "KVM_CREATE_VCPU", "KVM_SET_USER_MEMORY_REGION",
    "KVM_SET_TSS_ADDR", "KVM_SET_IDENTITY_MAP_ADDR", "KVM_CREATE_IRQCHIP", "KVM_IRQ_LINE", "KVM_IRQFD",
    "KVM_CREATE_PIT2", "KVM_IOEVENTFD", "KVM_GET_CLOCK", "KVM_SET_CLOCK", "KVM_RUN", "KVM_GET_REGS",
    "KVM_SET_REGS", "KVM_GET_SREGS", "KVM_SET_SREGS", "KVM_TRANSLATE", "KVM_INTERRUPT", "KVM_GET_MSRS",
    "KVM_SET_MSRS", "KVM_GET_FPU", "KVM_SET_FPU", "KVM_GET_LAPIC", "KVM_SET_LAPIC", "KVM_SET_CPUID2",
    "KVM_GET_CPUID2", "KVM_GET_MP_STATE", "KVM_SET_MP_STATE", "KVM_NMI", "KVM_SET_GUEST_DEBUG",
    "KVM_GET_VCPU_EVENTS", "KVM_SET_VCPU_EVENTS", "KVM_ENABLE_CAP",
]

# Our names for a few fields differ from the C spelling (anonymous unions/structs in C).
_C_FIELD = {"debug.arch.dr7": "debug.arch.dr7", "system_event.data": "system_event.data"}
_PY_FIELD = {"debug.arch.dr7": "debug.dr7", "kvm_vcpu_events.reserved": "reserved"}


def _c_values(tmp_path) -> dict[str, int]:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler to read the kernel headers with")
    lines = ['#include <stdio.h>', '#include <stddef.h>', '#include <linux/kvm.h>', 'int main(void) {']
    for name in STRUCTS:
        lines.append(f'printf("sizeof {name} %zu\\n", sizeof(struct {name}));')
    for struct, field in OFFSETS:
        lines.append(f'printf("offsetof {struct}.{field} %zu\\n", offsetof(struct {struct}, {field}));')
    for name in IOCTLS:
        lines.append(f'printf("ioctl {name} %lu\\n", (unsigned long){name});')
    lines.append("return 0; }")
    src = tmp_path / "layout.c"
    src.write_text("\n".join(lines))
    exe = tmp_path / "layout"
    result = subprocess.run([cc, "-o", str(exe), str(src)], capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"kernel headers not usable: {result.stderr.strip()[:200]}")
    out = subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout
    return {key: int(value) for key, value in (line.rsplit(" ", 1) for line in out.splitlines())}


def _py_offset(struct_name: str, path: str) -> int:
    path = _PY_FIELD.get(path, path)
    cls = getattr(s, struct_name)
    offset = 0
    for part in path.split("."):
        field = getattr(cls, part)
        offset += field.offset
        cls = dict((n, t) for n, t, *_ in cls._fields_).get(part)
        if cls is None:  # anonymous union member of kvm_run
            cls = dict((n, t) for n, t, *_ in s.kvm_run_exit._fields_)[part]
    return offset


@pytest.fixture(scope="module")
def c_values(tmp_path_factory):
    return _c_values(tmp_path_factory.mktemp("layout"))


@pytest.mark.parametrize("name", STRUCTS)
def test_struct_size(c_values, name):
    assert ctypes.sizeof(getattr(s, name)) == c_values[f"sizeof {name}"]


@pytest.mark.parametrize("struct,field", OFFSETS)
def test_field_offset(c_values, struct, field):
    assert _py_offset(struct, field) == c_values[f"offsetof {struct}.{field}"]


@pytest.mark.parametrize("name", IOCTLS)
def test_ioctl_number(c_values, name):
    assert getattr(io, name) == c_values[f"ioctl {name}"]


def test_flexible_array_factories():
    assert ctypes.sizeof(s.cpuid2_with(3)) == 8 + 3 * 40
    assert ctypes.sizeof(s.msrs_with(2)) == 8 + 2 * 16
    assert ctypes.sizeof(s.msr_list_with(5)) == 4 + 5 * 4
