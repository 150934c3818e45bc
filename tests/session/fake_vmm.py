"""A stand-in for ``pyvmm run`` with ``pyvmm.session``: the real host console and UART in
front of a host ``sh`` playing the guest. Used by the session tests to drive the whole
host-side console path (pipes or a pty, raw mode, flow control) without booting Linux.

The "guest driver" thread waits for the UART's receive interrupt, drains RBR while LSR.DR
is set and feeds the shell; the shell's output is written to THR byte by byte.
"""

import subprocess
import sys
import threading

from pyvmm.console import HostConsole
from pyvmm.legacy import serial as uart_regs
from pyvmm.legacy.serial import Serial16550


class EventLine:
    def __init__(self):
        self.raised = threading.Event()

    def set_level(self, high):
        if high:
            self.raised.set()


def main():
    done = threading.Event()
    status = {"code": 0}

    def on_quit():
        status["code"] = 0
        done.set()

    console = HostConsole(0, 1, on_quit=on_quit)
    line = EventLine()
    uart = Serial16550(sink=console.write_output, irq=line)
    uart.write(uart_regs.IIR_FCR, bytes([uart_regs.FCR_ENABLE_FIFO]))
    uart.write(uart_regs.IER, bytes([uart_regs.IER_RDI]))
    console.start(uart)

    guest = subprocess.Popen(
        ["sh", "-c", "echo pyvmm-init: session-ready; sh; echo reboot: Restarting system"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        bufsize=0,
    )

    def guest_input():
        while not done.is_set():
            line.raised.wait(0.2)
            line.raised.clear()
            data = bytearray()
            while uart.read(uart_regs.LSR, 1)[0] & uart_regs.LSR_DR:
                data += uart.read(uart_regs.RBR_THR, 1)
            if data:
                try:
                    guest.stdin.write(bytes(data))
                except OSError:
                    return

    def guest_output():
        for chunk in iter(lambda: guest.stdout.read(4096), b""):
            for byte in chunk.replace(b"\n", b"\r\n"):  # the guest tty's ONLCR
                uart.write(uart_regs.RBR_THR, bytes([byte]))
        status["code"] = guest.wait()
        done.set()

    threading.Thread(target=guest_input, daemon=True).start()
    threading.Thread(target=guest_output, daemon=True).start()
    done.wait()
    console.stop()
    if guest.poll() is None:
        guest.kill()
    sys.exit(status["code"])


if __name__ == "__main__":
    main()
