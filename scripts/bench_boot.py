#!/usr/bin/env python3
"""Boot benchmark: median over N runs of the default guest's boot milestones, and VM exits.

Milestones are wall-clock seconds from starting the VMM process (so Python's or QEMU's
start-up counts) to: the first console line, the kernel's ``Run /init``, the first
user-space line (``pyvmm-init: start``) and the VMM's exit after ``-- true``. VM exits
by reason come from ``pyvmm run --stats``.

    .venv/bin/python scripts/bench_boot.py [--runs 3] [--smp 1] [-- extra pyvmm run options]
    .venv/bin/python scripts/bench_boot.py --vs-qemu [--runs 3]

``--vs-qemu`` boots the same kernel (the default guest's vmlinux, PVH entry), initramfs,
command line (the default, ``quiet``) and command under pyvmm and under QEMU's ``microvm``
machine (``acpi=off``; pyvmm ``--acpi off``: both use an MP table) with ``-accel kvm`` on
the same ``/dev/kvm``, alternating (pyvmm first in odd rounds, QEMU first in even ones),
and prints both medians and the pyvmm/QEMU ratio of the time to /init's first line and to exit.
It is meant for a real KVM (``scripts/real-kvm -- .venv/bin/python scripts/bench_boot.py
--vs-qemu``): on kvm_pvm QEMU's ``-cpu host`` is refused (pass ``--qemu-cpu max``).
QEMU ends through ``isa-debug-exit`` at the same port (0x501) where /init reports the status.
"""

from __future__ import annotations

import argparse
import os
import re
import selectors
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MILESTONES = [
    ("first console line", re.compile(r".")),
    ("Run /init", re.compile(r"Run /init as init process")),
    ("first user-space line", re.compile(r"pyvmm-init: start")),
]
#: With --vs-qemu: /init's first line (the kernel is 'quiet', as users boot it: with loglevel=7
#: every console byte is an exit, which costs the VMM more than the boot itself) and the exit.
VS_QEMU_MILESTONES = ["first user-space line", "VMM exit"]


def timed_run(argv: list[str], timeout: float, ok_status: tuple[int, ...] = (0,)) -> tuple[dict[str, float], str]:
    """Run ``argv``; seconds from its start to each milestone seen on stdout, and its stderr."""
    start = time.monotonic()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    seen: dict[str, float] = {}
    stderr = b""
    pending = b""
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    sel.register(proc.stderr, selectors.EVENT_READ)
    open_streams = 2
    while open_streams and time.monotonic() - start < timeout:
        for key, _ in sel.select(timeout=1):
            data = os.read(key.fd, 65536)
            now = time.monotonic() - start
            if not data:
                sel.unregister(key.fileobj)
                open_streams -= 1
                continue
            if key.fileobj is proc.stderr:
                stderr += data
                continue
            pending += data
            *lines, pending = pending.split(b"\n")
            for line in lines:
                text = line.decode(errors="replace")
                for name, pattern in MILESTONES:
                    if name not in seen and pattern.search(text):
                        seen[name] = now
    try:
        status = proc.wait(timeout=max(1.0, timeout - (time.monotonic() - start)))
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise SystemExit(f"{argv[0]}: run timed out after {timeout} s")
    seen["VMM exit"] = time.monotonic() - start
    if status not in ok_status:
        raise SystemExit(f"{' '.join(argv[:3])}... exited {status}:\n{stderr.decode(errors='replace')[-3000:]}")
    return seen, stderr.decode(errors="replace")


def pyvmm_argv(extra: list[str], loglevel: bool = True) -> list[str]:
    verbose_kernel = ["--append-extra", "loglevel=7"] if loglevel else []
    return [sys.executable, "-m", "pyvmm", "run", "--stats", *verbose_kernel, *extra, "--", "true"]


def print_medians(results: list[dict[str, float]], names: list[str], label: str = "") -> dict[str, float]:
    medians = {}
    for name in names:
        values = [r[name] for r in results if name in r]
        if values:
            medians[name] = statistics.median(values)
            print(f"  {label}{name:24s} {medians[name]:7.2f}  (min {min(values):.2f}, max {max(values):.2f})")
        else:
            print(f"  {label}{name:24s}     not seen")
    return medians


def bench_pyvmm(args) -> None:
    results = []
    for i in range(args.runs):
        seen, stderr = timed_run(pyvmm_argv(args.extra), args.timeout)
        stats = next((line for line in stderr.splitlines() if "VM exits" in line), "")
        results.append(seen)
        print(f"run {i + 1}: " + ", ".join(f"{k} {v:.2f} s" for k, v in seen.items()), flush=True)
        print(f"       {stats}", flush=True)
    print(f"\nmedian of {args.runs} runs (seconds from starting pyvmm):")
    print_medians(results, [m[0] for m in MILESTONES] + ["VMM exit"])


