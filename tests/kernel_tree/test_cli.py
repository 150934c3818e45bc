"""Bad ``pyvmm kernel build`` / ``pyvmm run --kernel-tree`` input: one line, status 2, nothing built."""

from __future__ import annotations

import subprocess

import pytest

from vmm_cli import pyvmm_argv


@pytest.fixture
def fake_tree(tmp_path):
    """Enough of a Linux tree to pass the 'is it a tree' check, but never built."""
    tree = tmp_path / "linux"
    (tree / "arch/x86").mkdir(parents=True)
    (tree / "scripts/kconfig").mkdir(parents=True)
    for name in ("Makefile", "Kconfig", "arch/x86/Kconfig"):
        (tree / name).write_text("")
    return tree


@pytest.mark.parametrize("args,message", [
    (["kernel", "build", "--tree", "{tmp}"], "is not a Linux source tree"),
    (["run", "--kernel-tree", "{tmp}", "--", "true"], "is not a Linux source tree"),
    (["run", "--kernel-tree", "/nonexistent/linux"], "is not a directory"),
    (["run", "--kernel-tree", "{tree}", "--kernel", "/bin/true"], "excludes --kernel"),
    (["run", "--kernel-tree", "{tree}", "--cpu", "pentium"], "unknown CPU model"),
    (["kernel", "build", "--tree", "{tree}", "--config-from-tree"], "has no .config"),
    (["kernel", "build", "--tree", "{tree}", "--platform-patch", "maybe"], "maybe"),
    (["kernel", "build", "--tree", "{tree}", "--config", "/nonexistent.config"], "nonexistent.config"),
])
def test_bad_input_is_one_line(tmp_path, fake_tree, monkeypatch, args, message):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    args = [a.format(tmp=tmp_path, tree=fake_tree) for a in args]
    proc = subprocess.run(pyvmm_argv(*args), capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
    error_lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(error_lines) <= 3, proc.stderr  # click usage errors: usage + hint + the error
    assert not (tmp_path / "cache" / "pyvmm" / "trees").exists()


def test_in_tree_build_is_refused(tmp_path, fake_tree, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    (fake_tree / "include/config").mkdir(parents=True)
    proc = subprocess.run(pyvmm_argv("kernel", "build", "--tree", str(fake_tree)), capture_output=True,
                          text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert proc.returncode == 2 and "make mrproper" in proc.stderr and "Traceback" not in proc.stderr
