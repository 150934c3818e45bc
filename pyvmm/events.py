"""The event bus: the one place where the VMM and its devices publish what happened.

Producers (the VM: ``STOP``, ``RESUME``, ``SHUTDOWN``; a device: ``SND_JACK_CHANGED``,
``SND_PCM_XRUN``, ...) call :meth:`EventBus.emit`; consumers (the QMP server, later traces)
:meth:`~EventBus.subscribe`. Producers never know who listens, so a device never imports a
consumer. Event names follow QMP's convention (``ALL_CAPS``); ``data`` must be JSON-able.

A device publishes through the :class:`EventSink` the VMM gives it
(``VirtioDevice.event_sink``), which adds the device's name as ``data["device"]``.

Subscribers are called synchronously on the emitting thread (a vCPU, the device event loop,
a monitor thread), in subscription order, and must return quickly without blocking: the QMP
server only queues the event for its own thread. A subscriber that raises is logged and the
others still run; the producer never sees the error.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from pyvmm.conformance import Checker, Rule
    from pyvmm.trace import Tracer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Event:
    """One published event: QMP-style ``name``, JSON-able ``data``, when it happened."""

    name: str
    data: dict[str, Any] = field(default_factory=dict)
    wall_time: float = field(default_factory=time.time)
    """Seconds since the epoch (QMP's ``timestamp``)."""
    monotonic: float = field(default_factory=time.monotonic)
    """``time.monotonic()`` at emission (for traces relative to the VM start)."""


Subscriber = Callable[[Event], None]


class EventBus:
    """Fan-out of :class:`Event` to subscribers (thread-safe; see the module docstring)."""

    def __init__(self, tracer: Tracer | None = None, checker: Checker | None = None) -> None:
        from pyvmm.conformance import Checker

        self._subscribers: tuple[Subscriber, ...] = ()
        self._lock = threading.Lock()
        self.tracer = tracer
        """Where decoded trace records go (``--trace-dev``/``--trace-file``); None: not traced."""
        self.checker = checker or Checker()
        """The spec-conformance checker devices report driver violations to (always on)."""

    def subscribe(self, fn: Subscriber) -> Callable[[], None]:
        """Call ``fn(event)`` for every later event; returns a function that unsubscribes."""
        with self._lock:
            self._subscribers = (*self._subscribers, fn)

        def unsubscribe() -> None:
            with self._lock:
                self._subscribers = tuple(s for s in self._subscribers if s is not fn)

        return unsubscribe

    def emit(self, name: str, **data: Any) -> Event:
        """Publish ``name`` with ``data`` to every subscriber; returns the event."""
        event = Event(name, data)
        for fn in self._subscribers:  # a snapshot: (un)subscribing meanwhile is safe
            try:
                fn(event)
            except Exception:
                log.exception("event subscriber %r failed on %s", fn, name)
        return event

    def sink(self, device: str) -> EventSink:
        """An :class:`EventSink` for the device named ``device`` (``snd0``)."""
        return EventSink(self, device)


class EventSink:
    """What a device publishes through: ``sink.emit("SND_PCM_XRUN", stream=0)`` adds ``device``;
    ``if sink.tracing("io"): sink.trace("io", "complete", stream=0, ...)`` records a trace line
    (:mod:`pyvmm.trace`) when that category of this device is traced."""

    def __init__(self, bus: EventBus | None, device: str):
        self.bus = bus
        self.device = device
        tracer = bus.tracer if bus is not None else None
        self._tracer = tracer
        self.traced: frozenset[str] = tracer.categories_for(device) if tracer is not None else frozenset()
        """The trace categories on for this device (empty: tracing off, and free)."""

    def emit(self, name: str, **data: Any) -> None:
        if self.bus is not None:
            self.bus.emit(name, device=self.device, **data)

    def tracing(self, category: str) -> bool:
        """Is ``category`` (``ctl``, ``io``, ...) traced for this device? Check before building a record."""
        return category in self.traced

    def since_start(self, monotonic: float | None = None) -> float:
        """``monotonic`` (default: now) as seconds since the VM started, the traces' time base."""
        t = time.monotonic() if monotonic is None else monotonic
        return t - self._tracer.start if self._tracer is not None else t

    def trace(self, category: str, kind: str, **fields: Any) -> None:
        """Record ``kind`` with ``fields`` (JSON-able) if ``category`` is traced for this device."""
        if category in self.traced:
            self._tracer.record(self.device, category, kind, fields)

    def violation(self, rule: Rule, detail: str, **state: Any) -> None:
        """The driver broke ``rule`` (:mod:`pyvmm.conformance`): ``detail`` says how (the request,
        decoded), ``state`` what it met (stream state, queue indexes). Counted, the first of each
        rule logged with the spec sentence, traced as ``spec violation``."""
        if self.bus is None:
            return
        from pyvmm.conformance import Violation

        self.bus.checker.report(Violation(self.device, rule, detail, state))
        self.trace("spec", "violation", rule=rule.id, level=rule.level, section=rule.section, detail=detail,
                   **{k: v if isinstance(v, (int, float, str, bool)) or v is None else str(v)
                      for k, v in state.items()})


NO_EVENTS = EventSink(None, "")
"""The sink of a device no VMM has attached to a bus: events go nowhere."""
