"""Faults on the control queue, armed from the host to provoke a driver's probe and error paths.

* ``ctl-fail N STATUS [REQUEST]``: the next N control requests (of that request code, or any)
  are answered with ``IO_ERR``/``BAD_MSG``/``NOT_SUPP`` and not acted on (a failed
  SET_PARAMS leaves the stream as it was);
* ``ctl-late N MS [REQUEST]``: the next N requests are answered at once but the answer reaches
  the used ring MS milliseconds later (requests after them may overtake them). With MS above
  the driver's timeout (Linux: ``virtio_snd.msg_timeout_ms``, 1000) this is a device that
  never answers in time.

The answer reflects the device's state when the request arrived, as the device's reply to a
query that crossed an event would: a jack change while a JACK_INFO answer is late shows how
the driver orders the two.

Unlike the stream faults (:mod:`pyvmm_snd.faults`), what is armed survives a driver reset,
so that faults armed before the guest boots reach its probe (which starts with a reset);
answers still held back are dropped at a reset (the queue they belong to is gone). While the
VM is paused (QMP ``stop``) the delays stand still.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pyvmm.events import NO_EVENTS, EventSink
from pyvmm_snd.faults import check_count, check_delay
from pyvmm_snd.spec import QueueIndex, RequestCode, Status

if TYPE_CHECKING:
    from pyvmm.virtio.chain import DescriptorChain
    from pyvmm.virtio.device import DeviceContext

log = logging.getLogger(__name__)

STATUSES = {"io_err": Status.IO_ERR, "bad_msg": Status.BAD_MSG, "not_supp": Status.NOT_SUPP}


@dataclass
class _Late:
    chain: DescriptorChain
    written: int
    deadline: float
    timer: object = None


@dataclass
class _Armed:
    """One armed fault: how many requests are left to hit, and which ones (None: any)."""

    count: int = 0
    code: RequestCode | None = None

    def take(self, code: int | None) -> bool:
        if self.count and (self.code is None or self.code == code):
            self.count -= 1
            return True
        return False

    def describe(self) -> str:
        return f"{self.count}" + (f" {self.code.name}" if self.code is not None else "")


class ControlFaults:
    """The control queue's armed faults and the answers it holds back (device event loop only)."""

    def __init__(self) -> None:
        self.failing = _Armed()
        self.fail_status = Status.IO_ERR
        self.late = _Armed()
        self.late_ms = 0.0
        self.fired = 0
        self.sink: EventSink = NO_EVENTS
        self._held: list[_Late] = []
        self._frozen_at: float | None = None
        """Loop time the VM was paused at (None: running)."""

    # -- arming (monitor and QMP, on the device loop) ------------------------------------------------

    def arm_fail(self, count: int, status: Status, code: RequestCode | None = None) -> None:
        self.failing, self.fail_status = _Armed(check_count(count), code), status
        self._armed("ctl_status", count=count, status=status.name, request=_name(code))

    def arm_late(self, count: int, ms: float, code: RequestCode | None = None) -> None:
        self.late, self.late_ms = _Armed(check_count(count), code), check_delay(ms)
        self._armed("ctl_late", count=count, ms=ms, request=_name(code))

    @property
    def pending(self) -> dict[str, object]:
        """What is armed and not fired yet, and how many answers are held back (``info``, QMP)."""
        return {"fail": self.failing.count, "fail_status": self.fail_status.name,
                "fail_request": _name(self.failing.code), "late": self.late.count, "late_ms": self.late_ms,
                "late_request": _name(self.late.code), "held_back": self.held_back}

    @property
    def held_back(self) -> int:
        """Answers waiting for their ``ctl-late`` deadline."""
        return len(self._held)

    # -- the control queue (ControlPlane, on the device loop) -------------------------------------------

    def take_failure(self, code: int | None) -> Status | None:
        """The status to answer this request with instead of acting on it, or None."""
        if not self.failing.take(code):
            return None
        self._fired("ctl_status", request=_name(code), status=self.fail_status.name, remaining=self.failing.count)
        return self.fail_status

    def hold(self, ctx: DeviceContext, code: int | None, chain: DescriptorChain, written: int) -> bool:
        """Hold an answered request back if ``ctl-late`` is armed for it; True if held."""
        if not self.late.take(code):
            return False
        start = self._frozen_at if self._frozen_at is not None else ctx.loop.time()
        late = _Late(chain, written, start + self.late_ms / 1e3)
        if self._frozen_at is None:
            late.timer = ctx.loop.call_at(late.deadline, self._release, ctx, late)
        self._held.append(late)
        self._fired("ctl_late", request=_name(code), head=chain.head, ms=self.late_ms, remaining=self.late.count)
        return True

    def reset(self) -> None:
        """Driver reset: drop the answers held back; what is armed stays armed."""
        for late in self._held:
            if late.timer is not None:
                late.timer.cancel()
        self._held.clear()

    # -- VM pause (QMP stop/cont) ------------------------------------------------------------------

    def freeze(self, ctx: DeviceContext | None) -> None:
        if self._frozen_at is not None or ctx is None:
            return
        self._frozen_at = ctx.loop.time()
        for late in self._held:
            if late.timer is not None:
                late.timer.cancel()
                late.timer = None

    def thaw(self, ctx: DeviceContext | None) -> None:
        if self._frozen_at is None or ctx is None:
            self._frozen_at = None
            return
        paused, self._frozen_at = ctx.loop.time() - self._frozen_at, None
        for late in self._held:
            late.deadline += paused
            late.timer = ctx.loop.call_at(late.deadline, self._release, ctx, late)

    # -- helpers ---------------------------------------------------------------------------------

    def _release(self, ctx: DeviceContext, late: _Late) -> None:
        if late in self._held:
            self._held.remove(late)
            ctx.complete(QueueIndex.CONTROL, late.chain, late.written)

    def _armed(self, what: str, **fields) -> None:
        log.info("control queue: fault armed: %s %s", what, " ".join(f"{k}={v}" for k, v in fields.items()))
        self.sink.trace("fault", "inject", what=what, **fields)

    def _fired(self, what: str, **fields) -> None:
        self.fired += 1
        self.sink.trace("fault", "fire", what=what, **fields)


def parse_request(text: str) -> RequestCode:
    """``jack_info`` or ``JACK_INFO`` -> RequestCode.JACK_INFO (ValueError naming the choices)."""
    try:
        return RequestCode[text.upper().replace("-", "_")]
    except KeyError:
        raise ValueError(f"request must be one of {', '.join(c.name.lower() for c in RequestCode)}, "
                         f"not {text!r}") from None


def _name(code: int | None) -> str | None:
    if code is None:
        return None
    try:
        return RequestCode(code).name
    except ValueError:
        return f"{code:#06x}"

