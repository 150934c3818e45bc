"""x86-64 registers as gdb sees them: the target description and the mapping to KVM state.

The order of :data:`REGISTERS` is the register numbering of ``g``/``G``/``p``/``P`` and of
the target description we send (``qXfer:features:read:target.xml``): gdb's
``org.gnu.gdb.i386.core`` and ``.sse`` features (the names and order gdb's amd64 support
expects), ``.segments`` (``fs_base``, ``gs_base``) and our own ``org.pyvmm.x86.sys`` with the
control registers and EFER that a kernel debugger wants to see. Values come from
``KVM_GET_REGS`` / ``KVM_GET_SREGS`` / ``KVM_GET_FPU`` of a stopped vCPU; writes go back
through the matching ``KVM_SET_*`` on the next :meth:`RegisterFile.store`.
"""

from __future__ import annotations

from dataclasses import dataclass

from pyvmm.kvm.structs import kvm_fpu, kvm_regs, kvm_sregs


@dataclass(frozen=True)
class Register:
    name: str
    bits: int
    type: str
    feature: str
    group: str | None = None


_GPRS = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp",
         "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15")
SEGMENTS = ("cs", "ss", "ds", "es", "fs", "gs")
_X87_CONTROL = ("fctrl", "fstat", "ftag", "fiseg", "fioff", "foseg", "fooff", "fop")
_CONTROL_REGS = ("cr0", "cr2", "cr3", "cr4", "cr8", "efer")

CORE, SSE, SEGS, SYS = ("org.gnu.gdb.i386.core", "org.gnu.gdb.i386.sse",
                        "org.gnu.gdb.i386.segments", "org.pyvmm.x86.sys")


def _register_list() -> tuple[Register, ...]:
    regs = [Register(n, 64, "data_ptr" if n in ("rbp", "rsp") else "int64", CORE) for n in _GPRS]
    regs.append(Register("rip", 64, "code_ptr", CORE))
    regs.append(Register("eflags", 32, "i386_eflags", CORE))
    regs += [Register(n, 32, "int32", CORE) for n in SEGMENTS]
    regs += [Register(f"st{i}", 80, "i387_ext", CORE) for i in range(8)]
    regs += [Register(n, 32, "int", CORE, "float") for n in _X87_CONTROL]
    regs += [Register(f"xmm{i}", 128, "vec128", SSE) for i in range(16)]
    regs.append(Register("mxcsr", 32, "i386_mxcsr", SSE, "vector"))
    regs += [Register(n, 64, "int64", SEGS) for n in ("fs_base", "gs_base")]
    regs += [Register(n, 64, "int64", SYS, "system") for n in _CONTROL_REGS]
    return tuple(regs)


REGISTERS = _register_list()
INDEX = {r.name: i for i, r in enumerate(REGISTERS)}
RIP = INDEX["rip"]

_FLAGS = {
    "i386_eflags": [("CF", 0), ("", 1), ("PF", 2), ("AF", 4), ("ZF", 6), ("SF", 7), ("TF", 8), ("IF", 9),
                    ("DF", 10), ("OF", 11), ("NT", 14), ("RF", 16), ("VM", 17), ("AC", 18), ("VIF", 19),
                    ("VIP", 20), ("ID", 21)],
    "i386_mxcsr": [("IE", 0), ("DE", 1), ("ZE", 2), ("OE", 3), ("UE", 4), ("PE", 5), ("DAZ", 6), ("IM", 7),
                   ("DM", 8), ("ZM", 9), ("OM", 10), ("UM", 11), ("PM", 12), ("FZ", 15)],
}

_VEC128 = """  <vector id="v4f" type="ieee_single" count="4"/>
  <vector id="v2d" type="ieee_double" count="2"/>
  <vector id="v16i8" type="int8" count="16"/>
  <vector id="v8i16" type="int16" count="8"/>
  <vector id="v4i32" type="int32" count="4"/>
  <vector id="v2i64" type="int64" count="2"/>
  <union id="vec128">
    <field name="v4_float" type="v4f"/>
    <field name="v2_double" type="v2d"/>
    <field name="v16_int8" type="v16i8"/>
    <field name="v8_int16" type="v8i16"/>
    <field name="v4_int32" type="v4i32"/>
    <field name="v2_int64" type="v2i64"/>
    <field name="uint128" type="uint128"/>
  </union>
"""


