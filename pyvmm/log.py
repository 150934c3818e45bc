"""Logging set-up: concise by default, detailed with -v, every exit and access with --trace."""

from __future__ import annotations

import logging
import sys

TRACE = 5
logging.addLevelName(TRACE, "TRACE")


def setup(verbosity: int = 0, trace: bool = False, stream=None) -> None:
    """verbosity 0: warnings; 1: info; 2+: debug. ``trace`` adds TRACE records."""
    level = TRACE if trace else {0: logging.WARNING, 1: logging.INFO}.get(verbosity, logging.DEBUG)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(logging.Formatter("pyvmm: %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
