"""The newc writer: checked against GNU cpio and against its own reader."""

import shutil
import stat
import subprocess

import pytest
from hypothesis import given, strategies as st

from pyvmm.cpio import CpioEntry, CpioWriter, build_cpio, read_cpio

needs_cpio = pytest.mark.skipif(shutil.which("cpio") is None, reason="GNU cpio is not installed")


def sample_archive() -> bytes:
    return build_cpio([
        CpioEntry.file("/etc/pyvmm/cmd", b"echo hello\n", 0o755),
        CpioEntry.file("usr/share/odd-size", b"x" * 5),
        CpioEntry.symlink("bin", "usr/bin"),
        CpioEntry.device("dev/console", "c", 5, 1),
        CpioEntry.directory("tmp", 0o1777),
    ])


@needs_cpio
def test_gnu_cpio_lists_every_entry_with_its_type():
    listing = subprocess.run(["cpio", "-itv"], input=sample_archive(), capture_output=True, check=True)
    lines = listing.stdout.decode().splitlines()
    by_name = {line.split()[-1] if "->" not in line else line.split()[-3]: line for line in lines}
    assert set(by_name) == {"etc", "etc/pyvmm", "etc/pyvmm/cmd", "usr", "usr/share",
                            "usr/share/odd-size", "bin", "dev", "dev/console", "tmp"}
    assert by_name["etc/pyvmm/cmd"].startswith("-rwxr-xr-x")
    assert by_name["bin"].startswith("l") and by_name["bin"].endswith("-> usr/bin")
    assert by_name["dev/console"].startswith("crw-------") and "5,   1" in by_name["dev/console"]
    assert by_name["tmp"].startswith("drwxrwxrwt")


@needs_cpio
def test_gnu_cpio_extracts_the_same_bytes(tmp_path):
    archive = build_cpio([CpioEntry.file("a/b.bin", bytes(range(256)) * 3 + b"tail"),
                          CpioEntry.file("empty", b""), CpioEntry.symlink("a/link", "b.bin")])
    subprocess.run(["cpio", "-id", "--quiet"], input=archive, cwd=tmp_path, check=True)
    assert (tmp_path / "a/b.bin").read_bytes() == bytes(range(256)) * 3 + b"tail"
    assert (tmp_path / "empty").read_bytes() == b""
    assert (tmp_path / "a/link").is_symlink() and (tmp_path / "a/link").read_bytes() == (tmp_path / "a/b.bin").read_bytes()


def test_entries_are_aligned_and_the_archive_ends_with_a_trailer():
    data = sample_archive()
    assert data.startswith(b"070701")
    assert len(data) % 4 == 0
    assert b"TRAILER!!!\0" in data[-124:]


def test_parents_come_first_and_only_once():
    paths = [e.path for e in read_cpio(build_cpio([CpioEntry.file("x/y/z", b"1"),
                                                  CpioEntry.file("x/y/w", b"2")]))]
    assert paths == ["x", "x/y", "x/y/z", "x/y/w"]


def test_appended_archive_overrides_and_adds():
    base = build_cpio([CpioEntry.file("etc/motd", b"old"), CpioEntry.file("init", b"#!/bin/sh\n", 0o755)])
    extra = build_cpio([CpioEntry.file("etc/motd", b"new"), CpioEntry.file("etc/pyvmm/cmd", b"true\n")])
    entries = {e.path: e for e in read_cpio(base + b"\0" * 512 + extra)}
    assert entries["etc/motd"].data == b"new"
    assert entries["etc/pyvmm/cmd"].data == b"true\n"
    assert entries["init"].mode == stat.S_IFREG | 0o755


def test_duplicate_files_and_escaping_paths_are_refused():
    with pytest.raises(ValueError, match="duplicate"):
        build_cpio([CpioEntry.file("a", b""), CpioEntry.file("a", b"")])
    with pytest.raises(ValueError, match="escapes"):
        CpioEntry.file("../etc/passwd", b"")


def test_writer_refuses_entries_after_finish():
    import io
    writer = CpioWriter(io.BytesIO())
    writer.finish()
    with pytest.raises(ValueError):
        writer.add_file("late", b"")


def test_same_input_gives_the_same_bytes():
    assert sample_archive() == sample_archive()


names = st.lists(st.text(alphabet="abcxyz09._-", min_size=1, max_size=12).filter(lambda s: s not in (".", "..")),
                 min_size=1, max_size=3).map("/".join)


@given(st.dictionaries(names, st.binary(max_size=300), min_size=1, max_size=8))
def test_round_trip_through_the_reader(files):
    # A name that is also a parent directory of another name cannot be a file too.
    files = {p: d for p, d in files.items() if not any(o.startswith(p + "/") for o in files)}
    entries = {e.path: e for e in read_cpio(build_cpio(CpioEntry.file(p, d) for p, d in files.items()))}
    for path, data in files.items():
        assert entries[path].is_file and entries[path].data == data
    assert all(e.is_dir for p, e in entries.items() if p not in files)
