"""Bad input from the user is a one-line error and exit status 2, never a traceback."""

from __future__ import annotations

import subprocess

import pytest

from vmm_cli import pyvmm_argv


def _pyvmm(*args: str, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    import os

    env = dict(os.environ, **(env_extra or {}))
    return subprocess.run(pyvmm_argv(*args), capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL, env=env)


@pytest.fixture
def fake_kernel(tmp_path):
    path = tmp_path / "vmlinux"
    path.write_bytes(b"not a kernel at all")
    return str(path)


@pytest.mark.parametrize(
    "args,env,message",
    [
        (["run", "--kernel", "/nonexistent/vmlinux"], None, "does not exist"),
        (["run", "--kernel", "{kernel}"], None, "bzImage"),
        (["run", "--kernel", "{kernel}", "--initrd", "/nonexistent.cpio"], None, "initrd"),
        (["run", "--kernel", "{kernel}", "--mem", "1M"], None, "out of range"),
        (["run", "--kernel", "{kernel}", "--mem", "lots"], None, "bad memory size"),
        (["run", "--kernel", "{kernel}", "--smp", "99"], None, "99"),
        (["run", "--kernel", "{kernel}", "--device", "nosuch"], None, "unknown device 'nosuch'"),
        (["run", "--kernel", "{kernel}", "--device", "virtio-snd,channels=0"], None, "channel"),
        (["run", "--kernel", "{kernel}", "--device", "virtio-snd,backend=nosuch"], None, "nosuch"),
        (["run", "--kernel", "{kernel}", "--cpu", "pentium"], None, "unknown CPU model"),
        (["run", "--kernel", "{kernel}", "--cpu", "safe,-nosuchfeature"], None, "unknown CPU feature"),
        (["run", "--kernel", "{kernel}"], {"PYVMM_KVM_DEVICE": "/nonexistent/kvm"}, "KVM is not available"),
        (["vhost-user", "nosuch", "--socket", "/tmp/pyvmm-test.sock"], None, "unknown device"),
    ],
)
def test_one_line_error(fake_kernel, args, env, message):
    proc = _pyvmm(*[a.replace("{kernel}", fake_kernel) for a in args], env_extra=env)
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    error_lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert message in proc.stderr, proc.stderr
    assert len(error_lines) <= 3, proc.stderr  # click usage errors print usage + hint + the error


def test_device_help_lists_plugins():
    proc = _pyvmm("run", "--device", "help")
    assert proc.returncode == 0 and "virtio-snd" in proc.stdout, proc.stdout + proc.stderr


def test_device_option_help():
    proc = _pyvmm("run", "--device", "virtio-snd,help")
    assert proc.returncode == 0, proc.stderr
    assert "backend" in proc.stdout and "playback" in proc.stdout


def test_no_permission_on_kvm_is_one_line(monkeypatch):
    """As root the real permission check cannot be provoked; the mapping from EACCES is what counts."""
    import pyvmm.kvm.system as system
    from pyvmm.errors import VmmError

    def refuse(path, flags):
        raise PermissionError(13, "Permission denied", path)

    monkeypatch.setattr(system.os, "open", refuse)
    with pytest.raises(VmmError, match=r"no permission to open /dev/kvm: add your user to the 'kvm' group"):
        system.Kvm("/dev/kvm")
