"""The ``pyvmm`` command line. Errors the user can act on are one line, never a traceback."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import click

from pyvmm import log as pyvmm_log
from pyvmm.config import DeviceSpec, MachineConfig, QmpSpec, parse_size
from pyvmm.errors import VmmError

DEFAULT_MEM = "256M"


class _Group(click.Group):
    """Turns VmmError (and Ctrl-C) into a one-line message and an exit status."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except VmmError as exc:
            click.echo(f"pyvmm: error: {exc}", err=True)
            sys.exit(2)
        except KeyboardInterrupt:
            click.echo("pyvmm: interrupted", err=True)
            sys.exit(130)


def _verbosity_options(fn):
    fn = click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")(fn)
    fn = click.option("--trace", is_flag=True, help="Log every VM exit and device access (very verbose).")(fn)
    fn = click.option("--trace-dev", "trace_devices", multiple=True, metavar="DEV[:CAT,...]",
                      help="Decoded device trace on stderr: DEV is snd, snd0 or all; CAT from "
                           "ctl,io,evt,queue,irq,mmio,fault (default: all but mmio). Repeatable.")(fn)
    fn = click.option("--trace-file", type=click.Path(path_type=Path, dir_okay=False),
                      help="Write the device trace as JSON lines to this file ('pyvmm trace summary|plot' read it).")(fn)
    fn = click.option("--strict", is_flag=True,
                      help="Stop with exit status 125 at the first MUST violation of the virtio spec by the guest's "
                           "driver (every violation is reported either way).")(fn)
    return fn


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="pyvmm")
def main():
    """pyvmm: a small virtual machine monitor on Linux KVM, written in Python."""


def _size(ctx, param, value):
    try:
        return parse_size(value)
    except VmmError as exc:
        raise click.BadParameter(str(exc)) from None


def _device_specs(ctx, param, values):
    specs = []
    for value in values:
        if value in ("help", "?"):
            from pyvmm import plugins

            names = sorted(plugins.available_devices())
            click.echo("available devices: " + (", ".join(names) or "none installed"))
            ctx.exit(0)
        try:
            spec = DeviceSpec.parse(value)
        except VmmError as exc:
            raise click.BadParameter(str(exc)) from None
        if spec.options.get("help") == "on":
            from pyvmm import plugins

            click.echo(plugins.describe(spec.name))
            ctx.exit(0)
        specs.append(spec)
    return specs


def _qmp_spec(ctx, param, value):
    if value is None:
        return None
    try:
        return QmpSpec.parse(value)
    except VmmError as exc:
        raise click.BadParameter(str(exc)) from None


def _gdb_address(ctx, param, value):
    if value is None:
        return None
    from pyvmm.gdbstub.server import GdbAddress

    try:
        return GdbAddress.parse(value)
    except VmmError as exc:
        raise click.BadParameter(str(exc)) from None


