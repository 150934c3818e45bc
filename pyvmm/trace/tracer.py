"""Which devices and categories are traced, and where their records go."""

from __future__ import annotations

import json
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, TextIO

from pyvmm.errors import VmmError

CATEGORIES = ("ctl", "io", "evt", "queue", "irq", "mmio", "fault", "spec")
"""ctl: control requests and responses; io: I/O messages (queued, completed); evt: device
events (jack, xrun, ...); queue: driver notifications and queue faults; irq: interrupts to the
driver; mmio: transport register accesses (very verbose); fault: injected faults; spec: the
driver broke a rule of the spec (:mod:`pyvmm.conformance`)."""

DEFAULT_CATEGORIES = frozenset(c for c in CATEGORIES if c != "mmio")


@dataclass(frozen=True)
class TraceSpec:
    """One ``--trace-dev`` value: ``snd`` (every snd device), ``snd0``, ``all``; ``:ctl,io`` picks
    categories (default: all but ``mmio``)."""

    device: str
    categories: frozenset[str]

    def matches(self, device_name: str) -> bool:
        if self.device in ("all", "*"):
            return True
        if device_name == self.device:
            return True
        # A type prefix (``snd``) matches its numbered instances (``snd0``, ``snd1``).
        return device_name.startswith(self.device) and device_name[len(self.device):].isdigit()


def parse_trace_specs(values: list[str] | tuple[str, ...]) -> list[TraceSpec]:
    """``["snd:ctl,io", "snd1"]`` -> specs; a bad category is a one-line error."""
    specs = []
    for value in values:
        device, _, cats = value.partition(":")
        if not device:
            raise VmmError(f"--trace-dev {value!r}: name a device (snd, snd0, all)")
        if cats:
            chosen = frozenset(c.strip() for c in cats.split(",") if c.strip())
            unknown = sorted(chosen - set(CATEGORIES) - {"all"})
            if unknown:
                raise VmmError(f"--trace-dev {value!r}: unknown category {', '.join(unknown)} "
                               f"(choose from {', '.join(CATEGORIES)}, all)")
            if "all" in chosen:
                chosen = frozenset(CATEGORIES)
        else:
            chosen = DEFAULT_CATEGORIES
        specs.append(TraceSpec(device, chosen))
    return specs


@dataclass(frozen=True)
class TraceRecord:
    """One trace record: seconds since the VM started, device, category, kind, fields."""

    t: float
    dev: str
    cat: str
    kind: str
    fields: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"t": round(self.t, 6), "dev": self.dev, "cat": self.cat, "kind": self.kind, **self.fields}

    def format(self) -> str:
        """``[  12.345678] snd0 ctl PCM_SET_PARAMS stream=0 ... -> OK`` (``desc`` and ``status``
        fields, when present, read as the line's text and its outcome)."""
        fields = dict(self.fields)
        desc = fields.pop("desc", None)
        status = fields.pop("status", None)
        if desc:
            fields.pop("code", None)  # the description starts with it
        parts = [f"[{self.t:12.6f}] {self.dev} {self.cat} {self.kind}"]
        if desc:
            parts.append(str(desc))
        parts.extend(f"{k}={_short(v)}" for k, v in fields.items())
        line = " ".join(parts)
        return f"{line} -> {status}" if status is not None else line


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6f}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_short(v) for v in value) + "]"
    return str(value)


Writer = Callable[[TraceRecord], None]


class Tracer:
    """Routes records of the traced devices and categories to the console and a JSONL file.

    Records come from any thread (vCPUs write MMIO registers, the device loop completes
    messages); one lock keeps lines whole. The JSONL file is line-buffered, so a VMM that is
    interrupted or killed leaves every record written so far, each a whole line.
    """

    def __init__(self, specs: list[TraceSpec], console: TextIO | None = None, jsonl_path: Path | None = None,
                 start: float | None = None):
        self.specs = specs
        self.start = time.monotonic() if start is None else start
        self._lock = threading.Lock()
        self._writers: list[Writer] = []
        self._jsonl: TextIO | None = None
        self.records = 0
        if console is not None:
            self._writers.append(lambda r: print(r.format(), file=console, flush=True))
        if jsonl_path is not None:
            try:
                self._jsonl = open(jsonl_path, "w", encoding="utf-8", buffering=1)
            except OSError as exc:
                raise VmmError(f"--trace-file {jsonl_path}: {exc.strerror}") from None
            self._writers.append(self._write_json)

    @classmethod
    def from_options(cls, trace_dev: list[str] | tuple[str, ...], trace_file: str | None) -> Tracer | None:
        """The tracer for ``--trace-dev``/``--trace-file``, or None when neither was given.
        ``--trace-file`` alone traces every device (default categories) to the file only."""
        specs = parse_trace_specs(trace_dev)
        if not specs and trace_file is None:
            return None
        if not specs:
            specs = parse_trace_specs(["all"])
        return cls(specs, console=sys.stderr if trace_dev else None,
                   jsonl_path=Path(trace_file) if trace_file else None)

    def categories_for(self, device_name: str) -> frozenset[str]:
        """The categories traced for ``device_name`` (empty: not traced)."""
        chosen: frozenset[str] = frozenset()
        for spec in self.specs:
            if spec.matches(device_name):
                chosen |= spec.categories
        return chosen

    def add_writer(self, writer: Writer) -> None:
        """Also hand every record to ``writer`` (tests, the conformance checker)."""
        with self._lock:
            self._writers.append(writer)

    def record(self, dev: str, cat: str, kind: str, fields: dict[str, Any]) -> TraceRecord:
        rec = TraceRecord(time.monotonic() - self.start, dev, cat, kind, fields)
        with self._lock:
            self.records += 1
            for writer in self._writers:
                writer(rec)
        return rec

    def _write_json(self, rec: TraceRecord) -> None:
        if self._jsonl is not None:
            self._jsonl.write(json.dumps(rec.to_json(), separators=(",", ":")) + "\n")

    def close(self) -> None:
        with self._lock:
            if self._jsonl is not None:
                self._jsonl.close()
                self._jsonl = None
