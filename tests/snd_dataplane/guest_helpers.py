"""End-to-end helpers: test audio files in the guest, and what a run added to the host WAV.

Files reach the guest as an extra newc archive appended to the default initramfs (the
kernel unpacks concatenated archives; each starts 4-byte aligned).
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import numpy as np

from pyvmm.cpio import CpioEntry, build_cpio
from pyvmm_snd.backends.wavfile import parse_header

GUEST_DIR = "/test"


def image_with_files(image, files: dict[str, bytes], workdir: Path):
    """A copy of ``image`` whose initramfs also holds ``files`` (guest path -> bytes)."""
    base = Path(image.initramfs).read_bytes()
    base += bytes(-len(base) % 4)
    extra = build_cpio([CpioEntry.file(path, data) for path, data in files.items()])
    initramfs = workdir / "initramfs-with-tests.cpio"
    initramfs.write_bytes(base + extra)
    return dataclasses.replace(image, initramfs=initramfs)


def wav_data(path: Path) -> tuple[object, bytes]:
    """Layout and data chunk of a WAV the sink wrote."""
    raw = path.read_bytes()
    info = parse_header(raw[:1 << 16], len(raw))
    return info.layout, raw[info.data_offset:info.data_offset + info.data_size]


class WavWatcher:
    """What one guest command added to the sink's files: the sink appends runs with the same
    parameters to the current file and starts a numbered file otherwise."""

    def __init__(self, directory: Path, pattern: str = "out0*.wav"):
        self.directory = directory
        self.pattern = pattern
        self.sizes = self._sizes()

    def _sizes(self) -> dict[Path, int]:
        return {p: len(wav_data(p)[1]) for p in sorted(self.directory.glob(self.pattern))}

    def new_audio(self) -> tuple[object, bytes]:
        """(layout, bytes) added since the last call; exactly one file may have changed."""
        now = self._sizes()
        changed = [p for p, n in now.items() if n != self.sizes.get(p, 0)]
        assert len(changed) == 1, f"expected one WAV to change, got {changed} ({now} vs {self.sizes})"
        layout, data = wav_data(changed[0])
        start = self.sizes.get(changed[0], 0)
        self.sizes = now
        return layout, data[start:]


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def noise(nbytes: int, seed: int) -> bytes:
    """Random bytes without zero bytes (silence never hides in them)."""
    return np.random.default_rng(seed).integers(1, 256, nbytes, dtype=np.uint8).tobytes()
