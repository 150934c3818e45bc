"""The gdb stub: debug the guest kernel with gdb over the GDB remote serial protocol.

Modules, from the wire inwards: ``packets`` (framing, escapes, bounds), ``session`` (one
connection's commands), ``server`` (tcp/unix listener), ``target`` (all-stop run control
over the vCPUs: stop, resume, step, breakpoints), ``breakpoints`` (debug registers, int3),
``registers`` (target description and KVM register mapping), ``vmem`` (guest-virtual
memory through the vCPU's page tables), ``probe`` (what this KVM's guest debugging really
does) and ``launcher`` (``pyvmm gdb``: Debian's gdb with the matching vmlinux and scripts).
"""

from __future__ import annotations

import logging

from .probe import DebugSupport, probe_debug_support
from .server import GdbAddress, GdbServer
from .target import DebugTarget

log = logging.getLogger(__name__)

__all__ = ["DebugSupport", "DebugTarget", "GdbAddress", "GdbServer", "probe_debug_support", "start_gdb_server"]


def start_gdb_server(vm, address: str | GdbAddress, wait: bool = False) -> GdbServer:
    """Serve ``vm`` (a built, not yet running :class:`pyvmm.vm.Vm`) to gdb at ``address``.

    With ``wait`` the vCPUs stay stopped before their first instruction until gdb continues
    them (QEMU's ``-s -S``).
    """
    if isinstance(address, str):
        address = GdbAddress.parse(address)
    support = probe_debug_support(vm.kvm)
    target = DebugTarget(vm.vcpus, vm.memory, support=support, exec_file=str(vm.config.kernel.resolve()),
                         on_kill=lambda: vm.request_stop(0, "killed from gdb"),
                         on_resume=lambda: vm.resume_machine(vcpus=False), running=not wait)
    # QMP 'stop' is a stop gdb sees (SIGINT), and gdb's continue ends it: QEMU's behaviour.
    vm.events.subscribe(lambda event: target.interrupt() if event.name == "STOP" else None)
    if wait:
        for vcpu in vm.vcpus:
            vcpu.request_pause()
    server = GdbServer(target, address).start()
    missing = [name for name, ok in (("single-step", support.single_step),
                                     ("hardware breakpoints", support.hw_breakpoints),
                                     ("watchpoints", support.watchpoints),
                                     ("software breakpoints", support.sw_breakpoints)) if not ok]
    if missing:
        log.warning("gdb: this KVM cannot do %s (found by a probe; 'monitor info' in gdb shows it)",
                    ", ".join(missing))
    return server
