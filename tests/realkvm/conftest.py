"""The real-KVM tier's tests and their helpers.

Tests marked ``realkvm`` are what ``scripts/real-kvm -- scripts/test -m realkvm`` runs inside
the outer guest (``.ci/run`` does, after the main suite). Those that only make sense there
use :data:`in_tier`, which skips them elsewhere with a message. Guest boots inside the tier
go through :func:`run_guest`, which retries a boot that stopped before the guest's /init
started (issue 9: ~3 of 45 boots on kvm_amd under TCG stopped mid-boot for no known reason)
once, and reports every retry with its cause at the end of the run. Nothing else is retried.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from tier import retries  # noqa: E402


def pytest_terminal_summary(terminalreporter):
    if retries:
        terminalreporter.section("real-KVM tier: retried guest boots")
        for note in retries:
            terminalreporter.write_line(note)
        terminalreporter.write_line(f"{len(retries)} boot(s) retried")