@main.command(context_settings={"ignore_unknown_options": False})
@click.option("--kernel", type=click.Path(path_type=Path), help="Kernel (vmlinux ELF or bzImage). Default: the default guest.")
@click.option("--kernel-tree", type=click.Path(path_type=Path, file_okay=False), help="Rebuild this Linux tree if needed (with the options of its last 'pyvmm kernel build') and boot it with the default initramfs.")
@click.option("--initrd", type=click.Path(path_type=Path), help="Initramfs. Default: the default guest's (only with the default kernel).")
@click.option("--append", "append", help="Kernel command line (replaces the default).")
@click.option("--append-extra", "append_extra", multiple=True, help="Add to the kernel command line (repeatable).")
@click.option("--mem", "-m", "mem_size", default=DEFAULT_MEM, show_default=True, callback=_size, help="Guest RAM (e.g. 256M, 1G).")
@click.option("--smp", default=1, show_default=True, type=click.IntRange(1, 8), help="Number of vCPUs.")
@click.option("--cpu", "cpu_model", default="safe", show_default=True, help="CPU model (safe, host) with +feat/-feat changes, e.g. host,-avx.")
@click.option("--extra-initrd", multiple=True, type=click.Path(path_type=Path, exists=True, dir_okay=False), help="Append a cpio archive to the initramfs (repeatable).")
@click.option("--device", "devices", multiple=True, callback=_device_specs, help="Add a device: NAME,key=value,... ('--device help' lists them, 'NAME,help' its options).")
@click.option("--acpi", type=click.Choice(["auto", "on", "off"]), default="auto", show_default=True, help="ACPI tables (devices in the DSDT instead of the command line); auto: when the kernel has ACPI.")
@click.option("--modules", type=click.Path(path_type=Path, file_okay=False, exists=True), help="The kernel's /lib/modules/RELEASE: /init loads the modules the devices need (default: found beside a vmlinuz-RELEASE).")
@click.option("--boot-protocol", type=click.Choice(["auto", "pvh", "linux64"]), default="auto", show_default=True, help="Kernel entry: PVH (32-bit) or the 64-bit boot protocol.")
@click.option("--serial-log", type=click.Path(path_type=Path, dir_okay=False), help="Also write the guest console to this file.")
@click.option("--timeout", type=float, help="Stop the VM after this many seconds (exit status 124).")
@click.option("--stats", is_flag=True, help="Print run time and VM exits by reason when the VM stops.")
@click.option("--monitor", "monitor_path", type=click.Path(dir_okay=False), help="Serve the monitor on this unix socket ('pyvmm monitor PATH' talks to it).")
@click.option("--qmp", callback=_qmp_spec, metavar="unix:PATH[,server,wait=off]", help="Serve QMP (QEMU's JSON protocol) on this unix socket; 'server' alone waits for a client before the guest starts.")
@click.option("--gdb", "gdb_address", callback=_gdb_address, metavar="tcp::PORT|unix:PATH", help="Serve a gdb stub (tcp::1234 listens on localhost; 'pyvmm gdb' connects).")
@click.option("--debug-kernel", is_flag=True, help="Boot the default guest's debug kernel (DWARF, gdb scripts; built on first use).")
@click.option("--gdb-wait", is_flag=True, help="With --gdb: hold the vCPUs before the first instruction until gdb continues (like QEMU -S).")
@_verbosity_options
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
def run(kernel, kernel_tree, initrd, append, append_extra, mem_size, smp, cpu_model, extra_initrd, devices, acpi,
        modules, boot_protocol, serial_log, timeout, stats, monitor_path, qmp, gdb_address, debug_kernel, gdb_wait,
        verbose, trace, trace_devices, trace_file, strict, command):
    """Boot a guest. With '-- CMD ARGS...', run CMD in the default guest and exit with its status."""
    pyvmm_log.setup(verbose, trace)
    if gdb_wait and gdb_address is None:
        raise click.BadParameter("--gdb-wait needs --gdb", param_hint="'--gdb-wait'")
    if debug_kernel and kernel is not None:
        raise click.BadParameter("--debug-kernel boots the default guest's debug kernel: drop --kernel",
                                 param_hint="'--debug-kernel'")
    if kernel is None and kernel_tree is None and modules is not None:
        raise click.BadParameter("the default guest's kernel has no module support; give --kernel too",
                                 param_hint="'--modules'")
    if kernel_tree is not None and (kernel is not None or debug_kernel):
        raise click.UsageError("--kernel-tree excludes --kernel and --debug-kernel "
                               "('pyvmm kernel build --debug' makes the tree's debug kernel)")
    if kernel_tree is not None:
        from pyvmm.arch.x86_64.cpuid import parse_cpu_spec
        from pyvmm.guestimage.builder import ensure_default_initramfs
        from pyvmm.guestimage.kernel_tree import rebuild_tree

        parse_cpu_spec(cpu_model)  # bad options fail before minutes of building
        kernel = rebuild_tree(kernel_tree, progress=_progress).vmlinux
        default_initrd, base_cmdline = ensure_default_initramfs(progress=_progress)
        initrds = [initrd or default_initrd]
    elif kernel is None:
        from pyvmm.guestimage import build_default_guest

        image = build_default_guest(debug=debug_kernel, progress=lambda msg: click.echo(f"pyvmm: {msg}", err=True))
        kernel = image.vmlinux
        initrds = [initrd or image.initramfs]
        base_cmdline = image.cmdline
    else:
        from pyvmm.guestimage.stock_kernel import default_initrds, find_modules_dir

        modules = modules or find_modules_dir(kernel)
        # The default guest's initramfs (its /init runs the command, loads the modules).
        initrds = [initrd] if initrd else default_initrds(progress=lambda msg: click.echo(f"pyvmm: {msg}", err=True))
        base_cmdline = "console=ttyS0"
    cmdline = append if append is not None else base_cmdline
    cmdline = " ".join([cmdline, *append_extra]).strip()
    initrds.extend(extra_initrd)
    extra_data = []
    if command:
        from pyvmm.cpio import CpioEntry, build_cpio

        script = shlex.join(command) + "\n"
        extra_data.append(build_cpio([CpioEntry.file("etc/pyvmm/cmd", script.encode())]))
    config = MachineConfig(
        kernel=kernel,
        cmdline=cmdline,
        initrds=initrds,
        mem_size=mem_size,
        vcpus=smp,
        cpu_model=cpu_model,
        devices=list(devices),
        boot_protocol=boot_protocol,
        serial_log=serial_log,
        extra_initrd_data=extra_data,
        trace_devices=list(trace_devices),
        trace_file=trace_file,
        strict=strict,
        acpi=acpi,
        modules=modules,
        expect_exit_status=bool(command),
    )
    config.validate()
    from pyvmm.vm import run_vm

    sys.exit(run_vm(config, timeout=timeout, stats=stats, monitor_path=monitor_path, qmp=qmp,
                    gdb_address=gdb_address, gdb_wait=gdb_wait))


