"""Vm: builds a KVM virtual machine from a MachineConfig and runs it until the guest stops.

The order of construction follows what KVM requires and what a reader needs to know:
memory slots, then the in-kernel interrupt controllers, then the buses and devices,
then the kernel and boot structures in guest RAM, then the vCPUs (CPUID, MSRs, LAPIC,
registers). Running is one thread per vCPU plus the device event loop; the main thread
only waits for a reason to stop (guest reset, debug-exit port, Ctrl-A x, a signal,
a timeout or an error) and tears everything down in reverse.

:meth:`Vm.pause_machine` / :meth:`Vm.resume_machine` (QMP ``stop``/``cont``) park the vCPUs, freeze the
guest's kvmclock and pause every device's clock, so neither the guest nor a device sees the
pause as elapsed time. What happens is published on ``Vm.events`` (:mod:`pyvmm.events`):
``STOP``, ``RESUME``, ``SHUTDOWN`` from the VM, device events from the devices.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field

from pyvmm import guest_log, plugins
from pyvmm.arch.x86_64 import acpi, layout
from pyvmm.arch.x86_64.acpi_probe import kernel_has_acpi
from pyvmm.arch.x86_64.boot import load_kernel, setup_boot
from pyvmm.arch.x86_64.cpuid import parse_cpu_spec, vcpu_cpuid
from pyvmm.arch.x86_64.lapic import set_virtual_wire
from pyvmm.arch.x86_64.msr import boot_msrs, supported_only
from pyvmm.bus import Bus
from pyvmm.config import MachineConfig, QmpSpec
from pyvmm.console import stdio_console
from pyvmm.eventloop import DeviceEventLoop
from pyvmm.errors import VmmError
from pyvmm.conformance import STRICT_EXIT_STATUS, Checker, format_violation
from pyvmm.events import EventBus
from pyvmm.trace import Tracer
from pyvmm.kvm import Kvm
from pyvmm.legacy import acpi_sleep, i8042, serial
from pyvmm.legacy.irq import GsiLine
from pyvmm.legacy.ports import install_legacy_devices
from pyvmm.memory import GuestMemory
from pyvmm.monitor import device_names
from pyvmm.vcpu import StopKind, Vcpu, VcpuStop
from pyvmm.virtio.mmio import MmioTransport

log = logging.getLogger(__name__)

# Addresses KVM needs for its real-mode TSS and identity map (below the 4 GiB BIOS area), as
# Firecracker and QEMU place them.
KVM_TSS_ADDR = 0xFFFB_D000
KVM_IDENTITY_MAP_ADDR = 0xFFFB_C000

EXIT_TIMEOUT = 124
EXIT_ERROR = 1

#: The x87 control word as the CPU resets it (Linux expects the default). MXCSR is not set here:
#: KVM_SET_FPU ignores its ``mxcsr`` field, and KVM creates vCPUs with the reset value 0x1F80
#: (tests/kvm/test_kvm_state.py checks both; ``VcpuFd.set_mxcsr`` changes it through XSAVE).
FPU_DEFAULTS = {"fcw": 0x37F}


class IrqFd:
    """An edge interrupt: writing the eventfd makes KVM inject ``gsi`` without a VMM exit."""

    def __init__(self, vm_fd, gsi: int):
        self.fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        self.gsi = gsi
        vm_fd.irqfd(self.fd, gsi)

    def trigger(self) -> None:
        try:
            os.eventfd_write(self.fd, 1)
        except BlockingIOError:
            pass  # counter saturated: an interrupt is pending anyway

    def close(self) -> None:
        os.close(self.fd)


@dataclass
class StopReason:
    status: int
    message: str
    error: bool = False
    cause: str = "host-error"
    """QMP's ShutdownCause (``SHUTDOWN`` event): guest-reset, guest-shutdown, host-signal, ..."""

    @property
    def by_guest(self) -> bool:
        return self.cause.startswith("guest-")


@dataclass
class VmStats:
    started: float = field(default_factory=time.monotonic)
    exit_counts: dict[str, int] = field(default_factory=dict)


