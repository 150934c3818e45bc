"""MachineConfig: what the user asked for, validated once, before any KVM object exists."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from pyvmm.errors import VmmError

MiB = 1 << 20
GiB = 1 << 30

#: Guest RAM bounds: the kernel needs a few MiB; above 64 GiB the page tables we build do not reach.
MIN_MEM = 16 * MiB
MAX_MEM = 64 * GiB
MAX_VCPUS = 8

_SIZE_RE = re.compile(r"^\s*(\d+)\s*([KMGT]?)(i?B)?\s*$", re.IGNORECASE)
_UNITS = {"": MiB, "K": 1 << 10, "M": MiB, "G": GiB, "T": 1 << 40}


def parse_size(text: str) -> int:
    """Parse a memory size the way QEMU's ``-m`` does: a bare number is MiB, suffixes K/M/G/T."""
    match = _SIZE_RE.match(text)
    if not match:
        raise VmmError(f"bad memory size {text!r}: use a number with an optional K/M/G suffix, e.g. 256M or 1G")
    return int(match.group(1)) * _UNITS[match.group(2).upper()]


@dataclass(frozen=True)
class DeviceSpec:
    """One ``--device NAME,key=value,...`` option."""

    name: str
    options: dict[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> DeviceSpec:
        """Split QEMU-style ``name,key=value,flag``; ``,,`` stands for a literal comma."""
        parts, current, i = [], [], 0
        while i < len(text):
            if text[i] == ",":
                if text[i + 1:i + 2] == ",":
                    current.append(",")
                    i += 2
                    continue
                parts.append("".join(current))
                current = []
            else:
                current.append(text[i])
            i += 1
        parts.append("".join(current))
        name, *rest = parts
        if not name:
            raise VmmError(f"bad --device {text!r}: it must start with a device name")
        options: dict[str, str] = {}
        for item in rest:
            if not item:
                continue
            key, sep, value = item.partition("=")
            if key in options:
                raise VmmError(f"bad --device {text!r}: option {key!r} given twice")
            options[key] = value if sep else "on"
        return cls(name, options)


_ON = {"on": True, "yes": True, "true": True, "off": False, "no": False, "false": False}


@dataclass(frozen=True)
class QmpSpec:
    """``--qmp unix:PATH[,server[=on|off]][,wait=on|off][,nowait]`` in QEMU's chardev syntax.

    pyvmm always listens (there is no client mode), so ``server`` may be left out. As in QEMU,
    ``server`` alone waits for the first client before the guest starts (``wait=on``); give
    ``wait=off`` (or ``nowait``) to start at once, which is also the default without ``server``.
    """

    path: str
    wait: bool = False

    @classmethod
    def parse(cls, text: str) -> QmpSpec:
        kind, _, rest = text.partition(":")
        if kind != "unix" or not rest:
            raise VmmError(f"bad --qmp {text!r}: use unix:PATH[,server,wait=off] (only unix sockets)")
        path, *options = rest.split(",")
        if not path:
            raise VmmError(f"bad --qmp {text!r}: the socket path is empty")
        server, wait = False, None
        for option in options:
            key, eq, value = option.partition("=")
            flag = _ON.get(value.lower()) if eq else True
            if flag is None or key not in ("server", "wait", "nowait") or (key == "nowait" and eq):
                raise VmmError(f"bad --qmp option {option!r}: use server, wait=on|off or nowait")
            if key == "server":
                if not flag:
                    raise VmmError("--qmp server=off: pyvmm only serves QMP (it cannot connect to a client)")
                server = True
            elif key == "wait":
                wait = flag
            else:
                wait = False
        return cls(path, server if wait is None else wait)


@dataclass
class MachineConfig:
    kernel: Path
    cmdline: str
    initrds: list[Path] = field(default_factory=list)
    mem_size: int = 256 * MiB
    vcpus: int = 1
    cpu_model: str = "safe"
    devices: list[DeviceSpec] = field(default_factory=list)
    boot_protocol: str = "auto"
    serial_log: Path | None = None
    extra_initrd_data: list[bytes] = field(default_factory=list)
    """cpio archives made by the CLI itself (e.g. the command for ``pyvmm run -- CMD``)."""
    trace_devices: list[str] = field(default_factory=list)
    """``--trace-dev`` values (``snd``, ``snd0:ctl,io``): decoded device traces on stderr."""
    trace_file: Path | None = None
    """``--trace-file``: the same records as JSON lines (:mod:`pyvmm.trace.schema`)."""
    strict: bool = False
    """``--strict``: the first MUST violation of the spec by a driver stops the VM (:mod:`pyvmm.conformance`)."""
    acpi: str = "auto"
    """ACPI tables: on, off, or auto (on when the kernel has ACPI, see arch/x86_64/acpi_probe.py)."""
    modules: Path | None = None
    """A kernel's /lib/modules/RELEASE: the modules the devices need go into an initramfs overlay."""
    expect_exit_status: bool = False
    """``pyvmm run -- CMD``: the guest owes an exit status, so a reset or triple fault before it
    arrives is an error (status 1), not a reboot."""

    def validate(self) -> None:
        if not self.kernel.is_file():
            raise VmmError(f"kernel {self.kernel} does not exist or is not a file")
        if not os.access(self.kernel, os.R_OK):
            raise VmmError(f"kernel {self.kernel} is not readable")
        for initrd in self.initrds:
            if not initrd.is_file():
                raise VmmError(f"initrd {initrd} does not exist or is not a file")
        if not MIN_MEM <= self.mem_size <= MAX_MEM:
            raise VmmError(
                f"memory size {self.mem_size // MiB} MiB is out of range "
                f"({MIN_MEM // MiB} MiB to {MAX_MEM // GiB} GiB)"
            )
        if not 1 <= self.vcpus <= MAX_VCPUS:
            raise VmmError(f"--smp {self.vcpus} is out of range (1 to {MAX_VCPUS})")
        if self.boot_protocol not in ("auto", "pvh", "linux64"):
            raise VmmError(f"unknown boot protocol {self.boot_protocol!r} (auto, pvh, linux64)")
        if self.acpi not in ("auto", "on", "off"):
            raise VmmError(f"bad --acpi {self.acpi!r} (auto, on or off)")
        if self.modules is not None and not (self.modules / "modules.dep").is_file():
            raise VmmError(f"--modules {self.modules}: no modules.dep there (a kernel's /lib/modules/RELEASE,"
                           " after depmod)")
        from pyvmm.arch.x86_64.cpuid import parse_cpu_spec

        parse_cpu_spec(self.cpu_model)
        check_trace_options(self.trace_devices, self.trace_file)
        if len(self.cmdline.encode()) >= 2048:
            raise VmmError("kernel command line is longer than the 2047 bytes Linux accepts")


def check_trace_options(trace_devices: list[str], trace_file: Path | None) -> None:
    """``--trace-dev``/``--trace-file`` are one-line errors before the guest boots."""
    from pyvmm.trace import parse_trace_specs

    parse_trace_specs(trace_devices)
    if trace_file is not None:
        parent = Path(trace_file).parent
        if Path(trace_file).is_dir():
            raise VmmError(f"--trace-file {trace_file} is a directory")
        if not parent.is_dir() or not os.access(parent, os.W_OK):
            raise VmmError(f"--trace-file {trace_file}: directory {parent} does not exist or is not writable")
