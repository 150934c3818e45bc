"""Does a kernel image understand ACPI? Decides ``--acpi auto``.

A kernel with ACPI finds virtio-mmio devices in the DSDT; one without needs them on the
command line (``virtio_mmio.device=``). Giving both to a kernel that has ACPI *and*
``CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES`` would register each device twice, so the answer
matters. Evidence, first found wins:

1. an ELF ``vmlinux`` with a symbol table: ACPI iff it defines ``acpi_boot_table_init``
   (arch/x86/kernel/acpi/boot.c, only built with ``CONFIG_ACPI``);
2. the kernel's build configuration next to it: ``config-RELEASE`` beside ``vmlinuz-RELEASE``
   (Debian's /boot, and :mod:`pyvmm.guestimage.stock_kernel`'s cache), ``config`` beside it
   (the default guest's cache entry), ``.config`` of the build tree the image is in
   (``vmlinux`` at the top, ``arch/x86/boot/bzImage``), or ``build/.config`` of ``--modules``;
3. nothing found: unknown (``None``); the VMM then describes devices both ways.
"""

from __future__ import annotations

import logging
import struct
from pathlib import Path

log = logging.getLogger(__name__)

ACPI_SYMBOL = b"acpi_boot_table_init"
SHT_SYMTAB = 2
_EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
_SHDR = struct.Struct("<IIQQQQIIQQ")
MAX_SECTIONS = 1 << 16


def _elf_symbol_defined(path: Path, symbol: bytes) -> bool | None:
    """True/False if the ELF at ``path`` has a symbol table; None if it is stripped or not ELF."""
    try:
        with open(path, "rb") as f:
            ehdr = f.read(_EHDR.size)
            if len(ehdr) < _EHDR.size or ehdr[:4] != b"\x7fELF" or ehdr[4] != 2:
                return None
            fields = _EHDR.unpack(ehdr)
            shoff, shentsize, shnum = fields[6], fields[11], fields[12]
            if not shoff or shentsize != _SHDR.size or not 0 < shnum <= MAX_SECTIONS:
                return None
            f.seek(shoff)
            table = f.read(shentsize * shnum)
            sections = [_SHDR.unpack_from(table, i * shentsize) for i in range(len(table) // shentsize)]
            for sh in sections:
                if sh[1] != SHT_SYMTAB or sh[6] >= len(sections):
                    continue
                strtab = sections[sh[6]]
                f.seek(strtab[4])
                names = f.read(strtab[5])
                return b"\0" + symbol + b"\0" in names
    except OSError:
        return None
    return None


def _config_says(path: Path) -> bool | None:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return None
    if "CONFIG_X86_64=y" not in text and "CONFIG_64BIT=y" not in text:
        return None                      # not a kernel config
    return "\nCONFIG_ACPI=y" in "\n" + text


def config_candidates(kernel: Path, modules: Path | None = None) -> list[Path]:
    """Where a build configuration for ``kernel`` may be, most specific first."""
    kernel = Path(kernel)
    found = []
    for prefix in ("vmlinuz-", "vmlinux-", "bzImage-"):
        if kernel.name.startswith(prefix):
            found.append(kernel.with_name("config-" + kernel.name[len(prefix):]))
    found.append(kernel.with_name("config"))
    found.append(kernel.with_name(".config"))
    if kernel.name == "bzImage" and len(kernel.parents) > 4 and kernel.parent.name == "boot":
        found.append(kernel.parents[3] / ".config")             # TREE/arch/x86/boot/bzImage
    if modules is not None:
        found.append(Path(modules) / "build" / ".config")
        found.append(Path(modules) / "config")
    return found


def kernel_has_acpi(kernel: Path, modules: Path | None = None) -> bool | None:
    """Whether ``kernel`` was built with ``CONFIG_ACPI``; None when nothing tells."""
    answer = _elf_symbol_defined(Path(kernel), ACPI_SYMBOL)
    if answer is not None:
        log.debug("acpi probe: %s's symbol table says ACPI=%s", kernel, answer)
        return answer
    for candidate in config_candidates(kernel, modules):
        answer = _config_says(candidate)
        if answer is not None:
            log.debug("acpi probe: %s says ACPI=%s", candidate, answer)
            return answer
    return None
