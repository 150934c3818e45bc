"""vhost-user back end: serve any :class:`~pyvmm.virtio.device.VirtioDevice` to QEMU over a unix socket.

``serve(device, socket_path)`` is the whole public surface for the CLI; the pieces are
``messages`` (wire format), ``connection`` (framing and fds), ``memory_map`` (the front
end's RAM), ``vring`` (per-ring set-up), ``backend`` (the request handlers), ``runner``
(when the device starts and stops) and ``server`` (the listening socket).
"""

from __future__ import annotations

import logging
import signal
import threading

from pyvmm import guest_log
from pyvmm.eventloop import DeviceEventLoop
from pyvmm.conformance import STRICT_EXIT_STATUS, Checker, format_violation
from pyvmm.events import EventBus
from pyvmm.vhost_user.backend import VhostUserBackend
from pyvmm.vhost_user.server import VhostUserServer
from pyvmm.virtio.device import VirtioDevice

__all__ = ["serve", "VhostUserBackend", "VhostUserServer"]

log = logging.getLogger(__name__)


def serve(device: VirtioDevice, socket_path: str, once: bool = False, monitor_path: str | None = None,
          device_name: str = "device", qmp=None, tracer=None, strict: bool = False) -> int:
    """Serve ``device`` on ``socket_path`` until SIGTERM/SIGINT (or, with ``once``, until the
    first front end disconnects); then stop the device and ``close()`` it. With ``monitor_path``,
    also serve the monitor (:mod:`pyvmm.monitor`) there; its ``quit`` stops the back end. With
    ``qmp`` (a :class:`pyvmm.config.QmpSpec`), also serve QMP (:mod:`pyvmm.qmp`). With ``tracer``
    (:class:`pyvmm.trace.Tracer`), the device's trace records go there. With ``strict``, the first
    MUST violation of the spec by the driver stops the back end. Returns the exit status: 0, or
    :data:`~pyvmm.conformance.STRICT_EXIT_STATUS` after a ``strict`` stop."""
    events = DeviceEventLoop("vhost-user").start()
    server = VhostUserServer(device, socket_path, events, once=once)
    previous: dict[int, object] = {}
    monitor_server = qmp_server = machine = None
    bus = EventBus(tracer, Checker(strict=strict))
    bus.checker.on_strict = lambda violation: server.finished.set()
    from pyvmm.monitor import device_names

    device.event_sink = bus.sink(device_names([device_name])[0])

    def on_signal(signum: int, frame: object) -> None:
        log.info("%s: shutting down", signal.Signals(signum).name)
        server.finished.set()

    try:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                previous[sig] = signal.signal(sig, on_signal)
        server.start()
        if monitor_path is not None:
            from pyvmm.monitor import MonitorServer, vhost_user_monitor

            monitor = vhost_user_monitor(device, device_name, server.backend, events.call, server.finished.set)
            monitor_server = MonitorServer(monitor, monitor_path).start()
        if qmp is not None:
            from pyvmm.monitor import vhost_user_monitor
            from pyvmm.qmp import BackendMachine, serve_backend

            machine = BackendMachine(device, events.call, bus, server.finished.set)
            monitor = vhost_user_monitor(device, device_name, server.backend, events.call, machine.quit)
            qmp_server = serve_backend(machine, monitor, qmp)
        while not server.finished.wait(0.5):
            pass
    finally:
        if machine is not None:
            machine.shut_down()
        if qmp_server is not None:
            qmp_server.close()
        if monitor_server is not None:
            monitor_server.close()
        try:
            server.stop()
        finally:
            try:
                device.close()
            finally:
                events.stop()
                guest_log.log_summary()
                bus.checker.log_summary(always=strict)
                for sig, handler in previous.items():
                    signal.signal(sig, handler)
    if bus.checker.strict_violation is not None:
        log.error("--strict: stopped at %s", format_violation(bus.checker.strict_violation))
        return STRICT_EXIT_STATUS
    return 0
