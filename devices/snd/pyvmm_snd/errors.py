"""The one exception request handlers raise to reject a guest request."""

from __future__ import annotations

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
