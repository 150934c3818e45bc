"""``pyaudio``: the host's sound card through PortAudio (package ``pyaudio``, library ``libportaudio2``).

PortAudio runs its streams in **callback mode**: PortAudio's own thread pulls playback
frames from, and pushes capture frames into, a bounded :class:`~.ring.ByteRing`, so the
event loop only ever copies bytes (``write``/``read`` never wait on the sound card). When
the ring runs dry the card gets silence (counted as underrun); when it is full the oldest
frames are dropped (overflow).

Sample formats PortAudio lacks are converted on the way: U16, mu-law and A-law to paInt16; S18_3/S20_3 and
the unsigned 3-byte formats to paInt24 (packed, like S24_3); S20/S24/U20/U24/U32 (32-bit
containers) to paInt32, shifted to the top; FLOAT64 to paFloat32.

A playback stream starts PortAudio at its first period (no silence is played between
PREPARE and the first data); from then on, silence the card plays for lack of data (the
guest paused or is late) counts as underrun; ``close`` lets PortAudio drain what is queued on a helper
thread, so closing never holds the event loop.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import sys
import tempfile
import threading
import time

from pyvmm.errors import VmmError

from pyvmm_snd import pcm_format
from pyvmm_snd.backends.base import BackendError, BackendParams, PcmBackend, option_float
from pyvmm_snd.backends.ring import ByteRing
from pyvmm_snd.spec import Direction, PcmFormat

log = logging.getLogger(__name__)

HOST_FORMAT: dict[PcmFormat, PcmFormat] = {
    PcmFormat.S8: PcmFormat.S8, PcmFormat.U8: PcmFormat.U8,
    PcmFormat.S16: PcmFormat.S16, PcmFormat.U16: PcmFormat.S16,
    PcmFormat.MU_LAW: PcmFormat.S16, PcmFormat.A_LAW: PcmFormat.S16,
    PcmFormat.S18_3: PcmFormat.S24_3, PcmFormat.U18_3: PcmFormat.S24_3,
    PcmFormat.S20_3: PcmFormat.S24_3, PcmFormat.U20_3: PcmFormat.S24_3,
    PcmFormat.S24_3: PcmFormat.S24_3, PcmFormat.U24_3: PcmFormat.S24_3,
    PcmFormat.S20: PcmFormat.S32, PcmFormat.U20: PcmFormat.S32,
    PcmFormat.S24: PcmFormat.S32, PcmFormat.U24: PcmFormat.S32,
    PcmFormat.S32: PcmFormat.S32, PcmFormat.U32: PcmFormat.S32,
    PcmFormat.FLOAT: PcmFormat.FLOAT, PcmFormat.FLOAT64: PcmFormat.FLOAT,
}
"""Virtio format of the stream -> the virtio format whose bytes PortAudio is given."""

_PA_FORMAT_NAME = {PcmFormat.S8: "paInt8", PcmFormat.U8: "paUInt8", PcmFormat.S16: "paInt16",
                   PcmFormat.S24_3: "paInt24", PcmFormat.S32: "paInt32", PcmFormat.FLOAT: "paFloat32"}

DRAIN_GRACE = 0.5
"""Seconds a closing playback stream may take beyond its queued audio before it is cut."""

_portaudio = None
_portaudio_lock = threading.Lock()


def portaudio():
    """The process-wide initialised PortAudio (``pyaudio.PyAudio``), created on first use."""
    global _portaudio
    with _portaudio_lock:
        if _portaudio is None:
            try:
                import pyaudio
            except ImportError as exc:
                raise VmmError(f"virtio-snd backend pyaudio: cannot import pyaudio ({exc}); "
                               "install it with 'pip install pyaudio' (needs libportaudio2)") from None
            with _stderr_to_debug_log():
                _portaudio = pyaudio.PyAudio()
            atexit.register(_portaudio.terminate)
        return _portaudio


@contextlib.contextmanager
def _stderr_to_debug_log():
    """Probing host APIs makes ALSA and JACK print dozens of lines ("Unknown PCM cards.pcm.hdmi",
    "jack server is not running") straight to file descriptor 2; keep them for DEBUG logs
    instead of the user's terminal. Only used at start-up, before any vCPU runs."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            text = sink.read().decode(errors="replace").strip()
    if text:
        log.debug("PortAudio initialisation said:\n%s", text)


