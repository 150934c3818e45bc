"""Every tiny-guest KVM test also runs in the real-KVM tier (marker ``realkvm``): these are the
tests that tell kvm_pvm and hardware KVM (kvm_amd) apart."""

from pathlib import Path

import pytest

_HERE = Path(__file__).parent


def pytest_collection_modifyitems(items):
    for item in items:
        if _HERE in Path(item.path).parents:
            item.add_marker(pytest.mark.realkvm)
