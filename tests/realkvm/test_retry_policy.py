"""The real-KVM tier's retry policies, played against stand-ins (no QEMU, no guest): seconds.

scripts/real-kvm retries an outer boot that stopped before 'ready', says why each time and
sums up; it never retries once the command started. tier.run_guest retries a guest boot whose
/init never started, once, and lists it for the end of the pytest run.
"""

from __future__ import annotations

import io
import sys
from pathlib import Path

import pytest

import tier
from pyvmm.guestimage.progress import Progress
from pyvmm.realkvm.image import OuterImage
from pyvmm.realkvm.runner import EXIT_TIER_FAILED, EXIT_TIMEOUT, OuterGuest, RunSettings

FAKE_QEMU = [sys.executable, str(Path(__file__).with_name("fake_qemu.py"))]


class _Kernel:
    release = "6.12.0-fake"
    kernel = Path("/nonexistent/vmlinuz")


def run_policy(tmp_path, monkeypatch, plan: str, **settings) -> tuple[int, str, str, OuterGuest]:
    monkeypatch.setenv("FAKE_QEMU_PLAN", plan)
    monkeypatch.setenv("FAKE_QEMU_COUNTER", str(tmp_path / "boots"))
    initramfs = tmp_path / "initramfs.cpio"
    initramfs.write_bytes(b"")
    out, err, said = io.BytesIO(), io.BytesIO(), []
    guest = OuterGuest(FAKE_QEMU, OuterImage(_Kernel(), initramfs),
                       RunSettings(argv=["true"], cwd="/", **settings), Progress(said.append), stdout=out, stderr=err)
    status = guest.run()
    return status, out.getvalue().decode(), err.getvalue().decode() + "\n".join(said), guest


def test_a_boot_that_dies_before_ready_is_retried_and_reported(tmp_path, monkeypatch):
    status, out, err, guest = run_policy(tmp_path, monkeypatch, "die,ok:3")
    assert status == 3 and out == "out\n" and "err\n" in err
    assert "outer guest stopped before it was ready: QEMU exited with status 1: " \
           "qemu-system-x86_64: fake failure; retrying (boot 2 of at most 2)" in err
    assert "retried boots: 1 of 2 (boot 1: QEMU exited with status 1" in err
    assert [a.ready for a in guest.attempts] == [False, True]


def test_a_hung_boot_is_retried_after_the_boot_timeout(tmp_path, monkeypatch):
    status, _, err, _ = run_policy(tmp_path, monkeypatch, "hang,ok:0", boot_timeout=1.5)
    assert status == 0
    assert "not ready 1.5 s after QEMU started; retrying" in err


def test_retries_are_bounded(tmp_path, monkeypatch):
    status, _, err, guest = run_policy(tmp_path, monkeypatch, "die,die,ok:0", attempts=2)
    assert status == EXIT_TIER_FAILED and len(guest.attempts) == 2
    assert "did not get ready in 2 boots" in err and "retried boots: 2 of 2" in err


def test_no_retry_once_the_command_started(tmp_path, monkeypatch):
    status, _, err, guest = run_policy(tmp_path, monkeypatch, "crash,ok:0")
    assert status == EXIT_TIER_FAILED and len(guest.attempts) == 1
    assert "the outer guest stopped while the command ran" in err
    assert "console| realkvm-init: ready" in err  # the console's tail is shown


def test_the_run_timeout_is_124_and_not_retried(tmp_path, monkeypatch):
    status, _, err, guest = run_policy(tmp_path, monkeypatch, "hang,ok:0", timeout=1.5)
    assert status == EXIT_TIMEOUT and len(guest.attempts) == 1
    assert "timeout: the run's timeout (1.5 s) expired" in err


def test_guest_boot_retry_only_before_init_and_listed(tmp_path, monkeypatch):
    counter = tmp_path / "n"
    script = tmp_path / "fake_pyvmm.sh"
    # First run: dies before /init; second: /init starts, then the command fails with 4 (not retried).
    script.write_text(f'n=$(cat {counter} 2>/dev/null || echo 0); echo $((n + 1)) > {counter}\n'
                      'if [ $n -eq 0 ]; then echo "pyvmm: error: vcpu0: KVM internal error" >&2; exit 1; fi\n'
                      'echo "pyvmm-init: start"; exit 4\n')
    monkeypatch.setattr(tier, "retries", [])
    run = tier.run_with_retry(["sh", str(script)], "pyvmm run -- x", timeout=60)
    assert run.returncode == 4 and run.attempts == 2
    assert tier.retries == ["pyvmm run -- x: boot 1 stopped mid-boot (exit status 1 before /init started: "
                            "pyvmm: error: vcpu0: KVM internal error); retrying"]
    counter.write_text("1")
    assert tier.run_with_retry(["sh", str(script)], "again", timeout=60).attempts == 1
    assert len(tier.retries) == 1
