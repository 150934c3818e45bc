"""Listening unix sockets that only their owner can connect to, whatever the umask.

Connecting to a unix socket needs write permission on its file, and ``bind`` creates that
file with the process umask applied: under ``umask 000`` any local user could talk to the
monitor or pose as a vhost-user front end. So every listening socket of pyvmm is bound inside
a fresh private (0700) directory next to its final path, made 0600 there, and only then
renamed into place: no one else can reach it at any moment, and front ends that poll for
the path never see a socket that refuses connections.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import stat
import tempfile

from pyvmm.errors import VmmError

SOCKET_MODE = 0o600


def listen_unix(path: str | os.PathLike, backlog: int = 1, what: str = "socket") -> socket.socket:
    """A listening AF_UNIX stream socket at ``path`` with mode 0600.

    A stale socket file (nobody listening) is replaced; a live socket or any other file is a
    :class:`VmmError` naming ``what`` (e.g. "monitor socket")."""
    path = os.fspath(path)
    _remove_stale(path, what)
    staging_dir = tempfile.mkdtemp(prefix=".pyvmm-", dir=os.path.dirname(os.path.abspath(path)))
    staging = os.path.join(staging_dir, "s")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        dir_fd = os.open(staging_dir, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            # Through the directory fd, the bound name is short whatever the path's length.
            listener.bind(f"/proc/self/fd/{dir_fd}/s")
        finally:
            os.close(dir_fd)
        os.chmod(staging, SOCKET_MODE)
        listener.listen(backlog)
        os.rename(staging, path)
    except OSError as exc:
        listener.close()
        raise VmmError(f"cannot listen on {what} {path}: {exc.strerror or exc}") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(staging)
        with contextlib.suppress(OSError):
            os.rmdir(staging_dir)
    return listener


def _remove_stale(path: str, what: str) -> None:
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise VmmError(f"{what} {path} exists and is not a socket")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(path)
        except OSError as exc:
            if exc.errno not in (errno.ECONNREFUSED, errno.ENOENT):
                raise VmmError(f"cannot probe {what} {path}: {exc.strerror or exc}") from None
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            return
    raise VmmError(f"{what} {path} is in use")
