"""The one exception request handlers raise to reject a guest request."""

from __future__ import annotations

import logging

from pyvmm.guest_log import guest_error
from pyvmm_snd.spec import Status


class RequestError(Exception):
    """A guest request is rejected with ``status``; the message is the log line's reason."""

    def __init__(self, status: Status, message: str):
        super().__init__(message)
        self.status = status


def bad_msg(message: str) -> RequestError:
    return RequestError(Status.BAD_MSG, message)


def not_supp(message: str) -> RequestError:
    return RequestError(Status.NOT_SUPP, message)


class GuestWarnings:
    """Report guest misbehaviour on ``logger`` through the VMM's one guest-error limiter
    (:mod:`pyvmm.guest_log`: per-kind and overall rates, per VM lifetime, summary at exit)."""

    def __init__(self, logger: logging.Logger):
        self.logger = logger

    def __call__(self, message: str, *args) -> None:
        guest_error(self.logger, message, *args)
