"""Shared fixtures: KVM availability, the default guest image, and one booted guest per session.

Tests that need /dev/kvm are marked ``kvm`` and skipped, with a message, only when the
device is absent. The default guest (kernel + initramfs) is built once and cached; a
guest boot costs tens of seconds on this platform, so the booted guest is shared.
"""

from __future__ import annotations

import os
import sys

import pytest

KVM_DEVICE = "/dev/kvm"


def kvm_missing_reason() -> str | None:
    if not os.path.exists(KVM_DEVICE):
        return f"{KVM_DEVICE} is absent on this machine: KVM tests skipped"
    return None


def pytest_collection_modifyitems(config, items):
    reason = kvm_missing_reason()
    if reason is None:
        return
    skip = pytest.mark.skip(reason=reason)
    for item in items:
        if "kvm" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def guest_image():
    """The default guest, built from Debian packages (cached under ~/.cache/pyvmm)."""
    from pyvmm.guestimage import build_default_guest

    return build_default_guest(progress=lambda msg: print(f"pyvmm: {msg}", file=sys.stderr))



@pytest.fixture(autouse=True)
def _fresh_guest_error_log():
    """Each test is a new VM lifetime for the guest-error rate limiter (pyvmm.guest_log)."""
    from pyvmm import guest_log

    guest_log.reset()
    yield
