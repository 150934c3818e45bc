"""Everything that lays out a Linux x86-64 boot in guest memory (pure data, no KVM calls).

Entry points: :func:`boot.load_kernel` and :func:`boot.setup_boot` (returns the boot vCPU's
:class:`cpu_state.CpuState`); :func:`cpuid.vcpu_cpuid`, :func:`msr.boot_msrs` /
:func:`msr.supported_only` and :func:`lapic.set_virtual_wire` for per-vCPU set-up;
:mod:`layout` for every guest address, the MMIO hole and the virtio-mmio slots/IRQs.
"""