def list_devices() -> list[dict]:
    pa = portaudio()
    return [pa.get_device_info_by_index(i) for i in range(pa.get_device_count())]


def find_device(spec: str | None, direction: Direction) -> dict:
    """The PortAudio device info for option ``device`` (index, or part of a name)."""
    key = "maxOutputChannels" if direction == Direction.OUTPUT else "maxInputChannels"
    kind = "output" if direction == Direction.OUTPUT else "input"
    pa = portaudio()
    devices = [d for d in list_devices() if d[key] > 0]
    seen = ", ".join(f"{d['index']}: {d['name']}" for d in devices) or "none"
    if spec is None:
        try:
            return pa.get_default_output_device_info() if direction == Direction.OUTPUT \
                else pa.get_default_input_device_info()
        except OSError:
            raise VmmError(f"virtio-snd backend pyaudio: no default {kind} device "
                           f"(PortAudio {kind} devices: {seen})") from None
    if spec.strip().isdigit():
        match = [d for d in devices if d["index"] == int(spec)]
    else:
        match = [d for d in devices if spec.lower() in d["name"].lower()]
    if not match:
        raise VmmError(f"virtio-snd backend pyaudio: no {kind} device matches device={spec!r} "
                       f"(PortAudio {kind} devices: {seen})")
    return match[0]


