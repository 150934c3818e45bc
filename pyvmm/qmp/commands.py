"""The QMP command table: what each command takes, what it returns, who carries it out.

Every command is a :class:`Command` with a declared parameter list (:class:`Param`); the
table checks arguments the way QEMU's generated marshallers do (missing, unexpected or
wrongly typed members are a ``GenericError`` naming the member) before the handler runs, so
handlers only see valid input. ``query-commands`` lists the table; the README's QMP section
documents it.

The table talks to two things: a :class:`Machine` (run state: ``pyvmm run``'s VM or a
vhost-user back end) and the line :class:`~pyvmm.monitor.Monitor` (devices, the device
event loop, ``human-monitor-command``). Device vendor commands come from
:meth:`VirtioDevice.qmp_commands() <pyvmm.virtio.device.VirtioDevice.qmp_commands>` and run
on the device event loop; ``device`` picks the device when more than one offers a command.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

import pyvmm
from pyvmm.errors import GuestMemoryError, VmmError
from pyvmm.qmp import virtio
from pyvmm.qmp.protocol import COMMAND_NOT_FOUND, DEVICE_NOT_FOUND, GENERIC_ERROR, QmpError

log = logging.getLogger(__name__)

DEVICE_CALL_TIMEOUT = 5.0
"""Seconds a device command may take on the device event loop."""

_TYPE_NAMES = {str: "string", int: "int", bool: "boolean", dict: "object", list: "array"}


class Machine(Protocol):
    """What QMP controls: the run state of a VM (or of a vhost-user back end)."""

    @property
    def status(self) -> str:
        """QEMU's RunState name: ``prelaunch``, ``running``, ``paused``, ``shutdown``."""

    def pause(self) -> bool:
        """Stop guest and device time; False if not running (nothing done)."""

    def resume(self) -> bool:
        """Undo :meth:`pause`; False if not paused."""

    def system_reset(self) -> None:
        """QMP ``system_reset`` (raise :class:`QmpError` where there is no machine to reset)."""

    def quit(self) -> None:
        """QMP ``quit``: stop the VMM (returns at once; ``SHUTDOWN`` follows)."""


@dataclass(frozen=True)
class Param:
    name: str
    type: type
    required: bool = True
    doc: str = ""


@dataclass(frozen=True)
class Command:
    name: str
    handler: Callable[[dict[str, Any]], Any]
    doc: str
    params: tuple[Param, ...] = ()
    free_arguments: bool = False
    """Device commands: arguments are checked by the device itself."""
    blocking: bool = True
    """Runs off the QMP thread (it may wait for vCPUs or the device loop)."""


