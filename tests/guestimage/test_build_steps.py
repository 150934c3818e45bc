"""Pieces of the builder that need neither network nor a kernel tree."""

import pytest

from pyvmm.guestimage.apt import _INST_LINE, DebPackage
from pyvmm.guestimage.cache import building, cache_root, entry_lock
from pyvmm.guestimage.kernel import KernelBuildError, _LoggedRunner
from pyvmm.guestimage.progress import Progress, format_duration


def test_simulated_install_lines_parse_into_packages():
    line = "Inst busybox-static (1:1.37.0-6+b9 Debian:13.2/stable [amd64])"
    package = DebPackage(*_INST_LINE.match(line).groups())
    assert package == DebPackage("busybox-static", "1:1.37.0-6+b9", "amd64")
    assert package.filename == "busybox-static_1%3a1.37.0-6+b9_amd64.deb"
    assert _INST_LINE.match("Conf busybox-static (1:1.37.0-6+b9 Debian:13.2/stable [amd64])") is None


def test_cache_root_follows_xdg(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cache_root() == tmp_path / "pyvmm"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache_root().parts[-2:] == (".cache", "pyvmm")


def test_entry_appears_only_when_the_build_succeeds(tmp_path):
    entry = tmp_path / "kernel" / "default-abc"
    with pytest.raises(KeyboardInterrupt):
        with entry_lock(entry), building(entry) as tmp:
            (tmp / "vmlinux").write_bytes(b"half")
            raise KeyboardInterrupt
    assert not entry.exists()
    assert [p.name for p in entry.parent.iterdir()] == ["default-abc.lock"]
    with entry_lock(entry), building(entry) as tmp:
        (tmp / "vmlinux").write_bytes(b"whole")
    assert (entry / "vmlinux").read_bytes() == b"whole"


def test_leftovers_of_a_killed_build_are_removed(tmp_path):
    entry = tmp_path / "initramfs" / "k1"
    stale = entry.parent / ".k1.tmp-dead"
    stale.mkdir(parents=True)
    with entry_lock(entry), building(entry) as tmp:
        (tmp / "initramfs.cpio").write_bytes(b"")
    assert not stale.exists() and entry.is_dir()


def test_failed_step_shows_the_log_tail_and_names_the_log(tmp_path):
    lines = []
    log = tmp_path / "build.log"
    runner = _LoggedRunner(log, Progress(lines.append))
    runner.run(["sh", "-c", "echo configured"], cwd=tmp_path, label="configure")
    with pytest.raises(KernelBuildError, match=r"kernel build failed \(exit status 2\); full log: .*build.log"):
        runner.run(["sh", "-c", "echo compiling; echo 'error: something broke' >&2; exit 2"],
                   cwd=tmp_path, label="kernel build")
    assert any("error: something broke" in line for line in lines)
    assert "configured" in log.read_text() and "compiling" in log.read_text()


def test_long_steps_report_progress(tmp_path):
    lines = []
    runner = _LoggedRunner(tmp_path / "build.log", Progress(lines.append))
    runner.run(["sh", "-c", "echo '  CC      a.o'; echo '  CC      b.o'; sleep 0.5"], cwd=tmp_path,
               label="kernel build", report_every=0.1)
    assert any("kernel build: 2 objects compiled" in line for line in lines)


def test_durations_read_naturally():
    assert format_duration(4.26) == "4.3s"
    assert format_duration(125) == "2m05s"
