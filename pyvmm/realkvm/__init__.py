"""The real-KVM tier: run a command where ``/dev/kvm`` is Linux's real ``kvm_amd``.

This machine's own ``/dev/kvm`` is ``kvm_pvm``, which differs from hardware KVM. QEMU's
software CPU (``-cpu max``) emulates AMD SVM, so an outer guest running a Debian stock
kernel can load ``kvm.ko`` + ``kvm-amd.ko`` and run pyvmm, from the host's own checkout,
on a real KVM: slowly (everything, Python included, runs in TCG), but with hardware KVM's
behaviour. ``scripts/real-kvm [--kernel-version 6.1|6.12] -- COMMAND...`` is the CLI.

Modules: :mod:`.image` (stock kernel + outer initramfs), :mod:`.runner` (QEMU, consoles,
retry policy). The stock kernel comes from :func:`pyvmm.guestimage.stock_kernel.fetch_debian_kernel`.
"""

from .runner import EXIT_TIER_FAILED, run_in_real_kvm

__all__ = ["EXIT_TIER_FAILED", "run_in_real_kvm"]
