"""Message framing when a peer's bytes arrive in arbitrary pieces: :meth:`Connection.poll`
assembles exactly the messages that were sent, fds included, whatever the cut points, and
never blocks while a message is incomplete."""

from __future__ import annotations

import os
import socket

from hypothesis import given, settings
from hypothesis import strategies as st

from pyvmm.vhost_user import messages as m
from pyvmm.vhost_user.connection import Connection, Disconnected

messages = st.lists(st.tuples(st.integers(1, 43), st.sampled_from([0, m.HeaderFlags.NEED_REPLY]),
                              st.binary(max_size=300), st.integers(0, 2)), min_size=1, max_size=6)


@settings(max_examples=200, deadline=None)
@given(sent=messages, cuts=st.lists(st.integers(1, 64), max_size=40))
def test_messages_survive_any_cut_points(sent, cuts):
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    conn = Connection(ours, timeout=0.0)
    received = []
    opened = []
    try:
        pieces = []  # (bytes, fds): each message's fds travel with its first byte
        for request, flags, payload, nfds in sent:
            wire = bytes(m.Header(request, flags | m.HeaderFlags.VERSION_1, len(payload))) + payload
            fds = [os.eventfd(0) for _ in range(nfds)]
            opened += fds
            sizes = list(cuts) or [len(wire)]
            pos, i = 0, 0
            while pos < len(wire):
                size = sizes[i % len(sizes)]
                pieces.append((wire[pos:pos + size], fds if pos == 0 else []))
                pos += size
                i += 1
        for data, fds in pieces:
            if fds:
                socket.send_fds(theirs, [data], fds)
            else:
                theirs.sendall(data)
            while (msg := conn.poll()) is not None:  # never blocks on a partial message
                received.append(msg)
        theirs.close()
        try:
            while (msg := conn.poll()) is not None:
                received.append(msg)
        except Disconnected:
            pass
        assert [(r.request, r.flags & ~m.VERSION_MASK, r.payload, len(r.fds)) for r in received] == \
            [(request, flags, payload, nfds) for request, flags, payload, nfds in sent]
        assert conn.message_started is None
    finally:
        for msg in received:
            msg.close_fds()
        for fd in opened:
            os.close(fd)
        conn.close()
