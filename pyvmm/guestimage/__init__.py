"""The default guest image builder (kernel + initramfs from Debian) and the QEMU tool root.

Public API::

    build_default_guest(debug=False, force=False, progress=print) -> GuestImage
    ensure_qemu(progress=print) -> list[str]   # argv prefix for qemu-system-x86_64
"""

from .builder import GuestImage, build_default_guest
from .qemu import ensure_qemu

__all__ = ["GuestImage", "build_default_guest", "ensure_qemu"]
