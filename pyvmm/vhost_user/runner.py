"""Starting and stopping a :class:`VirtioDevice` on the rings a vhost-user front end set up.

The device is activated once every ring is fully configured (size, addresses, kick fd)
and enabled, which with QEMU is the end of ``vhost_dev_start`` (QEMU's vhost-user-base
starts all rings together); kicks that arrived earlier are delivered right after. It is
reset when the front end stops a ring (GET_VRING_BASE), resets the device or disconnects;
each ring's ``base`` then records how far the device got in the available ring.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Callable

from pyvmm.errors import GuestMemoryError
from pyvmm.log import TRACE
from pyvmm.vhost_user.memory_map import FrontendMemoryMap
from pyvmm.vhost_user.vring import Vring
from pyvmm.virtio.rules import report_queue_fault
from pyvmm.virtio.device import DeviceContext, VirtioDevice
from pyvmm.virtio.queue import InvalidQueueError, SplitQueue, trace_notify

log = logging.getLogger(__name__)


class DeviceRunner:
    def __init__(self, device: VirtioDevice, loop: asyncio.AbstractEventLoop, vrings: list[Vring],
                 memory_map: FrontendMemoryMap, on_config_change: Callable[[], None],
                 on_needs_reset: Callable[[str], None]):
        self.device = device
        self.loop = loop
        self.vrings = vrings
        self.memory_map = memory_map
        self.on_config_change = on_config_change
        self.on_needs_reset = on_needs_reset
        self.context: DeviceContext | None = None
        self._generation = 0
        """Counts activations; callbacks of an earlier one find it stale and do nothing."""

    @property
    def active(self) -> bool:
        return self.context is not None

    def start(self, features: int) -> bool:
        """Activate the device if every ring is ready; True if it is running afterwards."""
        if self.context is not None:
            return True
        if not all(v.configured and v.enabled for v in self.vrings):
            return False
        try:
            queues = [self._build_queue(vring, features) for vring in self.vrings]
        except (InvalidQueueError, GuestMemoryError) as exc:
            log.error("cannot start the device: %s", exc)
            return False
        # The callbacks name this activation by number, not by the context: a closure over
        # the context would make a reference cycle (context -> queue -> callback -> context)
        # that keeps the rings' views of guest RAM, and so its mapping, alive after a
        # disconnect until the garbage collector happens to run.
        self._generation += 1
        generation = self._generation
        context = DeviceContext(
            memory=self.memory_map.memory,
            queues=queues,
            features=features,
            loop=self.loop,
            signal_used=lambda index: self._signal_used(generation, index),
            signal_config=lambda: self._if_current(generation, self.on_config_change),
            request_reset=lambda reason: self._if_current(generation, self.on_needs_reset, reason),
        )
        for queue in queues:
            queue.signal_used = lambda index=queue.index: self._signal_used(generation, index)
            queue.request_reset = context.request_reset
            queue.on_fault = lambda q, kind, detail: report_queue_fault(self.device.event_sink, q, kind, detail)
        self.context = context
        log.info("starting the device: %d queues, features %#x", len(queues), features)
        try:
            self.device.activate(context)
        except Exception:
            log.exception("device activation failed")
            self.stop("activation failed")
            return False
        for vring in self.vrings:
            if vring.kicked:
                vring.kicked = False
                self.notify(vring.index)
        return True

    def stop(self, reason: str) -> None:
        context, self.context = self.context, None
        if context is None:
            return
        log.info("stopping the device (%s)", reason)
        for vring, queue in zip(self.vrings, context.queues):
            vring.base = queue.next_avail
            queue.disable()
        try:
            self.device.reset()
        except Exception:
            log.exception("device reset failed")

    def notify(self, index: int) -> None:
        """One turn of the device on ring ``index``: at most a queue's size of chains per turn
        (``SplitQueue.begin_turn``), so a front end refilling as fast as the device answers
        cannot hold the loop; what is left is served on a later loop turn."""
        context = self.context
        queue = context.queues[index] if context is not None and 0 <= index < len(context.queues) else None
        if queue is not None:
            trace_notify(self.device.event_sink, queue)
            queue.begin_turn()
        try:
            self.device.queue_notify(index)
        except Exception:  # a device bug must not take the server down
            log.exception("device failed handling a notification on queue %d", index)
        finally:
            more = queue.end_turn() if queue is not None else False
        if more and self.context is context:
            self.loop.call_soon(self.notify, index)

    def memory_changed(self) -> None:
        """Running queues hold views of the old mappings: take fresh ones."""
        if self.context is None:
            return
        try:
            for queue in self.context.queues:
                queue.enable()
        except InvalidQueueError as exc:
            log.error("rings lost their memory: %s", exc)
            self.stop("memory table change")

    def _build_queue(self, vring: Vring, features: int) -> SplitQueue:
        addresses = vring.addresses
        assert addresses is not None
        memory = self.memory_map.memory
        queue = SplitQueue(memory, vring.size, index=vring.index, name=f"vhost-user vring {vring.index}")
        queue.apply_features(features)
        queue.size = vring.size
        queue.desc_table, queue.avail_ring, queue.used_ring = addresses.desc, addresses.avail, addresses.used
        queue.next_avail = vring.base
        queue.next_used = memory.read_u16(addresses.used + 2)  # where the device left the used ring
        queue.enable()
        return queue

    def _signal_used(self, generation: int, index: int) -> None:
        context = self.context
        if context is None or generation != self._generation:
            return  # a late completion from a device that was already stopped
        if context.queues[index].needs_notification():
            log.log(TRACE, "call vring %d (used idx %d)", index, context.queues[index].next_used)
            self.device.event_sink.trace("irq", "used", queue=index, used_idx=context.queues[index].next_used)
            self.vrings[index].signal_call()

    def _if_current(self, generation: int, action: Callable[..., None], *args: object) -> None:
        if self.context is not None and generation == self._generation:
            action(*args)
