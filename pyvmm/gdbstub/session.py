"""One gdb connection: the remote serial protocol's commands on top of a :class:`DebugTarget`.

The session runs on its own thread, ``select``-ing on the client socket, the target's stop
pipe and a wake-up pipe of the server (VM exit). It answers packets while the guest is
stopped and, while it runs, waits for a stop (breakpoint, step) or Ctrl-C. Supported:
``qSupported``, ``QStartNoAckMode``, ``qXfer:features:read`` (target.xml) and
``qXfer:exec-file:read`` (the kernel the VM booted), thread queries (one thread per vCPU),
``?``, ``g``/``G``/``p``/``P``, ``m``/``M``/``X``, ``Z0``-``Z4``/``z0``-``z4``,
``c``/``s``/``C``/``S``/``vCont``, Ctrl-C, ``D`` (detach: the guest runs on), ``k``/``vKill``,
and ``monitor`` (``qRcmd``: ``info``). Anything else gets the empty "not supported" reply.
"""

from __future__ import annotations

import logging
import os
import select
import socket

from pyvmm.errors import GuestMemoryError
from pyvmm.kvm.ioctls import KvmError

from . import packets as rsp
from .registers import REGISTERS, RIP, target_xml
from .target import SIGTRAP, BreakpointError, DebugTarget, StopEvent

log = logging.getLogger(__name__)

#: Largest memory read answered in one ``m`` reply (hex doubles it).
MAX_READ = (rsp.PACKET_SIZE - 16) // 2
_ERR_MEMORY = b"E14"   # EFAULT
_ERR_ARGS = b"E16"     # EINVAL
_ERR_THREAD = b"E02"   # no such thread


class SessionClosed(Exception):
    pass


