"""pyvmm: a small virtual machine monitor on Linux KVM, written in Python."""

__version__ = "0.1.0"
