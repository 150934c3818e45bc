"""The data-plane tests drive the device with the driver model of ``tests/snd``."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent.parent / "snd"))
