"""The guest kernel built by ``pyvmm.guestimage`` (when it is in the cache) loads, and has a PVH entry."""

import os
from pathlib import Path

import pytest

from pyvmm.arch.x86_64 import layout
from pyvmm.arch.x86_64.boot import load_kernel, setup_boot
from pyvmm.arch.x86_64.bzimage import parse_setup_header
from pyvmm.memory import GuestMemory

CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "pyvmm" / "kernel"


def newest(name: str) -> Path:
    found = sorted(CACHE.glob(f"*/{name}"), key=lambda p: p.stat().st_mtime)
    if not found:
        pytest.skip(f"no built guest kernel {name} under {CACHE} (build the guest image first)")
    return found[-1]


@pytest.fixture
def big_memory():
    memory = GuestMemory.create(layout.ram_layout(256 * layout.MiB))
    yield memory
    memory.close()


def test_vmlinux_has_pvh_entry_and_boots_structures(big_memory):
    kernel = load_kernel(big_memory, newest("vmlinux"))
    assert kernel.format == "elf" and kernel.pvh_entry is not None
    assert kernel.start <= kernel.pvh_entry < kernel.end
    state = setup_boot(big_memory, kernel, "console=ttyS0", b"x" * 4096, ncpus=1)
    assert state.rip == kernel.pvh_entry


def test_bzimage_header(big_memory):
    data = newest("bzImage").read_bytes()
    header = parse_setup_header(data)
    assert header.version >= 0x020C and header.xloadflags & 1
    kernel = load_kernel(big_memory, newest("bzImage"))
    assert kernel.entry64 == kernel.start + 0x200