class GdbSession:
    def __init__(self, sock: socket.socket, target: DebugTarget, *, wake_fd: int | None = None,
                 exit_status=None):
        self.sock = sock
        self.target = target
        self.reader = rsp.PacketReader()
        self.ack_mode = True
        self.client_features: set[str] = set()
        self.g_thread = 0       # vCPU index for register and memory access
        self.c_thread = 0       # vCPU index for legacy c/s
        self.waiting = False    # gdb waits for a stop reply (the guest runs)
        self._last_sent = b""
        self._wake_fd = wake_fd
        self._exit_status = exit_status  # callable: the VM's exit status once it stopped, else None
        self.detached = False
        self._held = not target.running  # the guest waited for a debugger (--gdb-wait) when we connected

    # -- I/O --------------------------------------------------------------------------

    def send(self, payload: bytes) -> None:
        data = rsp.frame(payload)
        self._last_sent = data
        log.debug("gdb <- %s", payload[:200])
        self.sock.sendall(data)

    def run(self) -> None:
        """Serve until the client goes away, detaches or kills the VM, or the VM stops."""
        log.info("gdb: debugger connected")
        if self.target.running:
            self.target.halt(SIGTRAP)
        self.target.attached = True
        try:
            self._serve()
        finally:
            self.target.attached = False

    def _serve(self) -> None:
        try:
            while True:
                fds = [self.sock, self.target.stop_fd] + ([self._wake_fd] if self._wake_fd is not None else [])
                readable, _, _ = select.select(fds, [], [])
                if self._wake_fd in readable and self._vm_exited():
                    return
                if self.target.stop_fd in readable:
                    event = self.target.take_stop()
                    if event is not None and self.waiting:
                        self.waiting = False
                        self.send(self._stop_reply(event))
                if self.sock in readable:
                    data = self.sock.recv(65536)
                    if not data:
                        log.info("gdb: connection closed")
                        break
                    for event in self.reader.feed(data):
                        self._handle_event(event)
        except rsp.ProtocolError as exc:
            log.warning("gdb: closing the connection: %s", exc)
        except SessionClosed:
            return
        except OSError as exc:
            log.info("gdb: connection lost: %s", exc)
        # The client vanished without detaching: remove its breakpoints and let the guest run on,
        # unless the guest was waiting for a debugger and this client never let it run (a probe
        # such as 'pyvmm gdb' asking which kernel the VM booted must not start it).
        if not self.detached:
            self.target.detach(resume=not self._held)
            log.info("gdb: debugger gone; breakpoints removed%s",
                     "" if self._held else ", the guest runs on")

    def _vm_exited(self) -> bool:
        status = self._exit_status() if self._exit_status is not None else None
        if status is None:
            return False
        if self.waiting:
            try:
                self.send(b"W%02x" % (status & 0xFF))
            except OSError:
                pass
        self.detached = True
        return True

    def _handle_event(self, event) -> None:
        if isinstance(event, rsp.Ack):
            if not event.ok and self.ack_mode and self._last_sent:
                self.sock.sendall(self._last_sent)
            return
        if isinstance(event, rsp.Interrupt):
            if self.waiting:
                log.info("gdb: interrupt")
                stop = self.target.halt()
                self.waiting = False
                self.send(self._stop_reply(stop))
            return
        if self.ack_mode:
            self.sock.sendall(b"+")
        payload = event.payload
        log.debug("gdb -> %s", payload[:200])
        try:
            reply = self.dispatch(payload)
        except (ValueError, IndexError) as exc:
            log.debug("gdb: malformed packet %r: %s", payload[:64], exc)
            reply = _ERR_ARGS
        if reply is not None:
            self.send(reply)

    # -- commands -----------------------------------------------------------------------

    def dispatch(self, payload: bytes) -> bytes | None:
        """The reply to one packet (None when the reply comes later, as for continue)."""
        if self.waiting and payload[:1] not in (b"v",):
            return b"E01"  # all-stop: only a stop reply is expected while the guest runs
        head = payload[:1]
        if head == b"q":
            return self._query(payload)
        if head == b"Q":
            if payload == b"QStartNoAckMode":
                self.send(b"OK")
                self.ack_mode = False
                return None
            return b""
        if head == b"?":
            return self._stop_reply(self.target.last_stop)
        if head == b"H":
            return self._set_thread(payload)
        if head == b"T":
            return b"OK" if self._thread_index(payload[1:]) is not None else _ERR_THREAD
        if head == b"g":
            return self._registers().read_all().hex().encode()
        if head == b"G":
            regs = self._registers()
            regs.write_all(bytes.fromhex(payload[1:].decode()))
            regs.store()
            return b"OK"
        if head == b"p":
            number = rsp.parse_hex(payload[1:])
            if number >= len(REGISTERS):
                return b"E00"
            return self._registers().read(number).hex().encode()
        if head == b"P":
            number, _, value = payload[1:].partition(b"=")
            number = rsp.parse_hex(number)
            if number >= len(REGISTERS):
                return b"E00"
            regs = self._registers()
            regs.write(number, bytes.fromhex(value.decode()))
            regs.store()
            return b"OK"
        if head == b"m":
            address, length = (rsp.parse_hex(x) for x in payload[1:].split(b","))
            try:
                return self.target.read_memory(self.g_thread, address, min(length, MAX_READ)).hex().encode()
            except (GuestMemoryError, KvmError):
                return _ERR_MEMORY
        if head in (b"M", b"X"):
            spec, _, data = payload[1:].partition(b":")
            address, length = (rsp.parse_hex(x) for x in spec.split(b","))
            data = bytes.fromhex(data.decode()) if head == b"M" else rsp.unescape(data)
            if len(data) != length:
                return _ERR_ARGS
            if length:
                try:
                    self.target.write_memory(self.g_thread, address, data)
                except (GuestMemoryError, KvmError):
                    return _ERR_MEMORY
            return b"OK"
        if head in (b"Z", b"z"):
            return self._breakpoint(payload)
        if head in (b"c", b"C", b"s", b"S"):
            return self._legacy_resume(payload)
        if head == b"v":
            return self._v_packet(payload)
        if head == b"D":
            self.send(b"OK")
            self._detach()
            raise SessionClosed
        if head == b"k":
            self._kill()
            raise SessionClosed
        return b""

    def _query(self, payload: bytes) -> bytes:
        if payload.startswith(b"qSupported"):
            _, _, features = payload.partition(b":")
            self.client_features = {f[:-1].decode() for f in features.split(b";") if f.endswith(b"+")}
            return (b"PacketSize=%x;qXfer:features:read+;qXfer:exec-file:read+;QStartNoAckMode+;"
                    b"swbreak+;hwbreak+;vContSupported+" % rsp.PACKET_SIZE)
        if payload.startswith(b"qXfer:features:read:"):
            annex, offset, length = _xfer_args(payload, b"qXfer:features:read:")
            if annex != b"target.xml":
                return b"E00"
            return _xfer_reply(target_xml(), offset, length)
        if payload.startswith(b"qXfer:exec-file:read:"):
            _, offset, length = _xfer_args(payload, b"qXfer:exec-file:read:")
            if not self.target.exec_file:
                return b"E00"
            return _xfer_reply(os.fsencode(self.target.exec_file), offset, length)
        if payload == b"qfThreadInfo":
            return b"m" + b",".join(b"%x" % (i + 1) for i in range(len(self.target.vcpus)))
        if payload == b"qsThreadInfo":
            return b"l"
        if payload == b"qC":
            return b"QC%x" % (self.g_thread + 1)
        if payload.startswith(b"qAttached"):
            return b"1"
        if payload.startswith(b"qThreadExtraInfo,"):
            index = self._thread_index(payload.split(b",", 1)[1])
            if index is None:
                return _ERR_THREAD
            return f"vCPU {index}".encode().hex().encode()
        if payload.startswith(b"qSymbol"):
            return b"OK"
        if payload.startswith(b"qRcmd,"):
            return self._monitor(bytes.fromhex(payload[6:].decode()).decode("utf-8", "replace"))
        return b""

    def _monitor(self, command: str) -> bytes:
        words = command.split()
        if words[:1] == ["info"]:
            support = self.target.support
            lines = [f"vCPUs: {len(self.target.vcpus)}",
                     f"guest debugging on this KVM: {support.describe()}"]
            lines += [f"  note: {note}" for note in support.notes]
            lines.append(f"hardware debug registers free: {self.target.hw.free} of 4")
            if self.target.exec_file:
                lines.append(f"kernel: {self.target.exec_file}")
            text = "\n".join(lines) + "\n"
        else:
            text = "pyvmm monitor commands: info (what guest debugging this KVM supports)\n"
        return text.encode().hex().encode()

    def _thread_index(self, text: bytes) -> int | None:
        tid = int(text, 16) if text not in (b"-1", b"") else -1
        if tid in (0, -1):
            return 0
        index = tid - 1
        return index if 0 <= index < len(self.target.vcpus) else None

    def _set_thread(self, payload: bytes) -> bytes:
        op, text = payload[1:2], payload[2:]
        index = self._thread_index(text)
        if index is None:
            return _ERR_THREAD
        if op == b"g":
            self.g_thread = index
        else:
            self.c_thread = index
        return b"OK"

    def _registers(self):
        return self.target.registers(self.g_thread)

    def _breakpoint(self, payload: bytes) -> bytes:
        insert = payload[:1] == b"Z"
        fields = payload[1:].split(b";", 1)[0].split(b",")
        kind, address, length = int(fields[0]), rsp.parse_hex(fields[1]), rsp.parse_hex(fields[2])
        if kind > 4:
            return b""
        if not insert:
            self.target.remove_breakpoint(kind, address, length, self.g_thread)
            return b"OK"
        try:
            self.target.insert_breakpoint(kind, address, length, self.g_thread)
        except BreakpointError as exc:
            log.warning("gdb: cannot insert %s at %#x: %s", _BREAKPOINT_NAMES[kind], address, exc)
            return b"E.01." + str(exc).encode("ascii", "replace")
        return b"OK"

    # -- running ----------------------------------------------------------------------------

    def _legacy_resume(self, payload: bytes) -> bytes | None:
        action = payload[:1].lower().decode()
        args = payload[1:]
        if payload[:1] in (b"C", b"S"):
            _, _, args = args.partition(b";")
        if args:
            regs = self.target.registers(self.c_thread)
            regs.set_value(RIP, rsp.parse_hex(args))
            regs.store()
        if action == "s":
            return self._resume({self.c_thread: "s"})
        return self._resume({i: "c" for i in range(len(self.target.vcpus))})

    def _v_packet(self, payload: bytes) -> bytes | None:
        if payload == b"vCont?":
            return b"vCont;c;C;s;S"
        if payload.startswith(b"vCont;"):
            if self.waiting:
                return b"E01"
            return self._resume(self._vcont_actions(payload[6:]))
        if payload.startswith(b"vKill"):
            self.send(b"OK")
            self._kill()
            raise SessionClosed
        if payload == b"vCtrlC":
            if self.waiting:
                stop = self.target.halt()
                self.waiting = False
                self.send(b"OK")
                return self._stop_reply(stop)
            return b"OK"
        if self.waiting:
            return b"E01"
        return b""

    def _vcont_actions(self, text: bytes) -> dict[int, str]:
        """``s:1;c`` -> {0: "s", 1: "c", ...}: the leftmost action naming a thread wins."""
        actions: dict[int, str] = {}
        count = len(self.target.vcpus)
        for item in text.split(b";"):
            action, _, thread = item.partition(b":")
            letter = action[:1].lower().decode()
            if letter not in ("c", "s"):
                raise ValueError(f"unsupported vCont action {action!r}")
            if thread and thread != b"-1":
                index = self._thread_index(thread.split(b".")[-1])
                if index is None:
                    raise ValueError(f"no thread {thread!r}")
                actions.setdefault(index, letter)
            else:
                for index in range(count):
                    actions.setdefault(index, letter)
        return actions

    def _resume(self, actions: dict[int, str]) -> bytes | None:
        try:
            self.target.resume(actions)
        except BreakpointError as exc:
            return b"E.01." + str(exc).encode("ascii", "replace")
        self._held = False
        self.waiting = True
        return None

    def _stop_reply(self, event: StopEvent) -> bytes:
        reply = b"T%02xthread:%x;" % (event.signal, event.vcpu + 1)
        if event.reason in ("watch", "rwatch", "awatch"):
            reply += b"%s:%x;" % (event.reason.encode(), event.address)
        elif event.reason in ("swbreak", "hwbreak") and event.reason in self.client_features:
            reply += b"%s:;" % event.reason.encode()
        self.g_thread = self.c_thread = event.vcpu
        return reply

    def _detach(self) -> None:
        self.detached = True
        self.target.detach()
        log.info("gdb: detached; the guest runs on")

    def _kill(self) -> None:
        self.detached = True
        log.info("gdb: kill requested")
        if self.target.on_kill is not None:
            self.target.on_kill()
        else:
            self.target.detach()


_BREAKPOINT_NAMES = {0: "breakpoint", 1: "hardware breakpoint", 2: "write watchpoint",
                     3: "read watchpoint", 4: "access watchpoint"}


def _xfer_args(payload: bytes, prefix: bytes) -> tuple[bytes, int, int]:
    annex, _, span = payload[len(prefix):].partition(b":")
    offset, length = (rsp.parse_hex(x) for x in span.split(b","))
    return annex, offset, length


def _xfer_reply(document: bytes, offset: int, length: int) -> bytes:
    length = min(length, (rsp.PACKET_SIZE - 16) // 2)  # escaping may double it
    chunk = document[offset:offset + length]
    more = offset + len(chunk) < len(document)
    return (b"m" if more else b"l") + rsp.escape(chunk)