def target_xml() -> bytes:
    """The target description gdb reads with ``qXfer:features:read:target.xml``."""
    lines = ['<?xml version="1.0"?>', '<!DOCTYPE target SYSTEM "gdb-target.dtd">', "<target>",
             "  <architecture>i386:x86-64</architecture>"]
    feature = None
    for number, reg in enumerate(REGISTERS):
        if reg.feature != feature:
            if feature is not None:
                lines.append("</feature>")
            feature = reg.feature
            lines.append(f'<feature name="{feature}">')
            for type_id, fields in _FLAGS.items():
                if any(r.type == type_id and r.feature == feature for r in REGISTERS):
                    lines.append(f'  <flags id="{type_id}" size="4">')
                    lines += [f'    <field name="{name}" start="{bit}" end="{bit}"/>' for name, bit in fields]
                    lines.append("  </flags>")
            if feature == SSE:
                lines.append(_VEC128.rstrip("\n"))
        group = f' group="{reg.group}"' if reg.group else ""
        lines.append(f'  <reg name="{reg.name}" bitsize="{reg.bits}" type="{reg.type}" regnum="{number}"{group}/>')
    lines += ["</feature>", "</target>", ""]
    return "\n".join(lines).encode()


def _full_tag_word(ftwx: int, fsw: int, fpr) -> int:
    """FXSAVE's abridged tag byte -> the x87 16-bit tag word gdb shows (00 valid, 01 zero, 10 special, 11 empty)."""
    top = (fsw >> 11) & 7
    tag = 0
    for physical in range(8):
        if not ftwx & (1 << physical):
            value = 3
        else:
            raw = bytes(fpr[(physical - top) & 7])[:10]
            mantissa = int.from_bytes(raw[:8], "little")
            exponent = int.from_bytes(raw[8:10], "little") & 0x7FFF
            if exponent == 0x7FFF or (exponent == 0 and mantissa != 0) or (exponent and not mantissa >> 63):
                value = 2
            elif exponent == 0:
                value = 1
            else:
                value = 0
        tag |= value << (2 * physical)
    return tag


def _abridged_tag(full: int) -> int:
    return sum(1 << p for p in range(8) if (full >> (2 * p)) & 3 != 3)


