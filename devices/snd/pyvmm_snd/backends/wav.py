"""``wav``: playback streams are recorded to WAV files, capture streams read one.

Playback (``backend.path=FILE``): the file is in the stream's format, rate and channels
(see :mod:`.wavfile` for the storage of each virtio format). The header's sizes are
rewritten after every period, right after the period's samples, so the file is a valid WAV
whatever way the VMM exits: a SIGKILL loses at most the period being written
(``fsync=on`` also survives a host crash, at one fsync per period).

Files of one stream:

* the first run writes ``FILE`` (an existing file is replaced);
* a later run with the **same** format, channels and rate appends to the current file
  (pause/resume and ALSA's stop-release-prepare cycles make one recording);
* a run with **different** parameters, or a file reaching the 4 GiB RIFF limit, starts
  the next file: ``NAME-1.wav``, ``NAME-2.wav``, ... (the number goes before the extension).

With several playback streams put ``{stream}`` in the path (``out-{stream}.wav``); two
streams naming the same file are refused at start-up.

Capture (``backend.input=FILE``, optional: without it capture records silence): the file
(integer PCM 8/16/24/32-bit, IEEE float 32/64, EXTENSIBLE) is converted to the stream's
format; its channels are copied (mono to all) or dropped to match; a different rate is
resampled by linear interpolation (the whole file is then loaded, up to 256 MiB). At end of
file the source starts over with ``loop=on`` or gives silence (default).
"""

from __future__ import annotations

import logging
import os
import stat
import weakref
from pathlib import Path

import numpy as np

from pyvmm.errors import VmmError

from pyvmm_snd import pcm_format
from pyvmm_snd.backends.base import BackendError, BackendParams, PcmBackend, option_flag
from pyvmm_snd.backends.loopback import convert_frames
from pyvmm_snd.backends.wavfile import (MAX_RIFF_SIZE, WavInfo, WavLayout, build_header,
                                        parse_header)
from pyvmm_snd.spec import Direction

log = logging.getLogger(__name__)

OPTIONS = {
    "path": "playback: WAV file to write; '{stream}' is replaced by the stream id",
    "input": "capture: WAV file to read (default: silence)",
    "loop": "capture: on = restart the input at end of file, off = silence after it (default off)",
    "fsync": "playback: fsync after every period (default off; SIGKILL-safe either way)",
}

MAX_RESAMPLED_BYTES = 256 << 20
_HEADER_PROBE = 4096

_claimed_paths: weakref.WeakValueDictionary[str, PcmBackend] = weakref.WeakValueDictionary()


def create_wav_backend(options: dict[str, str], direction: Direction, stream_id: int | None = None,
                       claim: bool = True) -> PcmBackend:
    if direction == Direction.OUTPUT:
        return WavSink(options, direction, stream_id, claim)
    return WavSource(options, direction)


def check_output_path(path: Path) -> None:
    """Raise BackendError unless ``path`` can be a WAV file written without ever blocking:
    in an existing, writable directory, and a regular file if it exists (not a directory,
    a FIFO that would block until a reader comes, or a device such as /dev/full)."""
    parent = path.parent
    if not parent.is_dir():
        raise BackendError(f"wav: cannot write {path}: directory {parent} does not exist")
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if not os.access(parent, os.W_OK | os.X_OK):
            raise BackendError(f"wav: cannot write {path}: directory {parent} is not writable") from None
        return
    except OSError as exc:
        raise BackendError(f"wav: cannot write {path}: {exc.strerror}") from None
    if stat.S_ISDIR(st.st_mode):
        raise BackendError(f"wav: cannot write {path}: it is a directory")
    if not stat.S_ISREG(st.st_mode):
        raise BackendError(f"wav: cannot write {path}: not a regular file (a FIFO, device or socket); "
                           f"use backend=null to discard playback")
    if not os.access(path, os.W_OK):
        raise BackendError(f"wav: cannot write {path}: permission denied")


def numbered_path(path: Path, index: int) -> Path:
    """``path`` for index 0, then ``stem-1.ext``, ``stem-2.ext``, ..."""
    return path if index == 0 else path.with_name(f"{path.stem}-{index}{path.suffix}")


