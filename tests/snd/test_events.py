"""The event queue: pre-posted buffers are held, events fill them (8 bytes), a bounded backlog
waits for buffers, jack/xrun events go out only when they should."""

from __future__ import annotations

import logging

import pytest

from pyvmm_snd import spec
from pyvmm_snd.events import EventQueue
from pyvmm_snd.spec import EventCode, PcmFeature, QueueIndex, RequestCode, Status
from snd_driver import SndDriver


def test_buffers_are_held_until_an_event():
    with SndDriver() as d:
        d.start(event_buffers=5)
        assert len(d.device.events.buffers) == 5
        assert d.collect(QueueIndex.EVENT) == []
        d.device.set_jack(0, False)
        entries = d.collect(QueueIndex.EVENT)
        assert [e.len for e in entries] == [8]
        event = spec.Event.from_buffer_copy(entries[0].written)
        assert (event.code, event.data) == (EventCode.JACK_DISCONNECTED, 0)
        assert len(d.device.events.buffers) == 4
        assert QueueIndex.EVENT in d.signals


def test_events_wait_for_buffers_in_order():
    with SndDriver() as d:
        d.start(event_buffers=0)
        d.device.set_jack(0, False)
        d.device.set_jack(1, False)
        d.device.set_jack(0, True)
        assert len(d.device.events.backlog) == 3
        d.post_event_buffers(2)
        d.device.queue_notify(QueueIndex.EVENT)
        got = [(e.code, e.data) for e in d.events()]
        assert got == [(EventCode.JACK_DISCONNECTED, 0), (EventCode.JACK_DISCONNECTED, 1)]
        d.post_event_buffers(4)
        d.device.queue_notify(QueueIndex.EVENT)
        assert [(e.code, e.data) for e in d.events()] == [(EventCode.JACK_CONNECTED, 0)]
        assert len(d.device.events.buffers) == 3


def test_posting_a_buffer_before_activation():
    with SndDriver() as d:
        d.post_event_buffers(3)
        d.device.queue_notify(QueueIndex.EVENT)  # before DRIVER_OK: ignored
        d.activate()
        assert len(d.device.events.buffers) == 3


def test_same_jack_state_sends_nothing():
    with SndDriver() as d:
        d.start()
        d.device.set_jack(0, True)  # already connected
        assert d.events() == []


def test_bad_jack_id():
    from pyvmm.errors import VmmError
    with SndDriver() as d:
        d.start()
        with pytest.raises(VmmError, match="jack 5"):
            d.device.set_jack(5, True)


def test_backlog_is_bounded_and_logs(caplog):
    caplog.set_level(logging.WARNING, logger="pyvmm_snd.events")
    queue = EventQueue(max_backlog=3)
    for jack in range(5):
        queue.jack(jack, True)
    assert [spec.Event.from_buffer_copy(b).data for b in queue.backlog] == [2, 3, 4]
    assert queue.dropped == 2
    assert sum("backlog full" in r.getMessage() for r in caplog.records) == 2


def test_too_small_or_readable_event_buffers_are_returned_unused(caplog):
    with SndDriver() as d:
        d.queues[QueueIndex.EVENT].add(writable=[4])
        d.queues[QueueIndex.EVENT].add(readable=[bytes(8)], writable=[8])
        d.post_event_buffers(1)
        d.activate()
        entries = d.collect(QueueIndex.EVENT)
        assert [e.len for e in entries] == [0, 0]
        assert len(d.device.events.buffers) == 1


def test_event_split_across_descriptors():
    with SndDriver() as d:
        d.queues[QueueIndex.EVENT].add(writable=[3, 5])
        d.activate()
        d.device.set_jack(1, False)
        [entry] = d.collect(QueueIndex.EVENT)
        assert entry.len == 8
        event = spec.Event.from_buffer_copy(entry.written)
        assert (event.code, event.data) == (EventCode.JACK_DISCONNECTED, 1)


def test_reset_drops_buffers_and_backlog():
    with SndDriver() as d:
        d.start(event_buffers=2)
        d.device.events.send(spec.Event(code=EventCode.PCM_XRUN, data=0))
        d.device.events.send(spec.Event(code=EventCode.PCM_XRUN, data=0))
        d.device.events.send(spec.Event(code=EventCode.PCM_XRUN, data=0))
        d.collect(QueueIndex.EVENT)
        assert len(d.device.events.backlog) == 1
        d.device.reset()
        assert not d.device.events.buffers and not d.device.events.backlog


def test_xrun_only_when_selected_and_running():
    with SndDriver() as d:
        d.start()
        assert d.set_params(0) == Status.OK  # EVT_XRUNS offered but not selected
        assert d.pcm(RequestCode.PCM_PREPARE, 0) == Status.OK and d.pcm(RequestCode.PCM_START, 0) == Status.OK
        assert d.device.report_xrun(0) is False
        assert d.set_params(1, features=1 << PcmFeature.EVT_XRUNS) == Status.OK
        assert d.device.report_xrun(1) is False  # not started
        assert d.pcm(RequestCode.PCM_PREPARE, 1) == Status.OK and d.pcm(RequestCode.PCM_START, 1) == Status.OK
        assert d.device.report_xrun(1) is True
        assert [(e.code, e.data) for e in d.events()] == [(EventCode.PCM_XRUN, 1)]


def test_ctl_notify_not_sent_without_ctls():
    with SndDriver(features=0) as d:
        d.start()
        d.device.set_control(0, [10])
        assert d.events() == []
        assert d.device.controls.value(0) == [10]


def test_host_calls_from_another_thread_run_on_the_device_loop():
    import asyncio
    import threading

    with SndDriver(loop=asyncio.new_event_loop()) as d:
        loop_thread_ids = []
        ready = threading.Event()

        def run_loop():
            asyncio.set_event_loop(d.loop)
            d.loop.call_soon(ready.set)
            d.loop.run_forever()

        t = threading.Thread(target=run_loop)
        t.start()
        ready.wait(5)
        try:
            done = threading.Event()
            d.loop.call_soon_threadsafe(lambda: (d.start(), done.set()))
            assert done.wait(5)
            original = d.device.events.jack
            d.device.events.jack = lambda *a: (loop_thread_ids.append(threading.get_ident()), original(*a))
            d.device.set_jack(0, False)
            flushed = threading.Event()
            d.loop.call_soon_threadsafe(flushed.set)
            assert flushed.wait(5)
            assert loop_thread_ids == [t.ident]
        finally:
            d.loop.call_soon_threadsafe(d.loop.stop)
            t.join(5)
        assert [(e.code, e.data) for e in d.events()] == [(EventCode.JACK_DISCONNECTED, 0)]
