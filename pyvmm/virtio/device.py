"""The small interface a virtio device plugin implements, and what the transport hands it.

A device never knows which front end feeds it (pyvmm's virtio-mmio transport or a
vhost-user connection): it gets guest memory, its queues, an event loop to run on and a
way to signal the driver, all in a :class:`DeviceContext` at activation.

Threading: every device callback (``activate``, ``queue_notify``, ``reset``, timers the
device schedules) runs on the device event loop thread, never on a vCPU thread.
``read_config``/``write_config`` may be called from a vCPU thread and must only touch
immutable or locked state. Queues and ``DeviceContext.complete`` are loop-thread only: a
device that does work on another thread (an audio callback, say) hands results back with
``ctx.loop.call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from pyvmm.events import NO_EVENTS, EventSink

if TYPE_CHECKING:
    from pyvmm.memory import GuestMemory
    from pyvmm.virtio.queue import DescriptorChain, SplitQueue


@dataclass
class DeviceContext:
    """Everything an activated device may use."""

    memory: GuestMemory
    queues: list[SplitQueue]
    features: int
    """Feature bits the driver accepted (device-specific and transport bits)."""
    loop: asyncio.AbstractEventLoop
    """The device event loop (timers, extra readers); the device's callbacks run on it."""
    signal_used: Callable[[int], None]
    """Tell the driver queue ``i`` has new used buffers (the transport applies event-idx suppression)."""
    signal_config: Callable[[], None]
    """Raise a configuration-change interrupt."""
    request_reset: Callable[[str], None]
    """Device-initiated reset: set DEVICE_NEEDS_RESET and interrupt; the reason is logged."""

    def complete(self, queue_index: int, chain: DescriptorChain, written: int, notify: bool = True) -> None:
        """Return ``chain`` to the driver with ``written`` bytes in its writable part."""
        self.queues[queue_index].add_used(chain, written)
        if notify:
            self.signal_used(queue_index)


class VirtioDevice(ABC):
    """A virtio device type, independent of its transport."""

    #: Virtio device id (e.g. 25 for sound).
    device_type: int
    #: Maximum size of each queue; the number of entries is the number of queues.
    queue_max_sizes: tuple[int, ...]
    #: Where the device publishes host-visible events (``self.event_sink.emit("SND_PCM_XRUN",
    #: stream=0)``, QMP-style names): the VMM sets it to a sink on its :mod:`pyvmm.events` bus
    #: (QMP events, traces); by default events go nowhere. Callable from any thread.
    event_sink: EventSink = NO_EVENTS

    @abstractmethod
    def device_features(self) -> int:
        """Device-type feature bits offered (bits 0-23); the transport adds the generic ones."""

    @abstractmethod
    def read_config(self, offset: int, size: int) -> bytes:
        """Read the device configuration space; out-of-range bytes read as zero."""

    def write_config(self, offset: int, data: bytes) -> None:
        """Most devices' config space is read-only for the driver: ignore writes."""

    @abstractmethod
    def activate(self, ctx: DeviceContext) -> None:
        """The driver set DRIVER_OK: start serving the queues in ``ctx``."""

    @abstractmethod
    def queue_notify(self, queue_index: int) -> None:
        """The driver made buffers available on queue ``queue_index``.

        Pop until :meth:`SplitQueue.pop` returns None. It may return None with chains still
        available (at most the queue size per notification, so one busy queue cannot hold the
        loop); the front end then calls ``queue_notify`` again on a later loop turn. Every
        popped chain must eventually be completed (``ctx.complete``) or dropped by
        :meth:`reset`: the queue refuses to have more than its size in flight."""

    @abstractmethod
    def reset(self) -> None:
        """Drop every in-flight buffer without completing it and return to the initial state."""

    def close(self) -> None:
        """The VMM is exiting: flush and release host resources (files, audio devices)."""

    def pause(self) -> None:
        """The VM is paused (QMP ``stop``): stop the device's own clocks (timers that complete
        buffers) so no device time passes until :meth:`resume`. Default: nothing to stop."""

    def resume(self) -> None:
        """The VM runs again after :meth:`pause`."""

    def monitor_commands(self) -> dict[str, Callable[[list[str]], str]]:
        """Device commands for the monitor (:mod:`pyvmm.monitor`), by name.

        ``pyvmm run --monitor PATH`` then accepts ``NAME CMD ARGS...`` (``snd0 jack 0 disconnect``).
        Each callable gets the words after its name, runs on the device event loop thread (device
        state is safe to touch) and returns the reply text; raising ``ValueError``, ``LookupError``
        or ``VmmError`` reports a one-line error (any other exception too, with its type). The
        first docstring line of each callable is its ``NAME help`` line. Default: none.
        """
        return {}

    def qmp_commands(self) -> dict[str, Callable[[dict[str, Any]], Any]]:
        """Device commands for QMP (:mod:`pyvmm.qmp`), by full name with QEMU's vendor prefix
        (``x-pyvmm-snd-query-streams``). Each callable gets the command's ``arguments`` (without
        ``device``, which picks the device when several offer the command), runs on the device
        event loop thread and returns a JSON-able result; ``ValueError``, ``LookupError`` or
        ``VmmError`` become a ``GenericError`` reply. The first docstring line describes it in
        ``query-commands``. Default: none."""
        return {}
