"""What QMP's run-state commands act on: a pyvmm VM, or a vhost-user back end's device.

:class:`VmMachine` adapts :class:`pyvmm.vm.Vm` (which does the real work: vCPUs, kvmclock,
device clocks, ``STOP``/``RESUME``/``SHUTDOWN`` events). :class:`BackendMachine` is the
vhost-user case: the vCPUs belong to the front end (QEMU), so ``stop``/``cont`` pause and
resume the served device's clock only, and ``quit`` stops the back end.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Callable

from pyvmm.events import EventBus
from pyvmm.qmp.protocol import QmpError

log = logging.getLogger(__name__)


class VmMachine:
    """pyvmm's own VM. ``system_reset`` is what a guest reboot is in pyvmm: the end of the VM
    (as QEMU with ``-no-reboot``: a ``SHUTDOWN`` event with reason ``host-qmp-system-reset``)."""

    def __init__(self, vm):
        self.vm = vm

    @property
    def status(self) -> str:
        return self.vm.status

    def pause(self) -> bool:
        return self.vm.pause_machine()

    def resume(self) -> bool:
        return self.vm.resume_machine()

    def system_reset(self) -> None:
        self.vm.request_stop(0, "system_reset from QMP (pyvmm ends the VM on a reset)",
                             cause="host-qmp-system-reset")

    def quit(self) -> None:
        self.vm.request_stop(0, "quit from QMP", cause="host-qmp-quit")


class BackendMachine:
    """A vhost-user back end: pause/resume the device (on its event loop), quit the server."""

    def __init__(self, device, run_on_loop: Callable[..., Any], events: EventBus, stop_serving: Callable[[], None]):
        self.device = device
        self.run_on_loop = run_on_loop
        self.events = events
        self.stop_serving = stop_serving
        self.shutdown_cause = "none"
        self._state = "running"
        self._lock = threading.Lock()

    @property
    def status(self) -> str:
        return self._state

    def pause(self) -> bool:
        with self._lock:
            if self._state != "running":
                return False
            self.run_on_loop(self.device.pause, timeout=5.0)
            self._state = "paused"
        self.events.emit("STOP")
        return True

    def resume(self) -> bool:
        with self._lock:
            if self._state != "paused":
                return False
            self.run_on_loop(self.device.resume, timeout=5.0)
            self._state = "running"
        self.events.emit("RESUME")
        return True

    def system_reset(self) -> None:
        raise QmpError("system_reset: a vhost-user back end has no machine to reset (the front end owns it); "
                       "'human-monitor-command device 0 reset' asks the driver to reset the device")

    def quit(self) -> None:
        self.shutdown_cause = "host-qmp-quit"
        self.stop_serving()

    def shut_down(self) -> None:
        """The back end stops serving: ``SHUTDOWN`` (once)."""
        with self._lock:
            if self._state == "shutdown":
                return
            self._state = "shutdown"
        self.events.emit("SHUTDOWN", guest=False, reason=self.shutdown_cause)
