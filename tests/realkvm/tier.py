"""Helpers of the real-KVM tier's tests (see conftest.py beside this file)."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass

import pytest

IN_REALKVM = bool(os.environ.get("PYVMM_REALKVM"))
in_tier = pytest.mark.skipif(not IN_REALKVM, reason="runs only inside the real-KVM tier (scripts/real-kvm)")
INIT_STARTED = "pyvmm-init: start"
BOOT_ATTEMPTS = 2
retries: list[str] = []
"""One line per retried boot, printed at the end of the run by conftest.py."""


@dataclass
class GuestRun:
    returncode: int
    stdout: str
    stderr: str
    attempts: int

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def run_guest(*args: str, timeout: float = 600) -> GuestRun:
    """``pyvmm run ARGS`` with the tier's retry policy: a boot whose /init never started is retried once."""
    return run_with_retry([sys.executable, "-m", "pyvmm", "run", *args], f"pyvmm run {' '.join(args)}", timeout)


def run_with_retry(argv: list[str], label: str, timeout: float) -> GuestRun:
    for attempt in range(1, BOOT_ATTEMPTS + 1):
        try:
            proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout)
            run = GuestRun(proc.returncode, proc.stdout.decode(errors="replace"),
                           proc.stderr.decode(errors="replace"), attempt)
            cause = None if INIT_STARTED in run.stdout else (
                f"exit status {run.returncode} before /init started: "
                f"{(run.stderr.strip().splitlines() or ['no message'])[-1]}")
        except subprocess.TimeoutExpired as exc:
            out = (exc.stdout or b"").decode(errors="replace")
            run = GuestRun(124, out, (exc.stderr or b"").decode(errors="replace"), attempt)
            cause = None if INIT_STARTED in out else f"no /init after {timeout:g} s (timeout)"
        if cause is None or attempt == BOOT_ATTEMPTS:
            return run
        note = f"{label}: boot {attempt} stopped mid-boot ({cause}); retrying"
        retries.append(note)
        print(f"realkvm: {note}", file=sys.stderr)
    raise AssertionError("unreachable")