@main.command("monitor", context_settings={"ignore_unknown_options": True})
@click.argument("path", type=click.Path(dir_okay=False))
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
def monitor_client(path, command):
    """Talk to a VM's monitor socket: run COMMAND (e.g. 'info devices'), or read commands from stdin."""
    from pyvmm.monitor import MonitorClient

    with MonitorClient(path) as client:
        if command:
            ok, text = client.command(shlex.join(command) if len(command) > 1 else command[0])
            if not ok:
                raise VmmError(text)
            if text:
                click.echo(text)
            return
        interactive = sys.stdin.isatty()
        while True:
            try:
                line = input("(pyvmm) ") if interactive else sys.stdin.readline()
            except EOFError:
                break
            if not interactive and not line:
                break
            if not line.strip():
                continue
            ok, text = client.command(line)
            if ok:
                if text:
                    click.echo(text)
            else:
                click.echo(f"error: {text}", err=True)
            if ok and line.split()[0] == "quit":
                break


@main.command("gdb", context_settings={"ignore_unknown_options": True})
@click.option("--connect", "address", default="tcp::1234", show_default=True, callback=_gdb_address,
              metavar="tcp::PORT|unix:PATH", help="Where the VM's gdb stub listens (pyvmm run --gdb ...).")
@click.option("--tree", type=click.Path(path_type=Path, file_okay=False), help="Use the vmlinux built from this kernel tree.")
@click.option("--vmlinux", type=click.Path(path_type=Path, dir_okay=False), help="Use this vmlinux (default: the kernel the VM booted).")
@click.option("--print-command", is_flag=True, help="Print the gdb command line instead of running it.")
@click.argument("gdb_args", nargs=-1, type=click.UNPROCESSED)
def gdb_command(address, tree, vmlinux, print_command, gdb_args):
    """Start Debian's gdb on a running VM, with its vmlinux and the kernel's gdb scripts (lx-dmesg, lx-symbols).

    GDB_ARGS (after '--') are added to gdb's command line, e.g. '-- -batch -ex bt'.
    """
    import os

    from pyvmm.gdbstub.launcher import find_kernel, gdb_argv

    kernel = find_kernel(address, vmlinux=vmlinux, tree=tree)
    if kernel.scripts_dir is None:
        click.echo(f"pyvmm: no {'vmlinux-gdb.py'} next to {kernel.vmlinux}: lx-* commands unavailable "
                   "(build with CONFIG_GDB_SCRIPTS, e.g. 'pyvmm guest build --debug')", err=True)
    argv = gdb_argv(kernel, address, list(gdb_args))
    if print_command:
        click.echo(shlex.join(argv))
        return
    sys.stdout.flush()
    os.execv(argv[0], argv)


@main.group()
def guest():
    """Build and inspect the default guest (kernel + initramfs)."""


@guest.command("build")
@click.option("--debug", is_flag=True, help="Build the debug variant (debug info for gdb, lockdep).")
@click.option("--force", is_flag=True, help="Rebuild even if the cached image matches the recipe.")
def guest_build(debug, force):
    """Build the default guest from Debian packages (cached under ~/.cache/pyvmm)."""
    from pyvmm.guestimage import build_default_guest

    image = build_default_guest(debug=debug, force=force, progress=lambda msg: click.echo(f"pyvmm: {msg}", err=True))
    click.echo(f"kernel:    {image.vmlinux}")
    click.echo(f"bzImage:   {image.bzimage}")
    click.echo(f"initramfs: {image.initramfs}")
    click.echo(f"cmdline:   {image.cmdline}")


@guest.command("fetch-kernel")
@click.argument("spec", default="debian")
@click.option("--force", is_flag=True, help="Download and unpack again.")
def guest_fetch_kernel(spec, force):
    """Download a stock kernel and its modules: SPEC is debian[:6.1|6.12|SUITE] (cached)."""
    from pyvmm.guestimage.stock_kernel import fetch_debian_kernel

    found = fetch_debian_kernel(spec, force=force, progress=lambda msg: click.echo(f"pyvmm: {msg}", err=True))
    click.echo(f"kernel:    {found.kernel}")
    click.echo(f"modules:   {found.modules}")
    click.echo(f"config:    {found.config}")
    click.echo(f"package:   {found.package}")


