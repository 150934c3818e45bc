"""How tests start the pyvmm CLI: this checkout's interpreter, ``python -m pyvmm``."""

import sys


def pyvmm_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "pyvmm", *args]
