"""One line per build step, stamped with the time since the build started."""

from __future__ import annotations

import time
from typing import Callable


class Progress:
    def __init__(self, sink: Callable[[str], object] | None = print):
        self._sink = sink
        self._start = time.monotonic()

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self._start

    def __call__(self, message: str) -> None:
        if self._sink is not None:
            self._sink(f"[{format_duration(self.elapsed):>7}] {message}")


def format_duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}m{secs:02d}s"
