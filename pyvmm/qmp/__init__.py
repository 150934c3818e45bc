"""QMP, the QEMU Machine Protocol: JSON commands and asynchronous events on a unix socket.

``pyvmm run --qmp unix:PATH[,server,wait=off]`` and ``pyvmm vhost-user ... --qmp ...`` serve
it; any QMP client works (``qemu.qmp``'s ``QMPClient``, ``qmp-shell``, ``socat``). The line
monitor (:mod:`pyvmm.monitor`) stays the human console, reachable from QMP through
``human-monitor-command``.

Modules: ``protocol`` (wire format and bounds), ``commands`` (the command table and its
argument checks), ``virtio`` (``x-query-virtio*`` introspection), ``machine`` (what
``stop``/``cont``/``quit`` act on), ``server`` (socket, clients, events).
"""

from __future__ import annotations

import logging
import sys

from pyvmm.config import QmpSpec
from pyvmm.events import EventBus
from pyvmm.qmp.commands import CommandTable
from pyvmm.qmp.machine import BackendMachine, VmMachine
from pyvmm.qmp.server import QmpServer

__all__ = ["QmpServer", "CommandTable", "VmMachine", "BackendMachine", "serve_vm", "serve_backend"]

log = logging.getLogger(__name__)


def _start(table: CommandTable, events: EventBus, spec: QmpSpec) -> QmpServer:
    server = QmpServer(table, events, spec.path).start()
    if spec.wait:
        print(f"pyvmm: waiting for a QMP client on {spec.path}", file=sys.stderr, flush=True)
        server.wait_for_client()
    return server


def serve_vm(vm, spec: QmpSpec) -> QmpServer:
    """QMP on a built (not yet running) :class:`pyvmm.vm.Vm`; with ``spec.wait``, returns once a client connected."""
    from pyvmm.monitor import vm_monitor

    return _start(CommandTable(VmMachine(vm), vm_monitor(vm)), vm.events, spec)


def serve_backend(machine: BackendMachine, monitor, spec: QmpSpec) -> QmpServer:
    """QMP on a vhost-user back end (``monitor``: :func:`pyvmm.monitor.vhost_user_monitor`)."""
    return _start(CommandTable(machine, monitor), machine.events, spec)
