"""The device event loop: one asyncio loop in a daemon thread that runs every device callback.

Devices are single-threaded by construction: queue notifications (ioeventfds), timers and
completions all run here, while vCPU threads only touch registers and hand work over with
:meth:`DeviceEventLoop.call_soon` (fire and forget) or :meth:`DeviceEventLoop.call` (wait for
the result, e.g. a driver-initiated reset that must be complete before the register write
returns). An exception in a callback is logged with its traceback; the loop keeps running.

Order: work handed over runs in the order it was handed over (one FIFO, whichever thread
handed it), before any fd readiness the loop sees afterwards. Front ends rely on it: a driver
reset handed over before a notification is done before that notification is served.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from typing import Any, Callable

log = logging.getLogger(__name__)


class DeviceEventLoop:
    """An asyncio event loop running in its own thread."""

    def __init__(self, name: str = "pyvmm-devices"):
        self.name = name
        self.loop = asyncio.new_event_loop()
        self.loop.set_exception_handler(self._log_exception)
        self._thread: threading.Thread | None = None
        self._started = threading.Event()

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> DeviceEventLoop:
        if self._thread is not None:
            raise RuntimeError(f"{self.name}: event loop already started")
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()
        self._started.wait()
        return self

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.call_soon(self._started.set)
        try:
            self.loop.run_forever()
        finally:
            try:
                tasks = asyncio.all_tasks(self.loop)
                for task in tasks:
                    task.cancel()
                if tasks:
                    self.loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
            except Exception:
                log.exception("%s: error while cancelling tasks at shutdown", self.name)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the loop and join its thread (at most ``timeout`` seconds); idempotent."""
        thread = self._thread
        if thread is None or not thread.is_alive():
            self._close()
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        if threading.current_thread() is thread:
            return  # stopping from inside: the loop ends after this callback
        thread.join(timeout)
        if thread.is_alive():
            log.warning("%s: event loop thread did not stop within %.1f s (a callback is blocking)",
                        self.name, timeout)
            return
        self._close()

    def _close(self) -> None:
        if not self.loop.is_closed() and not self.loop.is_running():
            self.loop.close()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self.loop.is_closed()

    def in_loop_thread(self) -> bool:
        return threading.current_thread() is self._thread

    def __enter__(self) -> DeviceEventLoop:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- handing work over ----------------------------------------------------------------

    def call_soon(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` on the loop thread; thread-safe; exceptions are logged."""
        self.loop.call_soon_threadsafe(fn, *args)

    def call(self, fn: Callable[..., Any], *args: Any, timeout: float | None = None) -> Any:
        """Run ``fn(*args)`` on the loop thread, wait for it and return its result (or raise its
        exception). Called on the loop thread itself, it simply runs ``fn``.

        After ``timeout`` seconds it raises :class:`TimeoutError` but ``fn`` is *not* cancelled:
        it still runs, in its place in the order. Callers must not undo its effect on timeout
        (see :mod:`pyvmm.virtio.mmio`: a timed-out reset must stay ordered before what follows)."""
        if self.in_loop_thread():
            return fn(*args)
        if not self.running:
            raise RuntimeError(f"{self.name}: event loop is not running")
        future: concurrent.futures.Future = concurrent.futures.Future()

        def run() -> None:
            if not future.set_running_or_notify_cancel():
                return
            try:
                future.set_result(fn(*args))
            except BaseException as e:  # handed to the caller, who re-raises it
                future.set_exception(e)

        self.loop.call_soon_threadsafe(run)
        return future.result(timeout)

    def add_reader(self, fd: int, fn: Callable[..., Any], *args: Any) -> None:
        """Watch ``fd`` for readability on the loop (thread-safe)."""
        self.call_soon(self.loop.add_reader, fd, fn, *args)

    def remove_reader(self, fd: int) -> None:
        """Stop watching ``fd``; when this returns the callback will not run again."""
        if self.running:
            self.call(self.loop.remove_reader, fd)

    # -- errors -----------------------------------------------------------------------------

    def _log_exception(self, loop: asyncio.AbstractEventLoop, context: dict) -> None:
        exc = context.get("exception")
        message = context.get("message", "unhandled error")
        where = context.get("handle") or context.get("future") or context.get("task")
        if exc is not None:
            log.error("%s: %s in %r", self.name, message, where, exc_info=exc)
        else:
            log.error("%s: %s (%r)", self.name, message, where)
