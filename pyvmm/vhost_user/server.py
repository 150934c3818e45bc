"""The listening side: a unix socket that accepts one front end at a time for a back end.

QEMU connects, configures the device, and may disconnect and reconnect (guest reboot,
``-chardev ...,reconnect``); after each disconnect the device is reset and the socket
listens again, unless the server was started with ``once``.
"""

from __future__ import annotations

import logging
import os
import socket
import threading

from pyvmm.eventloop import DeviceEventLoop
from pyvmm.unixsocket import listen_unix
from pyvmm.vhost_user.backend import VhostUserBackend
from pyvmm.vhost_user.connection import Connection
from pyvmm.virtio.device import VirtioDevice

log = logging.getLogger(__name__)


def bind_unix_listener(path: str) -> socket.socket:
    """Listen on ``path`` (mode 0600), replacing a stale socket file but never a live one or
    another file."""
    listener = listen_unix(path, backlog=1, what="vhost-user socket")
    listener.setblocking(False)
    return listener


class VhostUserServer:
    """Accepts front ends on ``socket_path`` and serves ``device`` to them, one at a time."""

    def __init__(self, device: VirtioDevice, socket_path: str, events: DeviceEventLoop, once: bool = False):
        self.socket_path = socket_path
        self.events = events
        self.loop = events.loop
        self.once = once
        self.backend = VhostUserBackend(device, events.loop, on_disconnect=self._on_disconnect)
        self.finished = threading.Event()
        """Set when the server stops serving (``once`` and the front end left, or :meth:`stop`)."""
        self._listener: socket.socket | None = None

    def start(self) -> None:
        """Bind the socket (errors surface here) and start accepting on the loop."""
        self._listener = bind_unix_listener(self.socket_path)
        log.info("listening on %s", self.socket_path)
        self.events.call(self._watch_listener)

    def stop(self) -> None:
        """Disconnect the front end, stop the device and remove the socket (from any thread)."""
        if self.events.running:
            self.events.call(self._shutdown, timeout=10.0)
        else:
            self._shutdown()
        self.finished.set()

    def _shutdown(self) -> None:
        self.backend.detach("server stopping")
        if self._listener is not None:
            self.loop.remove_reader(self._listener.fileno())
            self._listener.close()
            self._listener = None
            try:
                os.unlink(self.socket_path)
            except FileNotFoundError:
                pass

    def _watch_listener(self) -> None:
        if self._listener is not None:
            self.loop.add_reader(self._listener.fileno(), self._accept)

    def _accept(self) -> None:
        assert self._listener is not None
        try:
            sock, _ = self._listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:  # e.g. out of file descriptors: the front end will retry
            log.warning("cannot accept a front end: %s", exc)
            return
        self.loop.remove_reader(self._listener.fileno())  # one front end at a time
        self.backend.attach(Connection(sock, timeout=0.0))

    def _on_disconnect(self) -> None:
        if self.once:
            self.finished.set()
        else:
            self._watch_listener()