def qemu_microvm_argv(qemu: list[str], kernel: Path, initrd: Path, cmdline: str, cpu: str) -> list[str]:
    return [*qemu, "-M", "microvm,acpi=off,pit=on,pic=on,rtc=on", "-accel", "kvm", "-cpu", cpu, "-m", "256M",
            "-smp", "1", "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
            "-serial", "stdio", "-device", "isa-debug-exit,iobase=0x501,iosize=1",
            "-kernel", str(kernel), "-initrd", str(initrd), "-append", cmdline]


def bench_vs_qemu(args) -> None:
    from pyvmm.cpio import CpioEntry, build_cpio
    from pyvmm.guestimage import build_default_guest, ensure_qemu

    image = build_default_guest(progress=lambda m: print(f"bench: {m}", file=sys.stderr))
    qemu = ensure_qemu(progress=lambda m: print(f"bench: {m}", file=sys.stderr))
    kvm = "kvm_amd" if Path("/sys/module/kvm_amd").is_dir() else "kvm_intel" if Path(
        "/sys/module/kvm_intel").is_dir() else "kvm_pvm" if Path("/sys/module/kvm_pvm").is_dir() else "unknown KVM"
    cmdline = image.cmdline
    with tempfile.TemporaryDirectory(prefix="bench-boot-") as tmp:
        # QEMU gets the same initramfs plus the same command archive pyvmm adds for '-- true'.
        initrd = Path(tmp) / "initramfs-true.cpio"
        base = image.initramfs.read_bytes()
        initrd.write_bytes(base + b"\0" * (-len(base) % 4) +
                           build_cpio([CpioEntry.file("etc/pyvmm/cmd", b"true\n")]))
        runners = {
            "pyvmm": lambda: timed_run(pyvmm_argv(["--kernel", str(image.vmlinux), "--initrd", str(image.initramfs),
                                                   "--append", cmdline, "--acpi", "off"], loglevel=False),
                                       args.timeout),
            # isa-debug-exit ends QEMU with (value << 1) | 1: 'true' gives 1.
            "QEMU microvm": lambda: timed_run(qemu_microvm_argv(qemu, image.vmlinux, initrd, cmdline, args.qemu_cpu),
                                              args.timeout, ok_status=(1,)),
        }
        results: dict[str, list[dict[str, float]]] = {name: [] for name in runners}
        print(f"pyvmm vs QEMU microvm on /dev/kvm = {kvm}: {image.vmlinux.name} (PVH), "
              f"{image.initramfs.stat().st_size >> 10} KiB initramfs, '-- true', 1 vCPU, 256 MiB", flush=True)
        for i in range(args.runs):
            order = list(runners) if i % 2 == 0 else list(reversed(runners))
            for name in order:
                seen, stderr = runners[name]()
                results[name].append(seen)
                stats = next((line for line in stderr.splitlines() if "VM exits" in line), "")
                print(f"round {i + 1} {name:12s}: " + ", ".join(f"{k} {seen[k]:.2f} s" for k in VS_QEMU_MILESTONES
                                                              if k in seen) + (f"  [{stats}]" if stats else ""),
                      flush=True)
    print(f"\nmedian of {args.runs} runs each (seconds from starting the VMM process):")
    medians = {name: print_medians(runs, VS_QEMU_MILESTONES, f"{name:12s} ") for name, runs in results.items()}
    print("ratio pyvmm / QEMU microvm:")
    for milestone in VS_QEMU_MILESTONES:
        a, b = medians["pyvmm"].get(milestone), medians["QEMU microvm"].get(milestone)
        if a and b:
            print(f"  {milestone:24s} {a / b:5.2f}x  ({a:.2f} s vs {b:.2f} s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--vs-qemu", action="store_true",
                        help="Alternate pyvmm and QEMU microvm (-accel kvm) on the same kernel and initramfs.")
    parser.add_argument("--qemu-cpu", default="host", help="QEMU's -cpu with --vs-qemu (default: host).")
    parser.add_argument("extra", nargs="*", help="extra 'pyvmm run' options (after --)")
    args = parser.parse_args()
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    if args.vs_qemu:
        if args.extra:
            parser.error("--vs-qemu compares the default guest as it is: no extra pyvmm options")
        bench_vs_qemu(args)
    else:
        bench_pyvmm(args)


if __name__ == "__main__":
    main()