def acpi_platform(ncpus: int, windows: list[acpi.MmioWindow]) -> acpi.Platform:
    """What the ACPI tables describe: the vCPUs, COM1, the virtio-mmio windows, the i8042 reset."""
    com1_irq = layout.LEGACY_IRQS["com1"]
    return acpi.Platform(
        ncpus=ncpus,
        serial_ports=(acpi.SerialPort(serial.COM1_BASE, serial.REGISTER_COUNT, com1_irq),),
        virtio_mmio=tuple(windows),
        reset_port=i8042.COMMAND_PORT, reset_value=i8042.CMD_PULSE_RESET,
        isa_irqs=tuple(irq for irq in (com1_irq, *(w.gsi for w in windows)) if irq < 16))


class Vm:
    """One guest: its memory, interrupt controllers, devices and vCPUs."""

    def __init__(self, config: MachineConfig):
        self.config = config
        self.stats = VmStats()
        self.tracer = Tracer.from_options(config.trace_devices,
                                          str(config.trace_file) if config.trace_file else None)
        self.events = EventBus(self.tracer, Checker(strict=config.strict))
        self.events.checker.on_strict = lambda v: self.request_stop(
            STRICT_EXIT_STATUS, f"--strict: {format_violation(v)}", error=True, cause="guest-panic")
        self.device_names = device_names(spec.name for spec in config.devices)
        """Short names (``snd0``) used by the monitor, QMP and device events."""
        self._stop_reason: StopReason | None = None
        self._stopped = threading.Event()
        self._stop_lock = threading.Lock()
        self._run_state = "prelaunch"
        self._pause_lock = threading.Lock()
        self._frozen_clock: int | None = None
        self.kvm = self.vm_fd = self.memory = self.event_loop = self.console = None
        self.transports: list[MmioTransport] = []
        self._mmio_windows: list[acpi.MmioWindow] = []
        self.acpi_mode = "off"
        self._irqfds: list[IrqFd] = []
        self.vcpus: list[Vcpu] = []
        try:
            self._build()
        except BaseException:
            self.shutdown()
            raise

    def _build(self) -> None:
        config = self.config
        self.kvm = Kvm(os.environ.get("PYVMM_KVM_DEVICE", "/dev/kvm"))
        self.vm_fd = self.kvm.create_vm()
        self.memory = self._create_memory()
        self.vm_fd.set_tss_addr(KVM_TSS_ADDR)
        self.vm_fd.set_identity_map_addr(KVM_IDENTITY_MAP_ADDR)
        self.vm_fd.create_irqchip()
        self.vm_fd.create_pit2(speaker_dummy=True)
        self.pio_bus = Bus("pio")
        self.mmio_bus = Bus("mmio")
        self.event_loop = DeviceEventLoop().start()
        self.console = stdio_console(on_quit=lambda: self.request_stop(0, "quit from the console (C-a x)",
                                                                       cause="host-ui"),
                                     log_path=config.serial_log)
        self.legacy = install_legacy_devices(
            self.pio_bus,
            serial_sink=self.console.write_output,
            serial_irq=GsiLine(self.vm_fd, layout.LEGACY_IRQS["com1"]),
            on_reset=lambda: self._guest_reset("guest reset the machine"),
            on_exit=lambda status: self.request_stop(status, f"guest wrote {status} to the debug-exit port",
                                                     cause="guest-shutdown"),
        )
        self.acpi_mode = self._acpi_mode()
        if self.acpi_mode != "off":
            registers = acpi_sleep.AcpiSleepRegisters(
                on_poweroff=lambda: self._guest_reset("guest powered off (ACPI S5)", cause="guest-shutdown"))
            self.pio_bus.insert(registers, layout.ACPI_SLEEP_CONTROL_PORT, acpi_sleep.REGISTER_COUNT)
        cmdline = self._add_virtio_devices(config.cmdline)
        self.vcpus = self._create_vcpus(cmdline)

    # -- construction ---------------------------------------------------------------

    def _create_memory(self) -> GuestMemory:
        memory = GuestMemory.create(layout.ram_layout(self.config.mem_size))
        for slot, region in enumerate(memory.regions):
            self.vm_fd.set_user_memory_region(slot, region.guest_addr, region.size, region.host_addr)
        return memory

    def _acpi_mode(self) -> str:
        """``on``: tables, devices only there; ``off``: MP table and command line only;
        ``both``: tables and command-line devices (``auto`` when the kernel gives no clue)."""
        has_acpi = kernel_has_acpi(self.config.kernel, self.config.modules)
        if self.config.acpi != "auto":
            if self.config.acpi == "on" and has_acpi is False and self.config.devices:
                log.warning("--acpi on: %s is built without ACPI, so it will not find the virtio devices"
                            " (they are only in the ACPI tables)", self.config.kernel)
            return self.config.acpi
        if has_acpi is None:
            log.info("cannot tell whether %s has ACPI: devices are in the ACPI tables and on the command line"
                     " (--acpi on|off decides)", self.config.kernel)
            return "both"
        log.info("kernel %s ACPI: --acpi auto is %s", "has" if has_acpi else "lacks", "on" if has_acpi else "off")
        return "on" if has_acpi else "off"

    def _acpi_tables(self) -> acpi.AcpiTables | None:
        if self.acpi_mode == "off":
            return None
        return acpi.build_tables(acpi_platform(self.config.vcpus, self._mmio_windows))

    def _add_virtio_devices(self, cmdline: str) -> str:
        fragments = []
        for index, spec in enumerate(self.config.devices):
            device = plugins.create_device(spec)
            device.event_sink = self.events.sink(self.device_names[index])
            base, size, gsi = layout.virtio_mmio_slot(index)
            irq = IrqFd(self.vm_fd, gsi)
            self._irqfds.append(irq)
            transport = MmioTransport(device, self.memory, self.event_loop, irq, name=f"{spec.name}@{base:#x}")
            self.mmio_bus.insert(transport, base, size)
            for addr, length, datamatch, fd in transport.ioeventfds(base):
                self.vm_fd.ioeventfd(fd, addr, length, datamatch)
            self.transports.append(transport)
            self._mmio_windows.append(acpi.MmioWindow(base, size, gsi))
            if self.acpi_mode != "on":
                fragments.append(transport.cmdline_fragment(base, gsi))
            log.info("%s at %#x, IRQ %d", spec.name, base, gsi)
        return " ".join([cmdline, *fragments])

    def _initrd(self) -> bytes | None:
        parts = []
        for path in self.config.initrds:
            try:
                parts.append(path.read_bytes())
            except OSError as exc:
                raise VmmError(f"cannot read initrd {path}: {exc.strerror}") from None
        parts.extend(self.config.extra_initrd_data)
        if self.config.modules is not None:
            parts.append(self._modules_overlay())
        # Linux accepts concatenated cpio archives; each starts on a 4-byte boundary.
        aligned = [p + b"\0" * (-len(p) % 4) for p in parts]
        return b"".join(aligned) or None

    def _modules_overlay(self) -> bytes:
        """The transport's and the devices' kernel modules, for /init to load (stock kernels)."""
        from pyvmm.guestimage import modules
        from pyvmm.virtio.constants import MMIO_VENDOR_ID

        modaliases = [modules.virtio_modalias(t.device.device_type, MMIO_VENDOR_ID) for t in self.transports]
        if self.acpi_mode != "off" and self.transports:
            modaliases.insert(0, modules.VIRTIO_MMIO_ACPI_MODALIAS)
        names = [modules.VIRTIO_MMIO_MODULE] if self.transports else []
        return modules.build_overlay(self.config.modules, modaliases, names).cpio

    def _create_vcpus(self, cmdline: str) -> list[Vcpu]:
        config = self.config
        kernel = load_kernel(self.memory, config.kernel)
        boot_state = setup_boot(self.memory, kernel, cmdline, self._initrd(), config.vcpus, config.boot_protocol,
                                acpi=self._acpi_tables())
        log.info("kernel command line: %s", cmdline)
        model = parse_cpu_spec(config.cpu_model)
        supported_cpuid = self.kvm.get_supported_cpuid()
        msrs = supported_only(boot_msrs(), self.kvm.get_msr_index_list())
        vcpus = []
        for index in range(config.vcpus):
            fd = self.vm_fd.create_vcpu(index)
            fd.set_cpuid(vcpu_cpuid(supported_cpuid, index, config.vcpus, model))
            fd.set_msrs(msrs)
            fd.set_fpu(FPU_DEFAULTS)
            lapic = fd.get_lapic()
            regs = bytearray(lapic.regs)
            set_virtual_wire(regs)
            lapic.regs[:] = regs
            fd.set_lapic(lapic)
            if index == 0:
                fd.set_sregs(boot_state)
                fd.set_regs(boot_state)
            vcpus.append(Vcpu(fd, self.pio_bus, self.mmio_bus, memory=self.memory, on_stop=self._on_vcpu_stop))
        return vcpus

    # -- stopping -------------------------------------------------------------------

    def request_stop(self, status: int, message: str, error: bool = False, cause: str = "host-error") -> None:
        """Ask the VM to stop; the first reason wins. Safe from any thread or signal handler.

        ``cause`` is QMP's ShutdownCause for the ``SHUTDOWN`` event (``host-qmp-quit``, ...)."""
        with self._stop_lock:
            if self._stop_reason is None:
                self._stop_reason = StopReason(status, message, error, cause)
        self._stopped.set()

    def _on_vcpu_stop(self, vcpu: Vcpu, stop: VcpuStop) -> None:
        if stop.kind is StopKind.REQUESTED:
            return
        if stop.kind is StopKind.SHUTDOWN:
            self._guest_reset(stop.message, crashed=True)
        elif stop.kind is StopKind.RESET:
            self._guest_reset(f"guest reset ({stop.message})")
        elif stop.kind is StopKind.POWEROFF:
            self.request_stop(0, "guest powered off", cause="guest-shutdown")
        else:
            self.request_stop(EXIT_ERROR, f"vcpu{vcpu.id}: {stop.message}", error=stop.is_error,
                              cause="guest-panic" if stop.kind is StopKind.CRASH else "host-error")

    # -- pausing the machine (QMP stop/cont) --------------------------------------------

    @property
    def status(self) -> str:
        """QMP's RunState: ``prelaunch`` (built, not started), ``running``, ``paused``, ``shutdown``."""
        return self._run_state

    def pause_machine(self) -> bool:
        """Stop the guest, its kvmclock and the device clocks (QMP ``stop``); False if it was
        not running. Unlike :meth:`pause` (vCPUs only, for a debugger), no time passes for
        anything in the machine until :meth:`resume_machine`."""
        with self._pause_lock:
            if self._run_state != "running":
                return False
            if not self.pause(timeout=5.0):
                log.warning("not every vCPU paused within 5 s")
            try:  # the guest's kvmclock stands still while paused, as QEMU does it
                self._frozen_clock = self.vm_fd.get_clock().clock
            except OSError as exc:
                log.debug("cannot read the KVM clock: %s", exc)
                self._frozen_clock = None
            self._for_each_device("pause")
            self._run_state = "paused"
        log.info("VM paused")
        self.events.emit("STOP")
        return True

    def resume_machine(self, vcpus: bool = True) -> bool:
        """Continue after :meth:`pause_machine` (QMP ``cont``); False if it was not paused.
        ``vcpus=False``: devices and the clock only, for the gdb stub, which then runs the
        vCPUs gdb chose (a continue in gdb ends a QMP stop, as in QEMU)."""
        with self._pause_lock:
            if self._run_state != "paused":
                return False
            self._for_each_device("resume")
            if self._frozen_clock is not None:
                try:
                    self.vm_fd.set_clock(self._frozen_clock)
                except OSError as exc:
                    log.debug("cannot restore the KVM clock: %s", exc)
            if vcpus:
                self.resume()
            self._run_state = "running"
        log.info("VM resumed")
        self.events.emit("RESUME")
        return True

    def _for_each_device(self, method: str) -> None:
        for transport in self.transports:
            try:
                self.event_loop.call(getattr(transport.device, method), timeout=5)
            except Exception:
                log.exception("%s: %s failed", transport.name, method)

    # -- pausing (gdb stub, monitor) -------------------------------------------------

    def pause(self, timeout: float | None = 5.0) -> bool:
        """Park every vCPU outside KVM_RUN; True once all are parked (devices keep running)."""
        for vcpu in self.vcpus:
            vcpu.request_pause()
        return all(vcpu.wait_paused(timeout) for vcpu in self.vcpus)

    def resume(self) -> None:
        """Let every vCPU run again."""
        for vcpu in self.vcpus:
            vcpu.resume()

    @property
    def paused(self) -> bool:
        """True while every vCPU is parked or has a pause pending (e.g. before the first run)."""
        return bool(self.vcpus) and all(vcpu.pause_requested for vcpu in self.vcpus)

    def _guest_reset(self, message: str, crashed: bool = False, cause: str = "guest-reset") -> None:
        """A reset, triple fault or ACPI power-off. pyvmm does not reboot guests (like QEMU's
        ``-no-reboot``): the VM stops with 0, unless a command's exit status was still owed
        (``expect_exit_status``)."""
        if self.config.expect_exit_status:
            self.request_stop(EXIT_ERROR, f"{message}, before the command's exit status arrived", error=True,
                              cause=cause)
            return
        if crashed:
            log.warning("%s; stopping (pyvmm does not reboot guests)", message)
        self.request_stop(0, message, cause=cause)

    # -- running --------------------------------------------------------------------

    def run(self, timeout: float | None = None) -> int:
        """Run until the guest or the user stops the VM; return the exit status."""
        previous = {}
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
                previous[signum] = signal.signal(
                    signum, lambda n, f: self.request_stop(128 + n, f"stopped by signal {signal.Signals(n).name}",
                                                           cause="host-signal"))
        try:
            self.console.start(self.legacy.serial)
            with self._pause_lock:
                for vcpu in self.vcpus:
                    vcpu.start()
                self._run_state = "running"
            if not self._stopped.wait(timeout):
                self.request_stop(EXIT_TIMEOUT, f"timeout after {timeout:g} s", cause="host-signal")
        finally:
            with self._pause_lock:
                self._run_state = "shutdown"
            reason = self._stop_reason
            if reason is not None:
                self.events.emit("SHUTDOWN", guest=reason.by_guest, reason=reason.cause)
            self.shutdown()
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        reason = self._stop_reason
        log.info("VM stopped: %s (exit status %d)", reason.message, reason.status)
        if reason.error:
            print(f"pyvmm: error: {reason.message}", file=sys.stderr)
        return reason.status

    def shutdown(self) -> None:
        """Stop vCPUs, then devices (flushing their output), then release KVM objects.

        Also called on a half-built VM, so every step checks what exists.
        """
        for vcpu in self.vcpus:
            vcpu.request_stop()
        for vcpu in self.vcpus:
            vcpu.stop()
            for name, count in vcpu.exit_counts.items():
                self.stats.exit_counts[name] = self.stats.exit_counts.get(name, 0) + count
        if self.console is not None:
            self.console.stop()
        for transport in self.transports:
            try:
                self.event_loop.call(transport.device.close, timeout=5)
            except Exception:
                log.exception("%s: close failed", transport.name)
            transport.close()
        if self.event_loop is not None:
            self.event_loop.stop()
        guest_log.log_summary()
        if self.transports:
            self.events.checker.log_summary(always=self.config.strict)
        for irq in self._irqfds:
            irq.close()
        for vcpu in self.vcpus:
            vcpu.fd.close()
        for resource in (self.vm_fd, self.memory, self.kvm):
            if resource is not None:
                resource.close()
        if self.tracer is not None:
            self.tracer.close()


