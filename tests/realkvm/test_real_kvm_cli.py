"""``scripts/real-kvm`` from the host: one outer boot (QEMU TCG + Debian 6.12 + kvm_amd).

Costs ~40 s here (the outer guest is ready 7-20 s after QEMU starts, depending on load).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
REAL_KVM = str(REPO / "scripts" / "real-kvm")


@pytest.mark.qemu
def test_command_runs_on_kvm_amd_with_cwd_output_and_status():
    script = ('echo "out $PWD $PYVMM_REALKVM"; echo err-line >&2; '
              'test -c /dev/kvm && test -d /sys/module/kvm_amd && test ! -d /sys/module/kvm_pvm && '
              'test ! -t 1 && touch written-in-the-overlay && exit 7')
    proc = subprocess.run([REAL_KVM, "--", "sh", "-c", script], cwd=REPO, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 7, proc.stdout + proc.stderr
    assert f"out {REPO} 6.12." in proc.stdout
    assert "err-line" in proc.stderr and "err-line" not in proc.stdout
    assert "outer guest ready" in proc.stderr and "command exited with status 7" in proc.stderr
    assert not (REPO / "written-in-the-overlay").exists()  # the host's / is read-only to the guest


def test_bad_option_is_one_line_error_before_booting():
    proc = subprocess.run([REAL_KVM, "--kernel-version", "5.4", "--", "true"], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2
    assert "Invalid value for '--kernel-version'" in proc.stderr and "booting" not in proc.stderr
