"""The modules overlay: which modules, in which order, packed how."""

from __future__ import annotations

import logging
import lzma

import pytest

from pyvmm.cpio import read_cpio
from pyvmm.errors import VmmError
from pyvmm.guestimage import modules
from pyvmm.guestimage.cache import cache_root
from pyvmm.guestimage.stock_kernel import find_modules_dir, parse_spec

SND = modules.virtio_modalias(25, 0x554D4551)


@pytest.fixture
def moddir(tmp_path):
    """A /lib/modules/RELEASE as depmod leaves it for a Debian-like kernel."""
    root = tmp_path / "lib/modules/6.12.0-test-amd64"
    files = {
        "kernel/drivers/virtio/virtio_mmio.ko.xz": [],
        "kernel/sound/soundcore.ko.xz": [],
        "kernel/sound/core/snd.ko.xz": ["kernel/sound/soundcore.ko.xz"],
        "kernel/sound/core/snd-timer.ko.xz": ["kernel/sound/core/snd.ko.xz", "kernel/sound/soundcore.ko.xz"],
        "kernel/sound/core/snd-pcm.ko.xz": ["kernel/sound/core/snd-timer.ko.xz", "kernel/sound/core/snd.ko.xz",
                                            "kernel/sound/soundcore.ko.xz"],
        "kernel/sound/virtio/virtio_snd.ko.xz": ["kernel/sound/core/snd-pcm.ko.xz",
                                                 "kernel/sound/core/snd-timer.ko.xz",
                                                 "kernel/sound/core/snd.ko.xz", "kernel/sound/soundcore.ko.xz"],
        "kernel/drivers/net/dummy.ko": [],
    }
    for path in files:
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_bytes(lzma.compress(path.encode()) if path.endswith(".xz") else path.encode())
    (root / "modules.dep").write_text("".join(f"{p}: {' '.join(d)}\n" for p, d in files.items()))
    (root / "modules.alias").write_text(
        "# Aliases extracted from modules themselves.\n"
        "alias acpi*:LNRO0005:* virtio_mmio\n"
        "alias of:N*T*Cvirtio,mmio virtio_mmio\n"
        "alias virtio:d00000019v* virtio_snd\n"
        "alias virtio:d00000001v* virtio_net\n")
    (root / "modules.builtin").write_text("kernel/drivers/virtio/virtio.ko\nkernel/drivers/virtio/virtio_ring.ko\n")
    return root


def test_closure_loads_dependencies_first(moddir):
    overlay = modules.build_overlay(moddir, [modules.VIRTIO_MMIO_ACPI_MODALIAS, SND], [modules.VIRTIO_MMIO_MODULE])
    assert overlay.modules == ["virtio_mmio", "soundcore", "snd", "snd_timer", "snd_pcm", "virtio_snd"]
    entries = {e.path: e for e in read_cpio(overlay.cpio) if e.is_file}
    listing = entries["etc/pyvmm/modules"].data.decode().splitlines()
    assert listing == [f"/lib/modules/pyvmm/{n}" for n in ("virtio_mmio.ko.xz", "soundcore.ko.xz", "snd.ko.xz",
                                                            "snd-timer.ko.xz", "snd-pcm.ko.xz",
                                                            "virtio_snd.ko.xz")]
    # compressed modules go in as they are (busybox insmod reads .ko.xz)
    original = (moddir / "kernel/sound/virtio/virtio_snd.ko.xz").read_bytes()
    assert entries["lib/modules/pyvmm/virtio_snd.ko.xz"].data == original


def test_builtin_and_unknown_devices_need_nothing(moddir, caplog):
    caplog.set_level(logging.INFO)
    overlay = modules.build_overlay(moddir, [modules.virtio_modalias(4)], [])     # virtio-rng: no module here
    assert overlay.modules == []
    assert read_cpio(overlay.cpio)[-1].data == b""
    assert "virtio:d00000004" in caplog.text


def test_broken_index_is_a_one_line_error(moddir, tmp_path):
    with pytest.raises(VmmError, match="run depmod"):
        modules.ModuleIndex.load(tmp_path)
    (moddir / "modules.dep").write_text("kernel/a.ko: kernel/b.ko\nkernel/b.ko: kernel/a.ko\n")
    (moddir / "modules.alias").write_text("alias virtio:d00000019v* a\n")
    with pytest.raises(VmmError, match="cycle"):
        modules.build_overlay(moddir, [SND])
    (moddir / "modules.dep").write_text("kernel/a.ko: kernel/missing.ko\n")
    with pytest.raises(VmmError, match="missing"):
        modules.build_overlay(moddir, [SND])


def test_module_count_is_bounded(moddir):
    chain = [f"kernel/m{i}.ko" for i in range(modules.MAX_MODULES + 5)]
    (moddir / "modules.dep").write_text("".join(f"{p}: {' '.join(chain[i + 1:i + 2])}\n" for i, p in enumerate(chain)))
    (moddir / "modules.alias").write_text("alias virtio:d00000019v* m0\n")
    with pytest.raises(VmmError, match="more than"):
        modules.build_overlay(moddir, [SND])


def test_modules_found_beside_a_vmlinuz(moddir):
    root = moddir.parents[2]
    (root / "boot").mkdir()
    kernel = root / "boot/vmlinuz-6.12.0-test-amd64"
    kernel.write_bytes(b"x")
    assert find_modules_dir(kernel) == moddir
    assert find_modules_dir(root / "boot/vmlinux") is None
    (root / "boot/vmlinuz-6.1.0-other").write_bytes(b"x")
    assert find_modules_dir(root / "boot/vmlinuz-6.1.0-other") is None


@pytest.mark.parametrize("spec,suite", [("debian", "trixie"), ("debian:6.12", "trixie"), ("debian:6.1", "bookworm"),
                                        ("debian:bookworm-backports", "bookworm-backports")])
def test_fetch_spec(spec, suite):
    assert parse_spec(spec) == suite


@pytest.mark.parametrize("spec", ["ubuntu", "debian:5.10", "debian:sid", ":6.12"])
def test_bad_fetch_spec(spec):
    with pytest.raises(VmmError):
        parse_spec(spec)


def test_debian_kernel_closure_if_fetched():
    """With a fetched Debian kernel (pyvmm guest fetch-kernel), the real modules.dep/alias resolve."""
    found = sorted(cache_root().glob("stock-kernels/linux-image-6.12*/lib/modules/*/modules.dep"))
    if not found:
        pytest.skip("no Debian 6.12 kernel fetched (pyvmm guest fetch-kernel debian:6.12)")
    overlay = modules.build_overlay(found[-1].parent, [modules.VIRTIO_MMIO_ACPI_MODALIAS, SND],
                                    [modules.VIRTIO_MMIO_MODULE])
    assert overlay.modules[0] == "virtio_mmio" and overlay.modules[-1] == "virtio_snd"
    assert {"snd", "snd_pcm", "snd_timer"} <= set(overlay.modules)
