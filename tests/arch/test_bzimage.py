import pytest

from pyvmm.arch.x86_64.bzimage import ENTRY_64_OFFSET, load_bzimage, parse_setup_header
from pyvmm.errors import VmmError

from arch_images import KERNEL_PADDR, build_bzimage

PAYLOAD = b"\x90" * 0x200 + b"startup_64" + bytes(1000)


def test_parses_setup_header():
    hdr = parse_setup_header(build_bzimage(PAYLOAD, setup_sects=3, version=0x020F))
    assert hdr.setup_sects == 3
    assert hdr.version == 0x020F
    assert hdr.pref_address == KERNEL_PADDR
    assert hdr.cmdline_size == 2047
    assert hdr.xloadflags & 1


@pytest.mark.parametrize("setup_sects", [1, 4, 17])
def test_loads_protected_mode_part_at_pref_address(memory, setup_sects):
    image = load_bzimage(memory, build_bzimage(PAYLOAD, setup_sects=setup_sects))
    assert image.load_addr == KERNEL_PADDR
    assert image.entry == KERNEL_PADDR + ENTRY_64_OFFSET
    assert memory.read(image.entry, 10) == b"startup_64"
    assert image.end == KERNEL_PADDR + 0x20_0000     # init_size claims more than the payload


def test_zero_setup_sects_means_four(memory):
    data = bytearray(build_bzimage(PAYLOAD, setup_sects=4))
    data[0x1F1] = 0
    image = load_bzimage(memory, bytes(data))
    assert memory.read(image.entry, 10) == b"startup_64"


def test_low_pref_address_falls_back_to_1mib(memory):
    image = load_bzimage(memory, build_bzimage(PAYLOAD, pref_address=0))
    assert image.load_addr == 0x100000


@pytest.mark.parametrize("kwargs, message", [
    (dict(magic=b"XXXX"), "no HdrS"),
    (dict(version=0x0206), "too old"),
    (dict(xloadflags=0), "XLF_KERNEL_64"),
])
def test_rejects_unbootable_images(memory, kwargs, message):
    with pytest.raises(VmmError, match=message):
        load_bzimage(memory, build_bzimage(PAYLOAD, **kwargs))


def test_rejects_tiny_file(memory):
    with pytest.raises(VmmError, match="too small"):
        load_bzimage(memory, b"\0" * 100)


def test_rejects_kernel_larger_than_ram(memory):
    with pytest.raises(VmmError, match="more memory"):
        load_bzimage(memory, build_bzimage(PAYLOAD, init_size=64 * 2**20))


def test_header_shorter_than_struct_reads_as_zero():
    data = bytearray(build_bzimage(PAYLOAD))
    data[0x201] = 0x36          # header ends at 0x238: cmdline_size and later are code
    hdr = parse_setup_header(bytes(data))
    assert hdr.xloadflags & 1 and hdr.cmdline_size == 0 and hdr.pref_address == 0
