"""MachineConfig parsing and validation: every bad value is a one-line VmmError."""

from pathlib import Path

import pytest
from hypothesis import given, strategies as st

from pyvmm.config import DeviceSpec, MachineConfig, MiB, GiB, parse_size
from pyvmm.errors import VmmError


@pytest.mark.parametrize(
    "text,expected",
    [("256", 256 * MiB), ("256M", 256 * MiB), ("1G", GiB), ("1g", GiB), ("512K", 512 << 10), ("2GiB", 2 * GiB)],
)
def test_parse_size(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "abc", "1X", "-5M", "1.5G", "M"])
def test_parse_size_rejects(text):
    with pytest.raises(VmmError, match="bad memory size"):
        parse_size(text)


def test_device_spec_parse():
    spec = DeviceSpec.parse("virtio-snd,backend=wav,path=/tmp/a,,b.wav,controls")
    assert spec.name == "virtio-snd"
    assert spec.options == {"backend": "wav", "path": "/tmp/a,b.wav", "controls": "on"}


@pytest.mark.parametrize("text", [",a=b", "", "x,a=1,a=2"])
def test_device_spec_rejects(text):
    with pytest.raises(VmmError):
        DeviceSpec.parse(text)


@given(st.dictionaries(st.from_regex(r"[a-z][a-z0-9_-]{0,8}", fullmatch=True), st.text("abc,=/.x", min_size=1), max_size=5))
def test_device_spec_round_trip(options):
    text = "dev" + "".join(f",{k}={v.replace(',', ',,')}" for k, v in options.items())
    assert DeviceSpec.parse(text).options == options


def _config(tmp_path, **kw):
    kernel = tmp_path / "vmlinux"
    kernel.write_bytes(b"\x7fELF")
    return MachineConfig(kernel=kw.pop("kernel", kernel), cmdline=kw.pop("cmdline", "console=ttyS0"), **kw)


def test_validate_ok(tmp_path):
    _config(tmp_path).validate()


@pytest.mark.parametrize(
    "kw,message",
    [
        ({"kernel": Path("/nonexistent/vmlinux")}, "does not exist"),
        ({"mem_size": 1 * MiB}, "out of range"),
        ({"mem_size": 128 * GiB}, "out of range"),
        ({"vcpus": 0}, "out of range"),
        ({"vcpus": 99}, "out of range"),
        ({"cmdline": "x" * 2048}, "longer than"),
        ({"initrds": [Path("/nonexistent/initrd")]}, "initrd"),
    ],
)
def test_validate_rejects(tmp_path, kw, message):
    with pytest.raises(VmmError, match=message):
        _config(tmp_path, **kw).validate()
