"""The ACPI power-off register, the RSDP hand-over in both boot protocols, and ``--acpi auto``."""

from __future__ import annotations

import logging
import struct

import pytest

from pyvmm.arch.x86_64 import acpi, layout
from pyvmm.arch.x86_64.acpi_probe import kernel_has_acpi
from pyvmm.arch.x86_64.boot import load_kernel, setup_boot
from pyvmm.arch.x86_64.bootparams import BootParams
from pyvmm.arch.x86_64.elf import XEN_ELFNOTE_PHYS32_ENTRY
from pyvmm.arch.x86_64.pvh import HvmStartInfo
from pyvmm import guest_log
from pyvmm.legacy.acpi_sleep import AcpiSleepRegisters
from pyvmm.memory import GuestMemory


# -- the sleep registers ------------------------------------------------------------------

def test_s5_write_powers_off_and_nothing_else_does(caplog):
    guest_log.reset()
    calls = []
    regs = AcpiSleepRegisters(on_poweroff=lambda: calls.append(1))
    regs.write(1, b"\x80")                    # Linux first clears WAK_STS in the status register
    regs.write(0, bytes([5 << 2]))            # SLP_TYP without SLP_EN
    assert calls == []
    with caplog.at_level(logging.WARNING):
        for _ in range(50):                   # S3 (not offered): ignored, the guest-error limiter's burst
            regs.write(0, bytes([0x20 | 3 << 2]))
    assert calls == [] and len(caplog.records) == guest_log.GuestErrorLog.burst
    regs.write(0, b"")
    regs.write(0, bytes([0x20 | acpi.S5_SLEEP_TYPE << 2]))   # what acpi_hw_extended_sleep writes
    assert calls == [1]
    assert regs.read(0, 1) == b"\0" and regs.read(1, 1) == b"\0"


# -- RSDP hand-over ------------------------------------------------------------------------

@pytest.fixture
def memory():
    mem = GuestMemory.create(layout.ram_layout(64 * layout.MiB))
    yield mem
    mem.close()


def _tables():
    return acpi.build_tables(acpi.Platform(ncpus=1, virtio_mmio=(acpi.MmioWindow(*layout.virtio_mmio_slot(0)),)))


def _vmlinux(tmp_path, pvh=True):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parents[1] / "arch"))
    from arch_images import KERNEL_PADDR, build_elf, elf_note

    notes = elf_note(b"Xen\0", XEN_ELFNOTE_PHYS32_ENTRY, struct.pack("<I", KERNEL_PADDR)) if pvh else b""
    path = tmp_path / "vmlinux"
    path.write_bytes(build_elf([(KERNEL_PADDR, b"\xf4" * 4096, 0x40_0000)], notes=notes))
    return path


@pytest.mark.parametrize("protocol", ["pvh", "linux64"])
def test_tables_written_and_rsdp_passed(memory, tmp_path, protocol):
    tables = _tables()
    kernel = load_kernel(memory, _vmlinux(tmp_path))
    setup_boot(memory, kernel, "console=ttyS0", None, 1, protocol, acpi=tables)
    assert memory.read(layout.ACPI_START, len(tables.blob)) == tables.blob
    assert memory.read(layout.ACPI_START, 8) == b"RSD PTR "
    if protocol == "pvh":
        assert memory.read_struct(layout.PVH_START_INFO, HvmStartInfo).rsdp_paddr == layout.ACPI_START
    else:
        assert memory.read_struct(layout.ZERO_PAGE_START, BootParams).acpi_rsdp_addr == layout.ACPI_START


def test_without_tables_no_rsdp(memory, tmp_path):
    kernel = load_kernel(memory, _vmlinux(tmp_path))
    setup_boot(memory, kernel, "console=ttyS0", None, 1, "pvh")
    assert memory.read_struct(layout.PVH_START_INFO, HvmStartInfo).rsdp_paddr == 0
    assert memory.read(layout.ACPI_START, 8) == bytes(8)


# -- --acpi auto -----------------------------------------------------------------------------

def _elf_with_symbols(path, names):
    """A minimal ELF64 with a .symtab/.strtab pair naming ``names`` (what the probe reads)."""
    strtab = b"\0" + b"".join(n + b"\0" for n in names)
    shstr = b"\0.symtab\0.strtab\0"
    ehdr_size, shdr_size = 64, 64
    strtab_off = ehdr_size
    shdr_off = strtab_off + len(strtab) + len(shstr)
    shdrs = [bytes(shdr_size),
             struct.pack("<IIQQQQIIQQ", 1, 2, 0, 0, strtab_off, 0, 2, 0, 8, 24),            # .symtab -> link 2
             struct.pack("<IIQQQQIIQQ", 9, 3, 0, 0, strtab_off, len(strtab), 0, 0, 1, 0)]   # .strtab
    ehdr = struct.pack("<16sHHIQQQIHHHHHH", b"\x7fELF\x02\x01\x01" + bytes(9), 2, 62, 1, 0, 0, shdr_off, 0,
                       ehdr_size, 56, 0, shdr_size, len(shdrs), 0)
    path.write_bytes(ehdr + strtab + shstr + b"".join(shdrs))
    return path


def test_probe_reads_the_symbol_table(tmp_path):
    assert kernel_has_acpi(_elf_with_symbols(tmp_path / "a", [b"start_kernel", b"acpi_boot_table_init"])) is True
    assert kernel_has_acpi(_elf_with_symbols(tmp_path / "b", [b"start_kernel", b"acpi_boot_table_init_x"])) is False


def test_probe_reads_a_config_beside_the_image(tmp_path):
    boot = tmp_path / "boot"
    boot.mkdir()
    kernel = boot / "vmlinuz-6.12.0-1-amd64"
    kernel.write_bytes(b"MZ not an ELF")
    assert kernel_has_acpi(kernel) is None
    (boot / "config-6.12.0-1-amd64").write_text("CONFIG_64BIT=y\nCONFIG_ACPI=y\n")
    assert kernel_has_acpi(kernel) is True
    (boot / "config-6.12.0-1-amd64").write_text("CONFIG_64BIT=y\n# CONFIG_ACPI is not set\n")
    assert kernel_has_acpi(kernel) is False
    tree = tmp_path / "linux"
    (tree / "arch/x86/boot").mkdir(parents=True)
    (tree / "arch/x86/boot/bzImage").write_bytes(b"x")
    (tree / ".config").write_text("CONFIG_X86_64=y\nCONFIG_ACPI=y\n")
    assert kernel_has_acpi(tree / "arch/x86/boot/bzImage") is True


def test_probe_on_the_default_guest():
    """The default guest is built without ACPI, so --acpi auto keeps it exactly as before."""
    from pyvmm.guestimage.cache import cache_root

    images = sorted(cache_root().glob("kernel/default-*/vmlinux"))
    if not images:
        pytest.skip("the default guest is not built yet (./scripts/setup)")
    for vmlinux in images:
        assert kernel_has_acpi(vmlinux) is False
        assert kernel_has_acpi(vmlinux.with_name("bzImage")) is False
