"""The spec-conformance checker: driver behaviour the virtio spec forbids, reported as it happens.

A rule (:class:`Rule`) names one normative sentence of the spec (MUST or SHOULD, quoted, with
its section) or one transition the spec's lifecycle does not allow. Devices and transports
report a broken rule through their event sink (``sink.violation(rule, detail, **state)``); the
:class:`Checker` on the VMM's event bus logs the first violation of each rule with the clause,
the offending request and the state it met, counts every one, traces it (category ``spec``)
and prints a summary at exit. With ``strict`` the first MUST (or INVALID) violation stops the VMM with exit
status :data:`STRICT_EXIT_STATUS` (for CI runs of a driver under development).

Rule catalogues live next to what checks them: :mod:`pyvmm.virtio.rules` (split virtqueues,
the virtio-mmio transport) and each device's own (``pyvmm_snd.rules``).
"""

from __future__ import annotations

import logging
import sys
import threading
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable

log = logging.getLogger("pyvmm.conformance")

STRICT_LEVELS = frozenset({"MUST", "INVALID"})
"""What ``--strict`` stops on: a broken MUST, or input that cannot be meant."""
STRICT_EXIT_STATUS = 125
"""Exit status of ``pyvmm run --strict`` (and ``pyvmm vhost-user --strict``) after a MUST violation."""


@dataclass(frozen=True)
class Rule:
    """One requirement the spec places on the driver."""

    id: str
    """Short stable name, e.g. ``snd.params.period-divides-buffer``."""
    level: str
    """``MUST`` or ``SHOULD`` (a quoted normative sentence), ``INVALID`` (the driver gave the device
    something that cannot be meant: an index or address outside what exists; ``text`` quotes the
    field's definition) or ``LIFECYCLE`` (a transition the spec's PCM state machine does not list)."""
    section: str
    """Where the sentence is: the spec's section name (and number where it has one)."""
    text: str
    """The sentence, quoted from the spec."""


@dataclass(frozen=True)
class Violation:
    device: str
    rule: Rule
    detail: str
    state: dict[str, Any]


class Checker:
    """Counts violations by rule; reports each rule's first one in full (thread-safe)."""

    def __init__(self, strict: bool = False) -> None:
        self.strict = strict
        self.counts: Counter[tuple[str, str]] = Counter()
        self.first: dict[tuple[str, str], Violation] = {}
        self.strict_violation: Violation | None = None
        self.on_strict: Callable[[Violation], None] | None = None
        """Called once, with the first MUST violation, when ``strict`` (the VM stops itself)."""
        self._lock = threading.Lock()

    def report(self, violation: Violation) -> bool:
        """Count ``violation``; True if it is the first of its rule on its device (then logged)."""
        key = (violation.device, violation.rule.id)
        with self._lock:
            self.counts[key] += 1
            first = key not in self.first
            if first:
                self.first[key] = violation
            stop = (self.strict and violation.rule.level in STRICT_LEVELS and self.strict_violation is None)
            if stop:
                self.strict_violation = violation
        if first:
            log.warning("%s", format_violation(violation))
        if stop and self.on_strict is not None:
            self.on_strict(violation)
        return first

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def summary(self) -> str:
        """``conformance: 0 violations``, or one line per broken rule with its count."""
        with self._lock:
            items = sorted(self.counts.items())
        if not items:
            return "conformance: 0 violations"
        lines = [f"conformance: {sum(n for _, n in items)} violations of {len(items)} rules"]
        for (device, rule_id), count in items:
            v = self.first[(device, rule_id)]
            lines.append(f"  {device:<6} {v.rule.level:<9} {rule_id:<40} {count:>6}x  [{v.rule.section}]")
        return "\n".join(lines)


    def log_summary(self, always: bool = False) -> None:
        """At exit: the table as a warning when the driver broke rules; otherwise
        ``conformance: 0 violations`` at INFO (``-v``), or on stderr with ``always``."""
        text = self.summary()
        if self.total:
            log.warning("%s", text)
        elif always:
            print(f"pyvmm: {text}", file=sys.stderr)
        else:
            log.info("%s", text)


def format_violation(v: Violation) -> str:
    state = ", ".join(f"{k}={val}" for k, val in v.state.items())
    return (f"conformance: {v.device}: {v.rule.level} violated [{v.rule.section}] \"{v.rule.text}\"; "
            f"{v.detail}" + (f" ({state})" if state else "") + f" [{v.rule.id}; later ones counted]")
