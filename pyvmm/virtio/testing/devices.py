"""Small devices for tests of transports and front ends (no Linux driver binds to them)."""

from __future__ import annotations

import logging
import struct

from pyvmm.virtio.device import DeviceContext, VirtioDevice

log = logging.getLogger(__name__)

ECHO_DEVICE_ID = 0xFFF0
ECHO_FEATURE_UPPERCASE = 0
"""Device feature bit 0: the echo is upper-cased (gives feature negotiation something to do)."""
ECHO_CONFIG = struct.Struct("<II")
"""Config space: le32 magic 0xec40ec40, le32 number of requests answered."""
ECHO_CONFIG_MAGIC = 0xEC40EC40
ECHO_MAX_BYTES = 64 << 10
"""The most an echo answer copies (a chain may describe up to 4 GiB, many times the same RAM)."""


class EchoDevice(VirtioDevice):
    """Each queue answers a chain by copying its readable bytes into its writable part.

    Records what happens to it (``events``) so tests can check the transport's calls.
    """

    device_type = ECHO_DEVICE_ID

    def __init__(self, queues: int = 2, queue_size: int = 16):
        self.queue_max_sizes = (queue_size,) * queues
        self.ctx: DeviceContext | None = None
        self.answered = 0
        self.events: list[str] = []

    def device_features(self) -> int:
        return 1 << ECHO_FEATURE_UPPERCASE

    def read_config(self, offset: int, size: int) -> bytes:
        data = ECHO_CONFIG.pack(ECHO_CONFIG_MAGIC, self.answered)
        return data[offset:offset + size].ljust(size, b"\0")

    def activate(self, ctx: DeviceContext) -> None:
        self.ctx = ctx
        self.events.append("activate")

    def queue_notify(self, queue_index: int) -> None:
        self.events.append(f"notify {queue_index}")
        ctx = self.ctx
        if ctx is None:
            return
        queue = ctx.queues[queue_index]
        upper = ctx.features & (1 << ECHO_FEATURE_UPPERCASE)
        done = 0
        while (chain := queue.pop()) is not None:
            writer = chain.writer()
            # a guest length is bounded before it reaches an allocator: copy what fits
            data = chain.reader().read(min(chain.readable_len, writer.remaining, ECHO_MAX_BYTES))
            if upper:
                data = data.upper()
            writer.write(data)
            queue.add_used(chain, writer.written)
            self.answered += 1
            done += 1
        if done:
            ctx.signal_used(queue_index)

    def reset(self) -> None:
        self.events.append("reset")
        self.ctx = None
        self.answered = 0
