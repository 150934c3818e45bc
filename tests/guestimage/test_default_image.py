"""The built default guest: what is in it, and that it boots to /init under QEMU (TCG).

These build the image on first use (several minutes) and then use the cache.
"""

import json
import subprocess

import pytest

from pyvmm.cpio import CpioEntry, build_cpio, read_cpio
from pyvmm.guestimage import build_default_guest, ensure_qemu
from pyvmm.guestimage.apt import AptError

pytestmark = pytest.mark.guest
BOOT_TIMEOUT = 120


@pytest.fixture(scope="module")
def image():
    try:
        return build_default_guest(progress=None)
    except AptError as exc:
        pytest.skip(f"Debian packages cannot be downloaded here: {exc}")


@pytest.fixture(scope="module")
def entries(image):
    return {"/" + e.path: e for e in read_cpio(image.initramfs.read_bytes())}


def test_kernel_files_exist(image):
    assert image.vmlinux.read_bytes()[:4] == b"\x7fELF"
    assert image.bzimage.stat().st_size > 0
    assert image.kernel_version.startswith("6.12")
    config = image.kernel_config.read_text()
    assert "CONFIG_SND_VIRTIO=y" in config and "CONFIG_PVH=y" in config


def test_init_is_the_recipe_script(image, entries):
    init = entries["/init"]
    assert init.is_file and init.mode & 0o111
    assert init.data.startswith(b"#!/bin/sh\n")
    assert b'echo "pyvmm-init: start"' in init.data
    assert entries["/dev/console"].rdev_major == 5 and entries["/dev/console"].rdev_minor == 1


def resolve(entries, path, depth=0):
    """Follow symlinks inside the archive, as the guest's VFS would."""
    import posixpath
    assert depth < 10, f"symlink loop at {path}"
    parts = path.strip("/").split("/")
    for i in range(1, len(parts) + 1):
        prefix = "/" + "/".join(parts[:i])
        entry = entries.get(prefix)
        assert entry is not None, f"{path}: {prefix} missing from the initramfs"
        if entry.is_symlink:
            target = posixpath.normpath(posixpath.join(posixpath.dirname(prefix), entry.symlink_target))
            return resolve(entries, target + "/" + "/".join(parts[i:]) if i < len(parts) else target,
                           depth + 1)
    return entries[path.rstrip("/") or "/"]


@pytest.mark.parametrize("program", ["/bin/sh", "/usr/bin/aplay", "/usr/bin/arecord", "/usr/bin/amixer",
                                     "/usr/bin/speaker-test", "/bin/mount"])
def test_programs_resolve_to_files(entries, program):
    assert resolve(entries, program).is_file


@pytest.mark.parametrize("library", ["libasound.so.2", "libc.so.6", "libm.so.6"])
def test_aplay_libraries_and_loader_are_present(entries, library):
    assert resolve(entries, f"/usr/lib/x86_64-linux-gnu/{library}").is_file
    assert resolve(entries, "/lib64/ld-linux-x86-64.so.2").is_file


def test_alsa_configuration_is_present(entries):
    for path in ("/usr/share/alsa/alsa.conf", "/usr/share/alsa/cards/aliases.conf",
                 "/usr/share/alsa/pcm/default.conf"):
        assert entries[path].is_file, path


def test_no_documentation_or_locales(entries):
    assert not [p for p in entries if p.startswith(("/usr/share/doc", "/usr/share/man", "/usr/share/locale"))]


def test_contents_manifest_matches_the_archive(image, entries):
    manifest = json.loads((image.initramfs.parent / "contents.json").read_text())
    assert manifest["size"] == image.initramfs.stat().st_size
    assert {p for p, e in entries.items() if e.is_file} == set(manifest["files"])


def test_second_build_is_a_cache_hit(image):
    lines = []
    again = build_default_guest(progress=lines.append)
    assert again == image
    assert not [line for line in lines if "building" in line or "assembling" in line]


@pytest.mark.qemu
def test_boots_to_init_and_reports_the_command_status(image, tmp_path):
    """/etc/pyvmm/cmd runs, and its status reaches the debug-exit port (QEMU: status*2+1)."""
    qemu = ensure_qemu(progress=None)
    command = build_cpio([CpioEntry.file("etc/pyvmm/cmd",
                                         b"echo cmd-ran; aplay -l 2>&1; cat /proc/mounts; echo words: $(echo a b c | wc -w); exit 7\n")])
    initrd = tmp_path / "initrd.cpio"
    initrd.write_bytes(image.initramfs.read_bytes() + command)
    result = subprocess.run(
        [*qemu, "-M", "microvm,acpi=off", "-accel", "tcg", "-m", "256", "-nographic", "-no-reboot",
         "-device", "isa-debug-exit,iobase=0x501,iosize=1",
         "-kernel", str(image.vmlinux), "-initrd", str(initrd), "-append", image.cmdline],
        stdin=subprocess.DEVNULL, capture_output=True, timeout=BOOT_TIMEOUT)
    output = result.stdout.decode(errors="replace")
    assert output.index("pyvmm-init: start") < output.index("cmd-ran"), output
    assert "no soundcards found" in output
    for mount in ("proc /proc", "sysfs /sys", "devtmpfs /dev", "tmpfs /tmp", "tmpfs /run"):
        assert mount in output, output
    assert "words: 3" in output, "busybox applets run without links once /proc is mounted"
    assert result.returncode == 7 * 2 + 1, output


@pytest.mark.qemu
def test_session_mode_runs_typed_commands_without_echo(image):
    """``pyvmm.session``: ready line, no echo of typed input, `exit N` ends the VM with N."""
    import selectors
    import time

    qemu = ensure_qemu(progress=None)
    proc = subprocess.Popen(
        [*qemu, "-M", "microvm,acpi=off", "-accel", "tcg", "-m", "256", "-nographic", "-no-reboot",
         "-device", "isa-debug-exit,iobase=0x501,iosize=1", "-kernel", str(image.vmlinux),
         "-initrd", str(image.initramfs), "-append", image.cmdline + " pyvmm.session"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    output = b""

    def read_until(marker: bytes, timeout: float) -> None:
        nonlocal output
        deadline = time.monotonic() + timeout
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ)
            while marker not in output:
                assert time.monotonic() < deadline, f"no {marker!r} in:\n{output.decode(errors='replace')}"
                if sel.select(1.0):
                    chunk = proc.stdout.read1(4096)
                    assert chunk, f"QEMU exited before {marker!r}:\n{output.decode(errors='replace')}"
                    output += chunk

    try:
        read_until(b"pyvmm-init: session-ready", BOOT_TIMEOUT)
        proc.stdin.write(b"echo $((6 * 7))-answer\n")
        proc.stdin.flush()
        read_until(b"42-answer", 30)
        proc.stdin.write(b"exit 3\n")
        proc.stdin.flush()
        assert proc.wait(30) == 3 * 2 + 1
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    ready_at = output.index(b"pyvmm-init: session-ready")
    assert b"$((6 * 7))" not in output[ready_at:], "typed input was echoed"


def test_known_test_audio_is_present(entries):
    from pyvmm.guestimage.testaudio import ramp_wav
    assert entries["/usr/share/pyvmm/ramp-s16le-48000-2ch.wav"].data == ramp_wav(48000, 2, 4800)