def _progress(msg: str) -> None:
    click.echo(f"pyvmm: {msg}", err=True)


@main.group()
def kernel():
    """Build your own Linux kernel tree for pyvmm guests."""


@kernel.command("build")
@click.option("--tree", type=click.Path(path_type=Path, file_okay=False), help="Linux source tree (default: the current directory).")
@click.option("--debug", is_flag=True, help="Add DWARF debug info, GDB_SCRIPTS, frame pointers and lockdep.")
@click.option("--config", "fragments", multiple=True, type=click.Path(path_type=Path, dir_okay=False, exists=True), help="Extra config fragment merged last (repeatable).")
@click.option("--config-from-tree", is_flag=True, help="Start from the tree's own .config instead of tinyconfig.")
@click.option("--platform-patch", type=click.Choice(["auto", "yes", "no"]), default="auto", show_default=True, help="Build a shadow copy with the default guest's kvm_pvm patch (auto: when /sys/module/kvm_pvm exists).")
def kernel_build(tree, debug, fragments, config_from_tree, platform_patch):
    """Build a kernel tree out of tree (O= under ~/.cache/pyvmm/trees), incrementally.

    The configuration is tinyconfig (or the tree's .config) plus the default guest's fragment,
    so the kernel boots with the default initramfs: 'pyvmm run --kernel-tree PATH'.
    Nothing is written into the tree.
    """
    from pyvmm.guestimage.kernel_tree import build_tree

    build = build_tree(tree, debug=debug, fragments=list(fragments), config_from_tree=config_from_tree,
                       platform_patch=platform_patch, progress=_progress)
    click.echo(f"vmlinux:   {build.vmlinux}")
    click.echo(f"build dir: {build.build_dir}")


@main.command("vhost-user")
@click.argument("device")
@click.option("--socket", "socket_path", required=True, type=click.Path(dir_okay=False), help="Unix socket to listen on.")
@click.option("--once", is_flag=True, help="Exit when the first front end disconnects.")
@click.option("--monitor", "monitor_path", type=click.Path(dir_okay=False), help="Serve the monitor on this unix socket ('pyvmm monitor PATH' talks to it).")
@click.option("--qmp", callback=_qmp_spec, metavar="unix:PATH[,server,wait=off]", help="Serve QMP on this unix socket (stop/cont pause the device's clock).")
@_verbosity_options
@click.argument("options", nargs=-1)
def vhost_user(device, socket_path, once, monitor_path, qmp, verbose, trace, trace_devices, trace_file, strict,
               options):
    """Serve DEVICE (e.g. snd or virtio-snd) as a vhost-user back end; OPTIONS are key=value device options."""
    pyvmm_log.setup(verbose, trace)
    from pyvmm import plugins
    from pyvmm.config import check_trace_options
    from pyvmm.trace import Tracer
    from pyvmm.vhost_user import serve

    check_trace_options(list(trace_devices), trace_file)

    spec = DeviceSpec.parse(",".join([device, *options]))
    if spec.name not in plugins.available_devices() and f"virtio-{spec.name}" in plugins.available_devices():
        spec = DeviceSpec(f"virtio-{spec.name}", spec.options)
    device_obj = plugins.create_device(spec)
    tracer = Tracer.from_options(trace_devices, trace_file)
    try:
        status = serve(device_obj, socket_path, once=once, monitor_path=monitor_path, device_name=spec.name,
                       qmp=qmp, tracer=tracer, strict=strict)
    finally:
        if tracer is not None:
            tracer.close()
    sys.exit(status)


@main.group("trace")
def trace_group():
    """Read device traces written with --trace-file."""


@trace_group.command("summary")
@click.argument("path", type=click.Path(path_type=Path, exists=True, dir_okay=False))
def trace_summary(path):
    """Per-stream figures: messages, periods, underruns, gaps between completions, lateness."""
    from pyvmm.trace.summary import format_summary

    click.echo(format_summary(path))


@trace_group.command("plot")
@click.argument("path", type=click.Path(path_type=Path, exists=True, dir_okay=False))
@click.option("-o", "--output", type=click.Path(path_type=Path, dir_okay=False), default="timeline.png",
              show_default=True, help="PNG to write.")
def trace_plot(path, output):
    """Timeline per stream: messages in flight, completion lateness, xruns and faults marked."""
    from pyvmm.trace.plot import plot_timeline

    count = plot_timeline(path, output)
    click.echo(f"{output}: {count} stream(s)")


if __name__ == "__main__":
    main()
