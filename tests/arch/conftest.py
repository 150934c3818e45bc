"""Fixtures for the x86-64 boot layout tests."""

from __future__ import annotations

import pytest

from pyvmm.arch.x86_64 import layout
from pyvmm.memory import GuestMemory


@pytest.fixture
def memory():
    mem = GuestMemory.create(layout.ram_layout(64 * layout.MiB))
    yield mem
    mem.close()
