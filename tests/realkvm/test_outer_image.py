"""Host-side pieces of the real-KVM tier: modules for the outer initramfs, the command script."""

from __future__ import annotations

import gzip
import lzma
import shlex
import subprocess

import pytest

from pyvmm.errors import VmmError
from pyvmm.realkvm.image import command_script, decompressed


def test_modules_are_decompressed_for_the_outer_initramfs(tmp_path):
    elf = b"\x7fELF" + bytes(60)
    for name, data in (("a.ko", elf), ("b.ko.xz", lzma.compress(elf)), ("c.ko.gz", gzip.compress(elf))):
        (tmp_path / name).write_bytes(data)
        assert decompressed(tmp_path / name) == elf
    (tmp_path / "d.ko.zst").write_bytes(b"x")
    with pytest.raises(VmmError, match="d.ko.zst: only .ko, .ko.xz and .ko.gz"):
        decompressed(tmp_path / "d.ko.zst")


def test_command_script_keeps_cwd_argv_and_a_chosen_environment():
    script = command_script(["sh", "-c", "echo 'a b' $X"], "/work/my dir",
                            {"PATH": "/usr/bin", "SSH_AUTH_SOCK": "/tmp/agent", "PYVMM_X": "1", "HOME": "/root"},
                            {"PYVMM_REALKVM": "6.12"})
    assert "SSH_AUTH_SOCK" not in script
    assert shlex.split(script.splitlines()[-1])[1:] == ["sh", "-c", "echo 'a b' $X"]
    # A cwd that does not exist (here) ends the script with 125 before the command runs.
    assert subprocess.run(["sh", "-c", script], capture_output=True).returncode == 125
    here = command_script(["sh", "-c", 'printf "%s|" "$0" "$PWD" "$PYVMM_X" "$PYVMM_REALKVM"', "a b"], "/tmp",
                          {"PYVMM_X": "1"}, {"PYVMM_REALKVM": "6.12"})
    out = subprocess.run(["env", "-i", "/bin/sh", "-c", here], capture_output=True, text=True).stdout
    assert out == "a b|/tmp|1|6.12|"
