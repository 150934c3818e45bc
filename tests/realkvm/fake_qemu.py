"""A stand-in for QEMU to test scripts/real-kvm's retry policy (pyvmm.realkvm.runner) in seconds.

It connects to the three chardev sockets the runner listens on, as QEMU does, and plays one
scenario per boot: ``FAKE_QEMU_PLAN`` is a comma-separated list (one entry per boot, the
boot number kept in the file ``FAKE_QEMU_COUNTER``):

  die        print an error and exit 1 before "ready"
  hang       say nothing until killed
  ok:N       "ready", "out" on stdout, "err" on stderr, "status N", exit 0
  crash      "ready", then exit 0 without a status (the outer guest died mid-command)
"""

import os
import socket
import sys
import time


def main() -> None:
    paths = {}
    for i, arg in enumerate(sys.argv):
        if arg == "-chardev":
            opts = dict(item.partition("=")[::2] for item in sys.argv[i + 1].split(",")[1:])
            paths[opts["id"]] = opts["path"]
    counter = os.environ["FAKE_QEMU_COUNTER"]
    boot = int(open(counter).read()) if os.path.exists(counter) else 0
    open(counter, "w").write(str(boot + 1))
    plan = os.environ["FAKE_QEMU_PLAN"].split(",")[boot]
    socks = {}
    for name, path in paths.items():
        socks[name] = socket.socket(socket.AF_UNIX)
        socks[name].connect(path)
    console = socks["console"]
    console.sendall(b"[    0.000000] Linux version 6.12 (fake)\r\n")
    if plan == "die":
        print("qemu-system-x86_64: fake failure", file=sys.stderr, flush=True)
        sys.exit(1)
    if plan == "hang":
        time.sleep(3600)
    console.sendall(b"realkvm-init: ready nested=1\r\n")
    if plan == "crash":
        sys.exit(0)
    status = int(plan.split(":")[1])
    socks["stdout"].sendall(b"out\n")
    socks["stderr"].sendall(b"err\n")
    console.sendall(f"realkvm-init: status {status}\r\n".encode())


if __name__ == "__main__":
    main()
