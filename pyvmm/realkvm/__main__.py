"""``python -m pyvmm.realkvm`` (what ``scripts/real-kvm`` runs): see :mod:`pyvmm.realkvm`."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from pyvmm.errors import VmmError


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--kernel-version", "series", type=click.Choice(["6.1", "6.12"]), default="6.12", show_default=True,
              help="Debian stock kernel of the outer guest: trixie's 6.12 or bookworm's 6.1.")
@click.option("--timeout", type=click.FloatRange(min=1), help="Stop after this many seconds (exit status 124).")
@click.option("--attempts", type=click.IntRange(1, 5), default=2, show_default=True,
              help="Boots tried before the command starts (a boot that stops before 'ready' is retried, and reported).")
@click.option("--boot-timeout", type=click.FloatRange(min=10), default=300, show_default=True,
              help="Seconds from QEMU's start to the outer guest's 'ready' before a boot counts as stopped.")
@click.option("--console-log", type=click.Path(dir_okay=False, path_type=Path),
              help="Append the outer guest's serial console (kernel log) to this file.")
@click.option("-v", "--verbose", is_flag=True, help="Show the outer guest's console as it comes.")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def main(series, timeout, attempts, boot_timeout, console_log, verbose, command):
    """Run COMMAND (cwd and files as here) inside an outer guest whose /dev/kvm is real kvm_amd.

    The outer guest is QEMU's software CPU (-M q35 -accel tcg -cpu max -smp 2 -m 4G) with a
    Debian stock kernel; the host's / is shared read-only with a tmpfs overlay. Exit status:
    COMMAND's; 124 on --timeout; 125 if the tier itself failed.
    """
    from .runner import run_in_real_kvm

    try:
        status = run_in_real_kvm(list(command), series=series, timeout=timeout, attempts=attempts,
                                 boot_timeout=boot_timeout, verbose=verbose, console_log=console_log)
    except VmmError as exc:
        click.echo(f"real-kvm: error: {exc}", err=True)
        sys.exit(125)
    sys.exit(status)


if __name__ == "__main__":
    main(prog_name="real-kvm")
