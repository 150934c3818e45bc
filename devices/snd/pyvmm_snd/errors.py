"""The one exception request handlers raise to reject a guest request."""

from __future__ import annotations

import logging

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
    """WARNING lines about guest misbehaviour, bounded so a looping guest cannot flood the log:
    the first ``limit`` go out at WARNING, later ones at DEBUG."""

    def __init__(self, logger: logging.Logger, limit: int = 50):
        self.logger = logger
        self.limit = limit
        self.count = 0

    def __call__(self, message: str, *args) -> None:
        self.count += 1
        if self.count <= self.limit:
            self.logger.warning(message, *args)
            if self.count == self.limit:
                self.logger.warning("%d guest errors reported; further ones are logged at DEBUG", self.limit)
        else:
            self.logger.debug(message, *args)