@dataclass
class CommandTable:
    machine: Machine
    monitor: Any
    """A :class:`pyvmm.monitor.Monitor`: ``devices``, ``run_on_loop``, ``execute``."""
    commands: dict[str, Command] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for command in self._core_commands() + self._virtio_commands():
            self.commands[command.name] = command
        self._device_commands: dict[str, list[tuple[Any, Callable]]] = {}
        for dev in self.monitor.devices:
            hook = getattr(dev.device, "qmp_commands", None)
            for name, fn in (hook() if hook is not None else {}).items():
                self._device_commands.setdefault(name, []).append((dev, fn))
        for name, providers in self._device_commands.items():
            if name in self.commands:
                log.warning("QMP: device command %s ignored: a core command has that name", name)
                continue
            doc = (getattr(providers[0][1], "__doc__", None) or name).strip().splitlines()[0]
            self.commands[name] = Command(name, lambda args, name=name: self._device_call(name, args), doc,
                                          free_arguments=True)

    # -- running a command --------------------------------------------------------------------

    def lookup(self, name: str) -> Command:
        command = self.commands.get(name)
        if command is None:
            raise QmpError(f"The command {name} has not been found", COMMAND_NOT_FOUND)
        return command

    def check_arguments(self, command: Command, arguments: dict[str, Any]) -> None:
        if command.free_arguments:
            return
        declared = {p.name: p for p in command.params}
        for name in arguments:
            if name not in declared:
                raise QmpError(f"Parameter '{name}' is unexpected")
        for param in command.params:
            if param.name not in arguments:
                if param.required:
                    raise QmpError(f"Parameter '{param.name}' is missing")
                continue
            value = arguments[param.name]
            ok = isinstance(value, param.type) and not (param.type is int and isinstance(value, bool))
            if not ok:
                raise QmpError(f"Invalid parameter type for '{param.name}', expected: {_TYPE_NAMES[param.type]}")

    def run(self, command: Command, arguments: dict[str, Any]) -> Any:
        """Run a checked command; every failure becomes a :class:`QmpError`."""
        try:
            return command.handler(arguments)
        except QmpError:
            raise
        except TimeoutError:
            raise QmpError(f"{command.name}: no answer from the device event loop within "
                           f"{DEVICE_CALL_TIMEOUT:g} s") from None
        except (VmmError, ValueError, LookupError, GuestMemoryError) as exc:
            raise QmpError(f"{command.name}: {exc}") from None
        except Exception as exc:
            log.warning("QMP: %s failed", command.name, exc_info=True)
            raise QmpError(f"{command.name}: {type(exc).__name__}: {exc}") from None

    # -- core commands --------------------------------------------------------------------------

    def _core_commands(self) -> list[Command]:
        m = self.machine
        return [
            Command("qmp_capabilities", lambda a: {}, "leave capabilities negotiation (no capabilities offered)",
                    (Param("enable", list, False),), blocking=False),
            Command("query-status", lambda a: {"running": m.status == "running", "status": m.status},
                    "run state: running, paused, prelaunch or shutdown", blocking=False),
            Command("stop", self._stop, "pause the vCPUs and the device clocks (STOP event)"),
            Command("cont", self._cont, "resume after stop (RESUME event)"),
            Command("system_reset", lambda a: m.system_reset(), "reset the machine (pyvmm: as a guest reboot)"),
            Command("quit", lambda a: m.quit(), "stop the VMM (SHUTDOWN event)"),
            Command("query-version", lambda a: _version(), "pyvmm's version, in QEMU's VersionInfo shape",
                    blocking=False),
            Command("query-commands", lambda a: [{"name": n} for n in sorted(self.commands)],
                    "the commands this server accepts", blocking=False),
            Command("human-monitor-command", self._human_monitor_command,
                    "run a line-monitor command and return its text output",
                    (Param("command-line", str), Param("cpu-index", int, False))),
        ]

    def _stop(self, arguments: dict[str, Any]) -> None:
        self.machine.pause()  # already paused: nothing to do, as QEMU

    def _cont(self, arguments: dict[str, Any]) -> None:
        if self.machine.status == "shutdown":
            raise QmpError("the VM has shut down: it cannot continue")
        self.machine.resume()

    def _human_monitor_command(self, arguments: dict[str, Any]) -> str:
        if arguments.get("cpu-index", 0) != 0:
            raise QmpError("cpu-index: the monitor's commands do not depend on a CPU; use 0 or leave it out")
        ok, text = self.monitor.execute(arguments["command-line"])
        if not ok:
            raise QmpError(text)
        return text + "\n" if text else ""

    # -- virtio introspection ---------------------------------------------------------------------

    def _virtio_commands(self) -> list[Command]:
        path = Param("path", str, doc="device name from x-query-virtio (snd0)")
        queue = Param("queue", int)
        return [
            Command("x-query-virtio", lambda a: virtio.device_list(self.monitor.devices), "the virtio devices",
                    blocking=False),
            Command("x-query-virtio-status", lambda a: self._on_loop(virtio.device_status, self._dev(a)),
                    "a device's status bits, offered and negotiated features", (path,)),
            Command("x-query-virtio-queue-status",
                    lambda a: self._on_loop(virtio.queue_status, self._dev(a), a["queue"]),
                    "one queue: addresses, avail/used indexes, chains in use", (path, queue)),
            Command("x-query-virtio-queue-element",
                    lambda a: self._on_loop(virtio.queue_element, self._dev(a), a["queue"], a.get("index"),
                                            a.get("head")),
                    "decode one descriptor chain: at avail ring position 'index' (default: the next "
                    "the device takes) or starting at descriptor 'head'",
                    (path, queue, Param("index", int, False), Param("head", int, False))),
        ]

    def _dev(self, arguments: dict[str, Any]):
        return virtio.find_device(self.monitor.devices, arguments["path"])

    def _on_loop(self, fn: Callable, *args: Any) -> Any:
        return self.monitor.run_on_loop(fn, *args, timeout=DEVICE_CALL_TIMEOUT)

    # -- device commands ------------------------------------------------------------------------

    def _device_call(self, name: str, arguments: dict[str, Any]) -> Any:
        providers = self._device_commands[name]
        arguments = dict(arguments)
        wanted = arguments.pop("device", None)
        if wanted is not None:
            if not isinstance(wanted, str):
                raise QmpError("Invalid parameter type for 'device', expected: string")
            matches = [(dev, fn) for dev, fn in providers if dev.name == wanted]
            if not matches:
                raise QmpError(f"{name}: no device {wanted!r} offers it "
                               f"(devices: {', '.join(dev.name for dev, _ in providers)})", DEVICE_NOT_FOUND)
        elif len(providers) > 1:
            raise QmpError(f"{name}: several devices offer it; say which with 'device' "
                           f"({', '.join(dev.name for dev, _ in providers)})", GENERIC_ERROR)
        else:
            matches = providers
        _, fn = matches[0]
        return self._on_loop(fn, arguments)


def _version() -> dict[str, Any]:
    major, minor, micro = (int(part) for part in (pyvmm.__version__.split(".") + ["0", "0"])[:3])
    return {"qemu": {"major": major, "minor": minor, "micro": micro}, "package": f"pyvmm-{pyvmm.__version__}"}
