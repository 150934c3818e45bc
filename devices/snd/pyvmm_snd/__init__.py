"""The virtio-sound device, a pyvmm device plugin (entry point group ``pyvmm.devices``)."""
