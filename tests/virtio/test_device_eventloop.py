"""DeviceEventLoop: runs callbacks on its own thread, survives their exceptions, stops cleanly."""

import logging
import os
import threading

import pytest

from pyvmm.eventloop import DeviceEventLoop


def test_call_runs_on_the_loop_thread_and_returns(device_loop):
    assert device_loop.call(threading.current_thread) is device_loop._thread
    assert device_loop.call(lambda a, b: a + b, 2, 3) == 5


def test_call_reraises(device_loop):
    def boom():
        raise KeyError("x")
    with pytest.raises(KeyError):
        device_loop.call(boom)
    assert device_loop.call(lambda: 1) == 1


def test_call_from_the_loop_thread_does_not_deadlock(device_loop):
    assert device_loop.call(lambda: device_loop.call(lambda: 42)) == 42


def test_exception_in_callback_is_logged_and_loop_survives(device_loop, caplog):
    def bad():
        raise RuntimeError("device bug")
    with caplog.at_level(logging.ERROR, logger="pyvmm.eventloop"):
        device_loop.call_soon(bad)
        assert device_loop.call(lambda: "still alive") == "still alive"
    assert "device bug" in caplog.text and "Traceback" in caplog.text


def test_call_soon_order_and_readers(device_loop):
    seen = []
    done = threading.Event()
    fd = os.eventfd(0, os.EFD_NONBLOCK)
    try:
        def on_read():
            seen.append(os.eventfd_read(fd))
            done.set()
        device_loop.add_reader(fd, on_read)
        for i in range(3):
            device_loop.call_soon(seen.append, i)
        os.eventfd_write(fd, 7)
        assert done.wait(5)
        device_loop.remove_reader(fd)
        assert seen == [0, 1, 2, 7]
    finally:
        os.close(fd)


def test_stop_is_bounded_and_idempotent():
    loop = DeviceEventLoop("t").start()
    assert loop.running
    loop.stop()
    assert not loop.running
    loop.stop()
    with pytest.raises(RuntimeError):
        loop.call(lambda: 1)


def test_stop_cancels_pending_tasks():
    import asyncio
    cancelled = threading.Event()

    async def forever():
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    with DeviceEventLoop("t") as loop:
        loop.call(lambda: loop.loop.create_task(forever()))
    assert cancelled.is_set()


def test_stop_with_a_blocked_callback_is_bounded(caplog):
    release = threading.Event()
    loop = DeviceEventLoop("blocked").start()
    loop.call_soon(release.wait, 10)
    loop.stop(timeout=0.2)
    assert "did not stop" in caplog.text
    release.set()
    loop._thread.join(5)
    assert not loop.running


def test_call_that_times_out_still_runs_in_order(device_loop):
    release = threading.Event()
    order = []
    device_loop.call_soon(release.wait, 5)
    with pytest.raises(TimeoutError):
        device_loop.call(order.append, "timed out", timeout=0.05)
    device_loop.call_soon(order.append, "after")
    release.set()
    device_loop.call(lambda: None, timeout=5)
    assert order == ["timed out", "after"]
