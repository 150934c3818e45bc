"""Exceptions shared across pyvmm layers."""


class VmmError(Exception):
    """An error the user can act on; the CLI prints it as one line, without a traceback."""


class GuestMemoryError(VmmError, ValueError):
    """A guest-physical access outside guest RAM (or across a hole)."""
