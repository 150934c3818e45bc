"""The PC legacy devices a Linux guest expects on the port bus.

``serial`` (16550A COM1), ``i8042`` (keyboard controller: CPU reset for ``reboot=k``),
``debug_exit`` (port 0x501: exit status), ``cmos`` (MC146818 RTC), ``ports`` (quiet
ports and :func:`~pyvmm.legacy.ports.install_legacy_devices`, which installs them all),
``irq`` (interrupt line adapters for KVM).
"""
