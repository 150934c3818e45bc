"""The one exception request handlers raise to reject a guest request."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from pyvmm.guest_log import guest_error
from pyvmm_snd.spec import Status

if TYPE_CHECKING:
    from pyvmm.conformance import Rule


class RequestError(Exception):
    """A guest request is rejected with ``status``; the message is the log line's reason;
    ``rule``: the spec rule (:mod:`pyvmm_snd.rules`) the driver broke, if it broke one."""

    def __init__(self, status: Status, message: str, rule: Rule | None = None):
        super().__init__(message)
        self.status = status
        self.rule = rule


def bad_msg(message: str, rule: Rule | None = None) -> RequestError:
    return RequestError(Status.BAD_MSG, message, rule)


def not_supp(message: str, rule: Rule | None = None) -> RequestError:
    return RequestError(Status.NOT_SUPP, message, rule)


class GuestWarnings:
    """Report guest misbehaviour on ``logger`` through the VMM's one guest-error limiter
    (:mod:`pyvmm.guest_log`: per-kind and overall rates, per VM lifetime, summary at exit)."""

    def __init__(self, logger: logging.Logger):
        self.logger = logger

    def __call__(self, message: str, *args) -> None:
        guest_error(self.logger, message, *args)