class PyAudioBackend(PcmBackend):
    NAME = "pyaudio"
    OPTIONS = {
        "device": "PortAudio device: index or (part of) its name (default: the default device)",
        "buffer_ms": "host-side buffer between the VMM and PortAudio (default 100)",
    }

    def __init__(self, options: dict[str, str], direction: Direction):
        super().__init__(options, direction)
        self.buffer_ms = option_float(self.NAME, options, "buffer_ms", 100.0, 1.0, 10000.0)
        self.device = find_device(options.get("device"), direction)
        self._stream = None
        self._ring: ByteRing | None = None
        self._host: BackendParams | None = None
        self._started = False
        self._start_failed = False
        self._drainer: threading.Thread | None = None

    def open(self, params: BackendParams) -> None:
        super().open(params)
        self.close_stream()
        import pyaudio

        host_format = HOST_FORMAT[params.format]
        host = BackendParams(params.stream_id, params.direction, params.channels, host_format, params.rate,
                             params.period_frames * pcm_format.frame_bytes(host_format, params.channels),
                             params.buffer_bytes // params.frame_bytes
                             * pcm_format.frame_bytes(host_format, params.channels))
        capacity = max(host.bytes_for(self.buffer_ms / 1000), 2 * host.period_bytes)
        ring = ByteRing(capacity, host.frame_bytes)
        output = params.direction == Direction.OUTPUT
        try:
            stream = portaudio().open(
                rate=params.rate, channels=params.channels,
                format=getattr(pyaudio, _PA_FORMAT_NAME[host_format]),
                output=output, input=not output,
                output_device_index=self.device["index"] if output else None,
                input_device_index=None if output else self.device["index"],
                frames_per_buffer=params.period_frames,
                stream_callback=self._make_callback(ring, host, output),
                start=False)
        except (OSError, ValueError) as exc:
            self.params = None
            raise BackendError(f"pyaudio: cannot open {params} on {self.device['name']!r}: {exc}") from None
        self._stream, self._ring, self._host, self._started = stream, ring, host, False
        self._start_failed = False
        log.info("pyaudio: %s on %r (%s)", params, self.device["name"], _PA_FORMAT_NAME[host_format])
        if not output:
            try:
                self._start()
            except BackendError:
                self.close_stream()
                self.params = None
                raise

    def _make_callback(self, ring: ByteRing, host: BackendParams, output: bool):
        """PortAudio's callback (runs on PortAudio's thread); counters are in stream bytes."""
        import pyaudio

        stats = self.stats
        stream_frame = pcm_format.frame_bytes(self._require_open().format, host.channels)
        silence_frame = pcm_format.silence(host.format, host.frame_bytes)

        def callback(in_data, frame_count, time_info, status):
            stats.count("callbacks")
            if output:
                want = frame_count * host.frame_bytes
                data = ring.read(want)
                if len(data) < want:
                    missing = (want - len(data)) // host.frame_bytes
                    stats.underrun += missing * stream_frame
                    data += silence_frame * missing
                return data, pyaudio.paContinue
            stats.overflow += ring.write(in_data) // host.frame_bytes * stream_frame
            return None, pyaudio.paContinue

        return callback

    def _start(self) -> None:
        try:
            self._stream.start_stream()
        except OSError as exc:
            raise BackendError(f"pyaudio: cannot start {self.params}: {exc}") from None
        self._started = True

    def write(self, data: bytes) -> None:
        params = self._require_open()
        self.stats.written += len(data)
        assert self._ring is not None and self._host is not None
        host_bytes = pcm_format.convert(data, params.format, self._host.format)
        dropped = self._ring.write(host_bytes)
        self.stats.overflow += dropped // self._host.frame_bytes * params.frame_bytes
        if not self._started and not self._start_failed:
            try:
                self._start()
            except BackendError as exc:
                self._start_failed = True
                log.error("%s; this run plays nothing", exc)

    def read(self, nbytes: int) -> bytes:
        params = self._require_open()
        self.stats.read += nbytes
        assert self._ring is not None and self._host is not None
        frames = nbytes // params.frame_bytes
        host_bytes = self._ring.read(frames * self._host.frame_bytes)
        return self.pad(pcm_format.convert(host_bytes, self._host.format, params.format), nbytes)

    @property
    def latency_bytes(self) -> int:
        params, ring, host, stream = self.params, self._ring, self._host, self._stream
        if params is None or ring is None or host is None or stream is None:
            return 0
        frames = len(ring) // host.frame_bytes
        try:
            device_latency = stream.get_output_latency() if params.direction == Direction.OUTPUT \
                else stream.get_input_latency()
        except OSError:
            device_latency = 0.0
        return (frames + round(device_latency * params.rate)) * params.frame_bytes

    def close(self) -> None:
        self.close_stream()
        super().close()

    def close_stream(self) -> None:
        """Stop PortAudio: playback drains its queued frames on a helper thread first."""
        stream, ring, host, started = self._stream, self._ring, self._host, self._started
        self._stream = self._ring = self._host = None
        self._started = False
        if stream is None:
            return
        if started and ring is not None and host is not None and self.direction == Direction.OUTPUT and len(ring):
            budget = len(ring) / host.frame_bytes / host.rate + DRAIN_GRACE
            thread = threading.Thread(target=_drain_and_close, args=(stream, ring, budget),
                                      name="pyaudio-drain", daemon=True)
            thread.start()
            self._drainer = thread
        else:
            _close_stream(stream)

    def wait_drained(self, timeout: float | None = None) -> bool:
        """Wait for a closing playback stream to finish draining (tests, shutdown)."""
        if self._drainer is not None:
            self._drainer.join(timeout)
            return not self._drainer.is_alive()
        return True

    def describe(self) -> str:
        return f"pyaudio {self.device['name']}"


def _drain_and_close(stream, ring: ByteRing, budget: float) -> None:
    deadline = time.monotonic() + budget
    while len(ring) and time.monotonic() < deadline:
        time.sleep(0.005)
    _close_stream(stream)


def _close_stream(stream) -> None:
    try:
        if stream.is_active():
            stream.stop_stream()
        stream.close()
    except OSError as exc:
        log.warning("pyaudio: closing a stream failed: %s", exc)
