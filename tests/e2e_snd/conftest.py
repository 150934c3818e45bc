"""The end-to-end sound tests import their helpers (``snd_checks``) from this directory."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
