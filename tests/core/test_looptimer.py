"""The loop timer behind the period clocks: a timerfd on asyncio's loop, call_at elsewhere."""

from __future__ import annotations

import asyncio
import os
import time

from pyvmm.looptimer import CallAtTimer, TimerFd, loop_timer


def test_asyncio_loop_gets_a_timerfd_that_fires_once_at_or_after_its_deadline():
    async def main():
        loop = asyncio.get_running_loop()
        fired: list[float] = []
        timer = loop_timer(loop, lambda: fired.append(loop.time()))
        assert isinstance(timer, TimerFd)
        when = loop.time() + 0.003
        timer.arm(when)
        assert timer.armed
        await asyncio.sleep(0.03)
        assert len(fired) == 1 and fired[0] >= when and not timer.armed
        timer.close()
        return timer.fd

    assert asyncio.run(main()) == -1


def test_cancel_discards_an_expiry_the_loop_has_not_read_yet():
    async def main():
        loop = asyncio.get_running_loop()
        fired: list[int] = []
        timer = loop_timer(loop, lambda: fired.append(1))
        timer.arm(loop.time())  # already due: the fd is readable at once
        time.sleep(0.002)  # ... but the loop has not run yet
        timer.cancel()
        await asyncio.sleep(0.01)
        timer.close()
        return fired

    assert asyncio.run(main()) == []


def test_rearming_moves_the_deadline():
    async def main():
        loop = asyncio.get_running_loop()
        fired: list[float] = []
        timer = loop_timer(loop, lambda: fired.append(loop.time()))
        timer.arm(loop.time() + 0.001)
        later = loop.time() + 0.02
        timer.arm(later)
        await asyncio.sleep(0.05)
        timer.close()
        return fired, later

    fired, later = asyncio.run(main())
    assert len(fired) == 1 and fired[0] >= later


def test_close_releases_the_fd_and_the_loop_reader():
    async def main():
        loop = asyncio.get_running_loop()
        timer = loop_timer(loop, lambda: None)
        fd = timer.fd
        timer.arm(loop.time() + 10)
        timer.close()
        assert not loop.remove_reader(fd)  # no longer watched
        return fd

    fd = asyncio.run(main())
    try:
        os.fstat(fd)
    except OSError:
        pass
    else:  # the number may have been reused meanwhile; then it is not a timerfd of ours
        assert os.readlink(f"/proc/self/fd/{fd}") != "anon_inode:[timerfd]"


def test_other_loops_get_call_at():
    class Handle:
        cancelled = False

        def cancel(self):
            self.cancelled = True

    class Loop:
        def __init__(self):
            self.calls = []

        def call_at(self, when, callback):
            self.calls.append((when, callback))
            return Handle()

    loop = Loop()
    timer = loop_timer(loop, lambda: None)
    assert isinstance(timer, CallAtTimer)
    timer.arm(5.0)
    assert timer.armed and loop.calls[0][0] == 5.0
    timer.cancel()
    assert not timer.armed
