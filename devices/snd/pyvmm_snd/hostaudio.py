"""Which host back end each stream uses, and how its period clock runs: the device options
of the data plane (the guest never sees them; :mod:`pyvmm_snd.topology` is what it sees).

Option scheme (``--device virtio-snd,KEY=VALUE,...``):

* ``backend=NAME``: the back end of every stream; ``playback.backend=NAME`` and
  ``capture.backend=NAME`` override it for one direction. Without any of them playback
  is written to ``pyvmm-snd-stream{stream}.wav`` in the current directory (the WAV path is
  logged when the file is opened) and capture records a 440 Hz ``tone``.
* ``backend.KEY=VALUE``: a back-end option, given to each direction whose back end knows
  ``KEY`` (``backend.path=out.wav`` reaches the wav playback stream, not the tone capture
  stream); a key no chosen back end knows is an error. ``playback.backend.KEY=VALUE`` and
  ``capture.backend.KEY=VALUE`` reach one direction only.
* ``clock=realtime`` (default) completes one period per period duration on absolute
  deadlines; ``clock=fast`` completes playback periods as soon as the back end took them
  (tests, throughput). Capture always runs in real time (see :mod:`pyvmm_snd.streamio`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pyvmm.errors import VmmError

from pyvmm_snd.backends import BACKENDS, PcmBackend, create_backend, describe_backends
from pyvmm_snd.spec import Direction

CLOCKS = ("realtime", "fast")
DEFAULT_BACKEND = {Direction.OUTPUT: "wav", Direction.INPUT: "tone"}
DEFAULT_WAV_PATH = "pyvmm-snd-stream{stream}.wav"
DIRECTION_PREFIX = {Direction.OUTPUT: "playback.", Direction.INPUT: "capture."}

OPTION_HELP = {
    "backend": "host audio back end of every stream (default: playback wav, capture tone)",
    "playback.backend": "back end of the playback streams (overrides backend=)",
    "capture.backend": "back end of the capture streams (overrides backend=)",
    "backend.KEY": "back-end option, given to each direction whose back end has KEY",
    "playback.backend.KEY": "back-end option for the playback streams only",
    "capture.backend.KEY": "back-end option for the capture streams only",
    "clock": "realtime (one period per period duration, default) or fast (playback as fast as the guest "
             "sends; capture stays real time)",
}


def is_host_option(key: str) -> bool:
    """True for the keys this module parses (the topology parses the others)."""
    if key in ("backend", "clock", "playback.backend", "capture.backend"):
        return True
    return key.startswith(("backend.", "playback.backend.", "capture.backend."))


@dataclass(frozen=True)
class BackendChoice:
    name: str
    options: dict[str, str] = field(default_factory=dict)
    default_path: bool = False
    """The wav path is the built-in default (claimed when opened, not at start-up)."""

    def __str__(self) -> str:
        opts = ",".join(f"{k}={v}" for k, v in self.options.items())
        return f"{self.name}({opts})" if opts else self.name


@dataclass(frozen=True)
class HostAudioConfig:
    playback: BackendChoice
    capture: BackendChoice
    clock: str = "realtime"

    def choice(self, direction: Direction) -> BackendChoice:
        return self.playback if direction == Direction.OUTPUT else self.capture

    def create_backends(self, directions: list[Direction]) -> list[PcmBackend]:
        """One back end per stream, in stream order; bad options raise a one-line VmmError."""
        backends = []
        for stream_id, direction in enumerate(directions):
            choice = self.choice(direction)
            backends.append(create_backend(choice.name, choice.options, direction, stream_id,
                                           claim=not choice.default_path))
        return backends

    def __str__(self) -> str:
        return f"playback {self.playback}, capture {self.capture}, clock {self.clock}"


def from_options(options: dict[str, str]) -> HostAudioConfig:
    """Parse the host-side options (other keys are ignored); errors are one-line VmmErrors."""
    clock = options.get("clock", "realtime").strip().lower()
    if clock not in CLOCKS:
        raise VmmError(f"virtio-snd: clock={clock!r} is not one of {', '.join(CLOCKS)}")
    shared = {k.removeprefix("backend."): v for k, v in options.items() if k.startswith("backend.")}
    choices = {}
    for direction, prefix in DIRECTION_PREFIX.items():
        name = options.get(prefix + "backend", options.get("backend", DEFAULT_BACKEND[direction])).strip()
        if name not in BACKENDS:
            raise VmmError(f"virtio-snd: unknown backend {name!r} (known: {', '.join(BACKENDS)})")
        own = {k.removeprefix(prefix + "backend."): v for k, v in options.items()
               if k.startswith(prefix + "backend.")}
        known = BACKENDS[name].options
        opts = {k: v for k, v in shared.items() if k in known}
        opts.update(own)
        default_path = False
        if name == "wav" and direction == Direction.OUTPUT and "path" not in opts:
            opts["path"] = DEFAULT_WAV_PATH
            default_path = True
        choices[direction] = BackendChoice(name, opts, default_path)
    for key in shared:
        if not any(key in BACKENDS[c.name].options for c in choices.values()):
            names = " / ".join(sorted({c.name for c in choices.values()}))
            raise VmmError(f"virtio-snd: backend.{key}: no option {key!r} in back end {names} "
                           f"(--device virtio-snd,help lists them)")
    return HostAudioConfig(choices[Direction.OUTPUT], choices[Direction.INPUT], clock)


def written_files(backends: list[PcmBackend]) -> list[str]:
    """One line per WAV file the playback streams wrote (told to the user at exit: with the
    default options nobody asked for the file, so they must learn where it is)."""
    lines = []
    for stream_id, backend in enumerate(backends):
        for path in getattr(backend, "files", ()):
            lines.append(f"virtio-snd: stream {stream_id} playback written to {path}")
    return lines


def describe_options() -> str:
    lines = ["host audio options:"]
    lines += [f"  {key:<21} {text}" for key, text in OPTION_HELP.items()]
    lines.append("example: --device virtio-snd,backend.path=out.wav,capture.backend=wav,"
                 "capture.backend.input=in.wav,capture.backend.loop=on")
    return "\n".join(lines) + "\n" + describe_backends()