class WavSink(PcmBackend):
    NAME = "wav"
    OPTIONS = OPTIONS

    def __init__(self, options: dict[str, str], direction: Direction, stream_id: int | None = None,
                 claim: bool = True):
        """With ``stream_id`` the path is checked now (and claimed, with ``claim``), so an
        unwritable path or a clash is a start-up error."""
        super().__init__(options, direction)
        if "path" not in options:
            raise VmmError("virtio-snd backend wav: playback streams need backend.path=FILE.wav")
        self.path_template = options["path"]
        self.fsync = option_flag(self.NAME, options, "fsync", False)
        self.path: Path | None = None
        """The file being written (or last written)."""
        self.files: list[Path] = []
        self._fd: int | None = None
        self._layout: WavLayout | None = None
        self._data_size = 0
        self._base: Path | None = None
        self._index = -1
        self._failed = False
        if stream_id is not None:
            try:
                path = Path(self.path_template.replace("{stream}", str(stream_id))).absolute()
                check_output_path(path)
                if claim:
                    self._base_path(stream_id)
            except BackendError as exc:
                raise VmmError(f"virtio-snd backend {exc}") from None

    def open(self, params: BackendParams) -> None:
        super().open(params)
        layout = WavLayout.for_stream(params.format, params.channels, params.rate)
        try:
            if self.path is not None and layout == self._layout and self._base_path(params.stream_id) == self._base:
                self._reopen()
            else:
                self._new_file(layout)
        except BackendError:
            self.params = None
            raise

    def _base_path(self, stream_id: int) -> Path:
        path = Path(self.path_template.replace("{stream}", str(stream_id))).absolute()
        owner = _claimed_paths.get(str(path))
        if owner is not None and owner is not self:
            raise BackendError(f"wav: {path} is already written by another stream; put {{stream}} in backend.path")
        _claimed_paths[str(path)] = self
        return path

    def _new_file(self, layout: WavLayout) -> None:
        self._close_fd()
        base = self._base_path(self._require_open().stream_id)
        if base != self._base:
            self._base, self._index = base, -1
        self._index += 1
        path = numbered_path(base, self._index)
        fd = _open_regular(path, os.O_CREAT | os.O_TRUNC)
        self._fd, self._layout, self._data_size, self.path, self._failed = fd, layout, 0, path, False
        self.files.append(path)
        self.stats.count("files")
        try:
            self._write_header()
        except OSError as exc:
            self._close_fd()
            raise BackendError(f"wav: cannot write {path}: {exc.strerror}") from None
        log.info("wav: recording %s to %s", self.params, path)

    def _reopen(self) -> None:
        if self._fd is not None:
            return
        assert self.path is not None
        self._fd = _open_regular(self.path, 0)
        log.debug("wav: appending to %s", self.path)

    def write(self, data: bytes) -> None:
        params = self._require_open()
        self.stats.written += len(data)
        if self._failed or self._fd is None:
            return
        assert self._layout is not None
        samples = pcm_format.convert(data, params.format, self._layout.storage)
        samples = samples[:len(samples) - len(samples) % self._layout.frame_bytes]
        if self._layout.header_size + self._data_size + len(samples) + 1 > MAX_RIFF_SIZE:
            self._new_file(self._layout)
        try:
            os.pwrite(self._fd, samples, self._layout.header_size + self._data_size)
            self._data_size += len(samples)
            self._write_header()
        except OSError as exc:
            self._failed = True
            self.stats.count("write_errors")
            log.error("wav: writing %s failed (%s); the rest of this run is not recorded", self.path, exc.strerror)

    def _write_header(self) -> None:
        assert self._fd is not None and self._layout is not None
        os.pwrite(self._fd, build_header(self._layout, self._data_size), 0)
        if self.fsync:
            os.fsync(self._fd)

    def close(self) -> None:
        self._close_fd()
        super().close()

    def _close_fd(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            if self._data_size & 1:  # RIFF pads an odd-sized chunk
                os.pwrite(fd, b"\0", self._layout.header_size + self._data_size)
            if self.fsync:
                os.fsync(fd)
        except OSError as exc:
            log.error("wav: finishing %s failed: %s", self.path, exc.strerror)
        finally:
            os.close(fd)

    @property
    def data_bytes(self) -> int:
        """Sample bytes in the current file."""
        return self._data_size

    def describe(self) -> str:
        return f"wav {self.path or self.path_template}"


def _open_regular(path: Path, flags: int) -> int:
    """Open ``path`` for writing, never blocking the device loop: O_NONBLOCK makes a FIFO
    without a reader fail (ENXIO) instead of waiting, and anything but a regular file that
    appeared since start-up is refused."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC | flags, 0o644)
    except OSError as exc:
        raise BackendError(f"wav: cannot open {path}: {exc.strerror}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise BackendError(f"wav: cannot write {path}: not a regular file")
    return fd


class WavSource(PcmBackend):
    NAME = "wav"
    OPTIONS = OPTIONS

    def __init__(self, options: dict[str, str], direction: Direction):
        super().__init__(options, direction)
        self.loop = option_flag(self.NAME, options, "loop", False)
        self.input: Path | None = Path(options["input"]) if "input" in options else None
        self.info: WavInfo | None = None
        if self.input is not None:
            self.info = read_wav_info(self.input)
        self._file = None
        self._pos = 0
        """Next frame of the source (file frames, or stream frames when resampled)."""
        self._resampled: bytes | None = None

    def open(self, params: BackendParams) -> None:
        super().open(params)
        self._pos = 0
        self._resampled = None
        if self.input is None or self.info is None:
            return
        if self._file is None:
            try:
                self._file = open(self.input, "rb")
            except OSError as exc:
                raise BackendError(f"wav: cannot open {self.input}: {exc.strerror}") from None
        if self.info.layout.rate != params.rate:
            self._resampled = self._load_resampled(params)

    def _load_resampled(self, params: BackendParams) -> bytes:
        info = self.info
        assert info is not None and self._file is not None
        out_frames = info.frames * params.rate // info.layout.rate
        if max(info.data_size, out_frames * params.frame_bytes) > MAX_RESAMPLED_BYTES:
            raise BackendError(f"wav: {self.input} is {info.layout.rate} Hz and too large to resample to "
                               f"{params.rate} Hz in memory; convert it first")
        log.info("wav: resampling %s from %d Hz to %d Hz", self.input, info.layout.rate, params.rate)
        self._file.seek(info.data_offset)
        raw = self._file.read(info.data_size)
        source = pcm_format.to_float(raw, info.layout.storage, np.float64).reshape(-1, info.layout.channels)
        t = np.arange(out_frames, dtype=np.float64) * (info.layout.rate / params.rate)
        columns = [np.interp(t, np.arange(len(source)), source[:, c]) for c in range(info.layout.channels)]
        frames = pcm_format.remix_channels(np.stack(columns, axis=1), params.channels)
        return pcm_format.from_float(frames.reshape(-1), params.format)

    def read(self, nbytes: int) -> bytes:
        params = self._require_open()
        self.stats.read += nbytes
        if self.info is None:
            return self.silence(nbytes)
        want = nbytes // params.frame_bytes
        chunks, got = [], 0
        while got < want:
            chunk = self._next_frames(params, want - got)
            if not chunk:
                if not self.loop or self._total_frames() == 0:
                    break
                self._pos = 0
                self.stats.count("loops")
                continue
            chunks.append(chunk)
            got += len(chunk) // params.frame_bytes
        data = b"".join(chunks)
        if len(data) < nbytes:
            self.stats.count("eof_silence_bytes", nbytes - len(data))
        return data + self.silence(nbytes - len(data))

    def _total_frames(self) -> int:
        params, info = self.params, self.info
        assert params is not None and info is not None
        if self._resampled is not None:
            return len(self._resampled) // params.frame_bytes
        return info.frames

    def _next_frames(self, params: BackendParams, frames: int) -> bytes:
        """Up to ``frames`` frames from the current position, in the stream's format."""
        take = min(frames, self._total_frames() - self._pos)
        if take <= 0:
            return b""
        if self._resampled is not None:
            fb = params.frame_bytes
            out = self._resampled[self._pos * fb:(self._pos + take) * fb]
        else:
            info = self.info
            assert info is not None and self._file is not None
            fb = info.layout.frame_bytes
            raw = os.pread(self._file.fileno(), take * fb, info.data_offset + self._pos * fb)
            take = len(raw) // fb
            source = BackendParams(params.stream_id, Direction.INPUT, info.layout.channels, info.layout.storage,
                                   info.layout.rate, max(fb, take * fb), max(fb, take * fb))
            out = convert_frames(raw[:take * fb], source, params)
        self._pos += take
        return out

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        super().close()

    def describe(self) -> str:
        return f"wav {self.input or 'silence'}"


def read_wav_info(path: Path) -> WavInfo:
    """Parse ``path``'s header; a one-line VmmError for a missing or unsupported file."""
    try:
        with open(path, "rb") as f:
            head = f.read(_HEADER_PROBE)
            size = os.fstat(f.fileno()).st_size
            while True:
                try:
                    return parse_header(head, size)
                except ValueError as exc:
                    if str(exc) != "no data chunk" or len(head) >= size:
                        raise
                    more = f.read(len(head))
                    if not more:
                        raise
                    head += more
    except OSError as exc:
        raise VmmError(f"virtio-snd backend wav: cannot read input {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise VmmError(f"virtio-snd backend wav: input {path}: {exc}") from None
