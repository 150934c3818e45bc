"""Per-virtqueue state a vhost-user front end sets up: size, addresses, base, eventfds, enable.

The front end configures a ring piece by piece (SET_VRING_NUM/ADDR/BASE/KICK/CALL/ENABLE);
this collects the pieces until the ring can be handed to the device as a :class:`SplitQueue`.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from enum import Enum

from pyvmm.guest_log import guest_error

log = logging.getLogger(__name__)

_ONE = (1).to_bytes(8, "little")


@dataclass
class RingAddresses:
    """Guest-physical addresses of the three parts of a split ring."""

    desc: int
    avail: int
    used: int


class Kick(Enum):
    """What reading a kick fd found."""

    PENDING = "the front end kicked"
    NONE = "nothing (a spurious wakeup)"
    DEAD = "end of file or an error: the fd will never kick again"


class Vring:
    def __init__(self, index: int, device_max_size: int):
        self.index = index
        self.device_max_size = device_max_size
        self.size = 0
        self.addresses: RingAddresses | None = None
        self.base = 0
        self.kick_fd: int | None = None
        self.call_fd: int | None = None
        self.err_fd: int | None = None
        self.enabled = False
        self.kicked = False
        """The front end kicked the ring before the device was started."""

    @property
    def configured(self) -> bool:
        """Everything the device needs to run this ring is known."""
        return self.size > 0 and self.addresses is not None and self.kick_fd is not None

    def replace_fd(self, which: str, fd: int | None) -> None:
        """Install a new kick/call/err fd (``which``), closing the previous one."""
        old = getattr(self, which)
        if old is not None and old != fd:
            os.close(old)
        setattr(self, which, fd)

    def signal_call(self) -> None:
        """Raise the ring's interrupt through the call eventfd."""
        if self.call_fd is None:
            return
        try:
            os.write(self.call_fd, _ONE)
        except BlockingIOError:
            pass  # counter saturated: the front end has an interrupt pending anyway
        except OSError as exc:
            guest_error(log, "vring %d: cannot signal call fd: %s", self.index, exc)

    def signal_err(self) -> None:
        if self.err_fd is None:
            return
        try:
            os.write(self.err_fd, _ONE)
        except OSError as exc:
            guest_error(log, "vring %d: cannot signal err fd: %s", self.index, exc)

    def drain_kick(self) -> Kick:
        """Consume a pending kick."""
        if self.kick_fd is None:
            return Kick.NONE
        try:
            return Kick.PENDING if os.read(self.kick_fd, 8) else Kick.DEAD
        except (BlockingIOError, InterruptedError):
            return Kick.NONE
        except OSError as exc:
            log.debug("vring %d: reading the kick fd: %s", self.index, exc)
            return Kick.DEAD

    def close(self) -> None:
        for which in ("kick_fd", "call_fd", "err_fd"):
            self.replace_fd(which, None)

    def reset(self) -> None:
        """Back to the state of a fresh connection (fds closed)."""
        self.close()
        self.size = 0
        self.addresses = None
        self.base = 0
        self.enabled = False
        self.kicked = False

    def __repr__(self) -> str:
        return (f"Vring({self.index}, size={self.size}, addresses={self.addresses}, base={self.base},"
                f" kick={self.kick_fd}, call={self.call_fd}, enabled={self.enabled})")