class RegisterFile:
    """One vCPU's registers, loaded once per stop, written back only where changed."""

    def __init__(self, fd):
        self._fd = fd
        self.regs: kvm_regs = fd.get_regs()
        self.sregs: kvm_sregs = fd.get_sregs()
        self.fpu: kvm_fpu = fd.get_fpu()
        self._dirty: set[str] = set()

    # -- values -------------------------------------------------------------------------

    def value(self, number: int) -> int | bytes:
        name = REGISTERS[number].name
        if name in _GPRS or name == "rip":
            return getattr(self.regs, name)
        if name == "eflags":
            return self.regs.rflags & 0xFFFF_FFFF
        if name in SEGMENTS:
            return getattr(self.sregs, name).selector
        if name.startswith("st"):
            return bytes(self.fpu.fpr[int(name[2:])])[:10]
        fpu = self.fpu
        if name in _X87_CONTROL:
            return {"fctrl": fpu.fcw, "fstat": fpu.fsw, "ftag": _full_tag_word(fpu.ftwx, fpu.fsw, fpu.fpr),
                    "fiseg": (fpu.last_ip >> 32) & 0xFFFF, "fioff": fpu.last_ip & 0xFFFF_FFFF,
                    "foseg": (fpu.last_dp >> 32) & 0xFFFF, "fooff": fpu.last_dp & 0xFFFF_FFFF,
                    "fop": fpu.last_opcode & 0x7FF}[name]
        if name.startswith("xmm"):
            return bytes(fpu.xmm[int(name[3:])])
        if name == "mxcsr":
            return fpu.mxcsr
        if name in ("fs_base", "gs_base"):
            return getattr(self.sregs, name[:2]).base
        return getattr(self.sregs, name)  # control registers, efer

    def set_value(self, number: int, value: int | bytes) -> None:
        name = REGISTERS[number].name
        if isinstance(value, bytes):
            as_int = int.from_bytes(value, "little")
        else:
            as_int = value
        if name in _GPRS or name == "rip":
            setattr(self.regs, name, as_int)
            self._dirty.add("regs")
        elif name == "eflags":
            self.regs.rflags = (self.regs.rflags & ~0xFFFF_FFFF) | (as_int & 0xFFFF_FFFF)
            self._dirty.add("regs")
        elif name in SEGMENTS:
            getattr(self.sregs, name).selector = as_int & 0xFFFF
            self._dirty.add("sregs")
        elif name in ("fs_base", "gs_base"):
            getattr(self.sregs, name[:2]).base = as_int
            self._dirty.add("sregs")
        elif name in _CONTROL_REGS:
            setattr(self.sregs, name, as_int)
            self._dirty.add("sregs")
        else:
            self._set_fpu(name, as_int)
            self._dirty.add("fpu")

    def _set_fpu(self, name: str, value: int) -> None:
        fpu = self.fpu
        if name.startswith("st"):
            fpu.fpr[int(name[2:])][:10] = list(value.to_bytes(10, "little"))
        elif name.startswith("xmm"):
            fpu.xmm[int(name[3:])][:] = list(value.to_bytes(16, "little"))
        elif name == "mxcsr":
            fpu.mxcsr = value & 0xFFFF_FFFF
        elif name == "fctrl":
            fpu.fcw = value & 0xFFFF
        elif name == "fstat":
            fpu.fsw = value & 0xFFFF
        elif name == "ftag":
            fpu.ftwx = _abridged_tag(value)
        elif name == "fop":
            fpu.last_opcode = value & 0x7FF
        elif name in ("fioff", "fiseg"):
            shift, mask = (0, 0xFFFF_FFFF) if name == "fioff" else (32, 0xFFFF)
            fpu.last_ip = (fpu.last_ip & ~(mask << shift)) | ((value & mask) << shift)
        elif name in ("fooff", "foseg"):
            shift, mask = (0, 0xFFFF_FFFF) if name == "fooff" else (32, 0xFFFF)
            fpu.last_dp = (fpu.last_dp & ~(mask << shift)) | ((value & mask) << shift)

    # -- wire format ----------------------------------------------------------------------

    def read(self, number: int) -> bytes:
        """One register as gdb wants it: little-endian, ``bits / 8`` bytes."""
        size = REGISTERS[number].bits // 8
        value = self.value(number)
        if isinstance(value, bytes):
            return value[:size].ljust(size, b"\0")
        return (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little")

    def write(self, number: int, data: bytes) -> None:
        size = REGISTERS[number].bits // 8
        if len(data) != size:
            raise ValueError(f"register {REGISTERS[number].name} is {size} bytes, got {len(data)}")
        self.set_value(number, data)

    def read_all(self) -> bytes:
        return b"".join(self.read(n) for n in range(len(REGISTERS)))

    def write_all(self, data: bytes) -> None:
        """A ``G`` packet: all registers in order; a shorter block sets the leading ones only."""
        offset = 0
        for number, reg in enumerate(REGISTERS):
            size = reg.bits // 8
            if offset + size > len(data):
                break
            self.write(number, data[offset:offset + size])
            offset += size

    def store(self) -> None:
        """Write back what changed (KVM_SET_REGS/SREGS/FPU)."""
        if "regs" in self._dirty:
            self._fd.set_regs(self.regs)
        if "sregs" in self._dirty:
            self._fd.set_sregs(self.sregs)
        if "fpu" in self._dirty:
            self._fd.set_fpu(self.fpu)
        self._dirty.clear()


REGISTERS_SIZE = sum(r.bits // 8 for r in REGISTERS)
