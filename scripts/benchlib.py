"""Host facts the benchmark scripts share (one place for each): a process's CPU time."""

from __future__ import annotations

import os


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far, all its threads (``/proc/PID/stat``
    fields 14 and 15; the name field may hold spaces and parentheses, so split after its ')')."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
