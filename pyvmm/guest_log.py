"""Rate-limited logging of guest errors: the one limiter for the whole VMM.

A driver's mistake (a malformed chain, a register write in the wrong state, a bad request) is
worth one WARNING line: it is what a user debugging that driver wants to see. A looping or
hostile driver repeats the mistake thousands of times a second, and resets do not make it
new. So every guest-error line goes through :func:`guest_error`, which

* groups reports by *kind* (the logger name and the message's format string, i.e. the code
  site, not the values),
* logs each kind at WARNING at most :attr:`GuestErrorLog.burst` times, then at most once per
  :attr:`GuestErrorLog.interval` seconds (saying how many were held back meanwhile),
* caps all kinds together at :attr:`GuestErrorLog.total_burst` lines plus one per
  :attr:`GuestErrorLog.total_interval` seconds,
* logs everything it holds back at DEBUG on the same logger (``-vv`` shows every report),
* counts every report for the whole VM lifetime (device and driver resets do not restart
  the limits), and :func:`log_summary` prints the counts when the VMM exits.

One pyvmm process runs one VM (or serves one vhost-user device), so the limiter is
process-wide: :data:`GUEST_ERRORS`. Tests call :func:`reset` between cases.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from typing import Callable

__all__ = ["GuestErrorLog", "GUEST_ERRORS", "guest_error", "log_summary", "reset"]

log = logging.getLogger(__name__)


class _Bucket:
    """A token bucket: ``capacity`` tokens, one more every ``interval`` seconds."""

    __slots__ = ("capacity", "interval", "tokens", "stamp")

    def __init__(self, capacity: int, interval: float, now: float):
        self.capacity = capacity
        self.interval = interval
        self.tokens = float(capacity)
        self.stamp = now

    def take(self, now: float) -> bool:
        if self.interval > 0:
            self.tokens = min(self.capacity, self.tokens + (now - self.stamp) / self.interval)
        self.stamp = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


class _Kind:
    __slots__ = ("bucket", "count", "warned", "held_back", "logger", "message")

    def __init__(self, bucket: _Bucket, logger: logging.Logger, message: str):
        self.bucket = bucket
        self.count = 0
        self.warned = 0
        self.held_back = 0
        """Reports logged at DEBUG since this kind's last WARNING line."""
        self.logger = logger
        self.message = message


class GuestErrorLog:
    """Counts guest errors and decides which are logged at WARNING (see the module doc)."""

    burst = 5
    """WARNING lines per kind before the per-kind rate applies."""
    interval = 60.0
    """After the burst: one WARNING line per kind per this many seconds."""
    total_burst = 50
    """WARNING lines of all kinds together before the overall rate applies."""
    total_interval = 6.0
    """After that: one WARNING line (any kind) per this many seconds."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._lock = threading.Lock()
        self.restart(clock)

    def restart(self, clock: Callable[[], float] = time.monotonic) -> None:
        """Forget every count: a new VM lifetime."""
        self._clock = clock
        self._kinds: dict[tuple[str, str], _Kind] = {}
        self._total = _Bucket(self.total_burst, self.total_interval, clock())
        self.reported = 0
        """Guest errors reported in this VM's lifetime."""
        self.suppressed = 0
        """Of those, logged at DEBUG only."""

    def report(self, logger: logging.Logger, message: str, *args: object) -> bool:
        """Log one guest error (``logger.warning(message, *args)`` if the limits allow, else
        at DEBUG); returns True if it went out at WARNING."""
        key = (logger.name, message)
        with self._lock:
            now = self._clock()
            kind = self._kinds.get(key)
            if kind is None:
                kind = self._kinds[key] = _Kind(_Bucket(self.burst, self.interval, now), logger, message)
            kind.count += 1
            self.reported += 1
            # the per-kind bucket first: a kind that is over its own limit does not use up
            # the overall allowance other kinds need
            loud = kind.bucket.take(now) and self._total.take(now)
            if loud:
                held_back, kind.held_back = kind.held_back, 0
                kind.warned += 1
                last_of_burst = kind.warned == self.burst
            else:
                kind.held_back += 1
                self.suppressed += 1
        if not loud:
            logger.debug(message, *args)
            return False
        if held_back or last_of_burst:
            text = message % args if args else message  # the caller's text may hold a bare '%'
            note = (f"{held_back} more like this since the last report" if held_back
                    else "reports like this are rate-limited from now on; -vv shows all")
            logger.warning("%s (%s)", text, note)
        else:
            logger.warning(message, *args)
        return True

    def counts(self) -> list[tuple[str, str, int]]:
        """``(logger name, message format, count)`` per kind, most frequent first."""
        with self._lock:
            rows = [(name, message, kind.count) for (name, message), kind in self._kinds.items()]
        return sorted(rows, key=lambda row: -row[2])

    def summary(self, top: int = 3) -> str | None:
        """One line about this VM's guest errors, or None if there were none."""
        if not self.reported:
            return None
        rows = self.counts()
        kinds = "; ".join(f"{count} x {name}: {message!r}" for name, message, count in rows[:top])
        more = f"; {len(rows) - top} more kinds" if len(rows) > top else ""
        hidden = f", {self.suppressed} of them logged at DEBUG only (-vv shows all)" if self.suppressed else ""
        return f"{self.reported} guest errors in this VM's lifetime{hidden}: {kinds}{more}"

    def log_summary(self, logger: logging.Logger = log) -> None:
        """At exit: the summary at WARNING if reports were held back, at INFO otherwise."""
        text = self.summary()
        if text is not None:
            logger.log(logging.WARNING if self.suppressed else logging.INFO, "%s", text)


GUEST_ERRORS = GuestErrorLog()
"""The process's (= the VM's) guest-error log."""


def guest_error(logger: logging.Logger, message: str, *args: object) -> bool:
    """Report a guest error through the VM's limiter (see :class:`GuestErrorLog`)."""
    return GUEST_ERRORS.report(logger, message, *args)


def log_summary(logger: logging.Logger = log) -> None:
    GUEST_ERRORS.log_summary(logger)


def reset(clock: Callable[[], float] = time.monotonic) -> GuestErrorLog:
    """Start a new VM lifetime (tests; an embedder running several VMs one after another)."""
    GUEST_ERRORS.restart(clock)
    return GUEST_ERRORS
