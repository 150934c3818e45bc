"""``pyvmm trace summary``: per-stream figures from a JSON-lines trace."""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from pyvmm.errors import VmmError


def read_records(path: Path) -> Iterator[dict[str, Any]]:
    """The records of ``path``; a torn last line (a killed VMM) is skipped, other bad lines are errors."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise VmmError(f"cannot read trace {path}: {exc.strerror}") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            yield json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines):
                return
            raise VmmError(f"{path}:{number}: not a JSON trace record") from None


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


@dataclass
class StreamFigures:
    dev: str
    stream: int
    dir: str = "?"
    queued: int = 0
    statuses: Counter = field(default_factory=Counter)
    bytes: int = 0
    rejects: int = 0
    xruns: int = 0
    completions: list[float] = field(default_factory=list)
    late_ms: list[float] = field(default_factory=list)
    in_flight_max: int = 0
    _in_flight: int = 0


def summarize(records: Iterator[dict[str, Any]]) -> tuple[dict[tuple[str, int], StreamFigures], Counter]:
    """Per (device, stream) figures, and counts of every other (cat, kind)."""
    streams: dict[tuple[str, int], StreamFigures] = {}
    other: Counter = Counter()
    for rec in records:
        cat, kind = rec.get("cat"), rec.get("kind")
        if cat != "io" or "stream" not in rec:
            other[f"{cat} {kind}"] += 1
            continue
        key = (rec.get("dev", "?"), int(rec["stream"]))
        fig = streams.setdefault(key, StreamFigures(*key))
        fig.dir = rec.get("dir", fig.dir)
        if kind == "queued":
            fig.queued += 1
            fig._in_flight += 1
            fig.in_flight_max = max(fig.in_flight_max, fig._in_flight)
        elif kind == "complete":
            fig._in_flight = max(0, fig._in_flight - 1)
            fig.statuses[rec.get("status", "?")] += 1
            fig.bytes += int(rec.get("bytes", 0))
            fig.completions.append(float(rec["t"]))
            if rec.get("late_ms") is not None:
                fig.late_ms.append(float(rec["late_ms"]))
        elif kind == "reject":
            fig.rejects += 1
        elif kind == "xrun":
            fig.xruns += 1
    return streams, other


def _spread(values: list[float]) -> str:
    if not values:
        return "-"
    return (f"{min(values):.2f}/{percentile(values, 50):.2f}/{percentile(values, 99):.2f}/"
            f"{max(values):.2f}")


def format_summary(path: Path) -> str:
    streams, other = summarize(read_records(path))
    lines = []
    if not streams:
        lines.append("no I/O messages in this trace")
    for (dev, stream), fig in sorted(streams.items()):
        gaps = [(b - a) * 1000 for a, b in zip(fig.completions, fig.completions[1:])]
        statuses = ", ".join(f"{k} {v}" for k, v in sorted(fig.statuses.items())) or "none"
        lines += [
            f"{dev} stream {stream} ({fig.dir}):",
            f"  messages queued {fig.queued}, completed {sum(fig.statuses.values())} ({statuses}), "
            f"refused {fig.rejects}, most in flight {fig.in_flight_max}",
            f"  periods {sum(fig.statuses.values())}, bytes {fig.bytes}, underruns/overruns {fig.xruns}",
            f"  gap between completions ms min/median/p99/max: {_spread(gaps)}",
            f"  completion lateness ms min/median/p99/max: {_spread(fig.late_ms)}",
        ]
    if other:
        lines.append("other records: " + ", ".join(f"{k} {v}" for k, v in sorted(other.items())))
    return "\n".join(lines)