def run_vm(config: MachineConfig, timeout: float | None = None, stats: bool = False,
           monitor_path: str | None = None, qmp: QmpSpec | None = None, gdb_address=None,
           gdb_wait: bool = False) -> int:
    vm = Vm(config)
    servers = []
    gdb_server = None
    try:
        if monitor_path is not None:
            from pyvmm.monitor import MonitorServer, vm_monitor

            servers.append(MonitorServer(vm_monitor(vm), monitor_path).start())
        if qmp is not None:
            from pyvmm.qmp import serve_vm

            servers.append(serve_vm(vm, qmp))
        if gdb_address is not None:
            from pyvmm.gdbstub import start_gdb_server

            gdb_server = start_gdb_server(vm, gdb_address, wait=gdb_wait)
            if gdb_wait:
                print(f"pyvmm: waiting for gdb on {gdb_server.address} ('pyvmm gdb' connects)", file=sys.stderr)
    except BaseException:
        for server in servers:
            server.close()
        vm.shutdown()
        raise
    status = None
    try:
        status = vm.run(timeout)
    finally:
        if gdb_server is not None:
            gdb_server.close(status)  # a debugger waiting for the guest learns its exit status
        for server in reversed(servers):
            server.close()
    if stats:
        elapsed = time.monotonic() - vm.stats.started
        counts = ", ".join(f"{k}={v}" for k, v in sorted(vm.stats.exit_counts.items(), key=lambda kv: -kv[1]))
        print(f"pyvmm: {elapsed:.2f} s, VM exits: {counts or 'none'}", file=sys.stderr)
    return status
