"""A re-armable one-shot timer for the event loop, precise to microseconds.

asyncio's ``call_at`` sleeps in ``epoll_wait``, whose timeout is whole milliseconds rounded
up: a timer fires up to 1 ms after its deadline, 0.5 ms on average, however idle the host.
That is most of a period clock's lateness. On a selector event loop (asyncio's default on
Linux) :func:`loop_timer` therefore returns a :class:`TimerFd`: a Linux ``timerfd`` armed
at an absolute ``CLOCK_MONOTONIC`` time (the clock of ``loop.time()``) and watched by the
loop like any other fd, so the loop wakes when the kernel's high-resolution timer expires.
On any other loop (the fake loops tests step by hand) it returns a :class:`CallAtTimer`
with the same interface.

Both run their callback on the loop's thread; neither is thread-safe.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import time
from typing import Callable

_CLOCK_MONOTONIC = 1
_TFD_NONBLOCK = os.O_NONBLOCK
_TFD_CLOEXEC = os.O_CLOEXEC
_TFD_TIMER_ABSTIME = 1


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _Itimerspec(ctypes.Structure):
    _fields_ = [("it_interval", _Timespec), ("it_value", _Timespec)]


_libc = ctypes.CDLL(None, use_errno=True)
_libc.timerfd_create.argtypes = [ctypes.c_int, ctypes.c_int]
_libc.timerfd_settime.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.POINTER(_Itimerspec), ctypes.c_void_p]

_DISARMED = _Itimerspec()


class TimerFd:
    """A timerfd watched by ``loop``; :meth:`arm` sets the (absolute, loop-time) deadline."""

    def __init__(self, loop: asyncio.AbstractEventLoop, callback: Callable[[], object]):
        fd = _libc.timerfd_create(_CLOCK_MONOTONIC, _TFD_NONBLOCK | _TFD_CLOEXEC)
        if fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"timerfd_create: {os.strerror(err)}")
        self.fd = fd
        self.loop = loop
        self.callback = callback
        self.armed = False
        self._spec = _Itimerspec()
        self._offset = time.monotonic() - loop.time()
        """loop.time() to CLOCK_MONOTONIC (0 for asyncio's loops, which use time.monotonic)."""
        loop.add_reader(fd, self._expired)

    def arm(self, when: float) -> None:
        """Fire once at loop time ``when`` (at once if it has passed); replaces any earlier deadline."""
        t = when + self._offset
        sec = int(t)
        value = self._spec.it_value
        value.tv_sec = sec
        value.tv_nsec = max(1, min(int((t - sec) * 1e9), 999_999_999))  # 0 would disarm
        self._settime(self._spec)
        self.armed = True

    def cancel(self) -> None:
        """Disarm (an expiry not yet read is discarded: setting the timer clears its count)."""
        if self.armed and self.fd >= 0:
            self._settime(_DISARMED)
        self.armed = False

    def close(self) -> None:
        if self.fd < 0:
            return
        self.armed = False
        if not self.loop.is_closed():
            self.loop.remove_reader(self.fd)
        os.close(self.fd)
        self.fd = -1

    def __del__(self) -> None:
        if getattr(self, "fd", -1) >= 0:
            os.close(self.fd)

    def _settime(self, spec: _Itimerspec) -> None:
        if _libc.timerfd_settime(self.fd, _TFD_TIMER_ABSTIME, ctypes.byref(spec), None) < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"timerfd_settime: {os.strerror(err)}")

    def _expired(self) -> None:
        try:
            os.read(self.fd, 8)
        except OSError:  # EAGAIN included
            return  # cancelled or re-armed after it expired: nothing is due
        self.armed = False
        self.callback()


class CallAtTimer:
    """The same interface over ``loop.call_at`` (millisecond precision on asyncio's loops)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, callback: Callable[[], object]):
        self.loop = loop
        self.callback = callback
        self._handle: asyncio.TimerHandle | None = None

    @property
    def armed(self) -> bool:
        return self._handle is not None

    def arm(self, when: float) -> None:
        self.cancel()
        self._handle = self.loop.call_at(when, self._expired)

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def close(self) -> None:
        self.cancel()

    def _expired(self) -> None:
        self._handle = None
        self.callback()


def loop_timer(loop: asyncio.AbstractEventLoop, callback: Callable[[], object]) -> TimerFd | CallAtTimer:
    """A :class:`TimerFd` on a selector event loop, else a :class:`CallAtTimer`."""
    if isinstance(loop, asyncio.selector_events.BaseSelectorEventLoop) and not loop.is_closed():
        return TimerFd(loop, callback)
    return CallAtTimer(loop, callback)
