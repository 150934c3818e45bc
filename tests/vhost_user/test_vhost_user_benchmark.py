"""Figures for the vhost-user data path (printed, never asserted): kick eventfd -> device on the
back end's event loop -> used ring -> call eventfd, as a front end sees it."""

from __future__ import annotations

from vhost_frontend import eventfd_fired, start_device


def test_bench_kick_to_call_round_trip(benchmark, frontend, device):
    start_device(frontend, device)
    ring = frontend.rings[0]
    payload = bytes(range(64))

    def setup():
        ring.collect()
        ring.add([payload], [64])

    def one():
        frontend.kick(0)
        assert eventfd_fired(frontend.call_fds[0])

    benchmark.pedantic(one, setup=setup, rounds=300)
    assert ring.collect()[-1].written == payload.upper()
