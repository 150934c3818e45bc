"""The vhost-user back end: drives one :class:`VirtioDevice` from a front end's requests.

Everything here runs on the device event loop thread: the socket reader, the kick fd
readers and the device callbacks, so no state needs a lock. When the device runs is
decided with :class:`~pyvmm.vhost_user.runner.DeviceRunner`.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import socket
import time
from typing import Callable

from pyvmm.errors import GuestMemoryError
from pyvmm.guest_log import guest_error
from pyvmm.log import TRACE
from pyvmm.vhost_user import connection
from pyvmm.vhost_user import messages as m
from pyvmm.vhost_user.connection import Connection, Disconnected, Message, ProtocolError, RequestError
from pyvmm.vhost_user.memory_map import FrontendMemoryMap, RegionInfo
from pyvmm.vhost_user.runner import DeviceRunner
from pyvmm.vhost_user.vring import Kick, RingAddresses, Vring
from pyvmm.virtio import constants as vc
from pyvmm.virtio.device import VirtioDevice

log = logging.getLogger(__name__)

#: Ring-layout features the split queue implements, offered on top of the device's own.
RING_FEATURES = vc.bit(vc.VERSION_1) | vc.bit(vc.RING_EVENT_IDX) | vc.bit(vc.RING_INDIRECT_DESC)

PROTOCOL_FEATURES = m.protocol_mask(
    m.ProtocolFeature.MQ,
    m.ProtocolFeature.REPLY_ACK,
    m.ProtocolFeature.BACKEND_REQ,
    m.ProtocolFeature.CONFIG,
    m.ProtocolFeature.RESET_DEVICE,
    m.ProtocolFeature.CONFIGURE_MEM_SLOTS,
    m.ProtocolFeature.STATUS,
)

_VRING_F_LOG = 0x1


def _u64(value: int) -> bytes:
    return bytes(m.U64(value))


class VhostUserBackend:
    """Serves ``device`` to one front end at a time (``attach`` a connection, it detaches on EOF)."""

    def __init__(self, device: VirtioDevice, loop: asyncio.AbstractEventLoop,
                 on_disconnect: Callable[[], None] | None = None):
        self.device = device
        self.loop = loop
        self.on_disconnect = on_disconnect
        self.vrings = [Vring(i, size) for i, size in enumerate(device.queue_max_sizes)]
        self.memory_map = FrontendMemoryMap(m.MAX_MEM_SLOTS)
        self.conn: Connection | None = None
        self.backend_channel: Connection | None = None
        self.features = 0
        self.features_set = False
        self.protocol_features = 0
        self.status = 0
        self._message_deadline: asyncio.TimerHandle | None = None
        self.runner = DeviceRunner(device, loop, self.vrings, self.memory_map,
                                   on_config_change=self._send_config_change, on_needs_reset=self._needs_reset)
        self.memory_map.on_change = self.runner.memory_changed
        self._handlers: dict[int, Callable[[Message], bytes | None]] = {
            m.FrontendRequest.GET_FEATURES: self._get_features,
            m.FrontendRequest.SET_FEATURES: self._set_features,
            m.FrontendRequest.GET_PROTOCOL_FEATURES: lambda msg: _u64(PROTOCOL_FEATURES),
            m.FrontendRequest.SET_PROTOCOL_FEATURES: self._set_protocol_features,
            m.FrontendRequest.SET_OWNER: lambda msg: None,
            m.FrontendRequest.RESET_OWNER: self._reset_owner,
            m.FrontendRequest.RESET_DEVICE: self._reset_device,
            m.FrontendRequest.SET_MEM_TABLE: self._set_mem_table,
            m.FrontendRequest.GET_MAX_MEM_SLOTS: lambda msg: _u64(m.MAX_MEM_SLOTS),
            m.FrontendRequest.ADD_MEM_REG: self._add_mem_reg,
            m.FrontendRequest.REM_MEM_REG: self._rem_mem_reg,
            m.FrontendRequest.GET_QUEUE_NUM: lambda msg: _u64(len(self.vrings)),
            m.FrontendRequest.SET_VRING_NUM: self._set_vring_num,
            m.FrontendRequest.SET_VRING_ADDR: self._set_vring_addr,
            m.FrontendRequest.SET_VRING_BASE: self._set_vring_base,
            m.FrontendRequest.GET_VRING_BASE: self._get_vring_base,
            m.FrontendRequest.SET_VRING_KICK: self._set_vring_kick,
            m.FrontendRequest.SET_VRING_CALL: self._set_vring_call,
            m.FrontendRequest.SET_VRING_ERR: self._set_vring_err,
            m.FrontendRequest.SET_VRING_ENABLE: self._set_vring_enable,
            m.FrontendRequest.SET_BACKEND_REQ_FD: self._set_backend_req_fd,
            m.FrontendRequest.GET_CONFIG: self._get_config,
            m.FrontendRequest.SET_CONFIG: self._set_config,
            m.FrontendRequest.SET_STATUS: self._set_status,
            m.FrontendRequest.GET_STATUS: lambda msg: _u64(self.status),
        }

    @property
    def offered_features(self) -> int:
        device_bits = self.device.device_features() & vc.DEVICE_FEATURE_MASK
        return device_bits | RING_FEATURES | vc.bit(m.VHOST_USER_F_PROTOCOL_FEATURES)

    @property
    def active(self) -> bool:
        return self.runner.active

    # -- connection ---------------------------------------------------------------------

    def attach(self, conn: Connection) -> None:
        """Start serving a newly accepted front end (call on the loop thread)."""
        if self.conn is not None:
            raise RuntimeError("a front end is already attached")
        conn.timeout = 0.0  # replies never wait on the loop: a front end must read them
        self.conn = conn
        self.loop.add_reader(conn.fileno(), self._on_readable)
        log.info("front end connected")

    def detach(self, reason: str = "") -> None:
        """Drop the front end: stop the device, forget every ring, fd and mapping."""
        if self.conn is None:
            return
        log.info("front end disconnected%s", f" ({reason})" if reason else "")
        self._cancel_message_deadline()
        self.loop.remove_reader(self.conn.fileno())
        self.conn.close()
        self.conn = None
        self._stop_device("disconnect")
        self._forget_state()
        self.memory_map.clear()
        if self.on_disconnect is not None:
            self.on_disconnect()

    def _forget_state(self) -> None:
        self._reset_rings_and_features()
        if self.backend_channel is not None:
            self.backend_channel.close()
            self.backend_channel = None
        self.protocol_features = 0

    def _reset_rings_and_features(self) -> None:
        for vring in self.vrings:
            self._unwatch_kick(vring)
            vring.reset()
        self.features = 0
        self.features_set = False
        self.status = 0

    def _on_readable(self) -> None:
        assert self.conn is not None
        try:
            msg = self.conn.poll()
        except Disconnected:
            self.detach()
            return
        except ProtocolError as exc:
            guest_error(log, "closing the connection: %s", exc)
            self.detach("protocol error")
            return
        if msg is None:  # part of a message: keep serving the rings until the rest comes
            self._arm_message_deadline()
            return
        self._cancel_message_deadline()
        try:
            self.handle(msg)
        except ProtocolError as exc:
            guest_error(log, "closing the connection: %s", exc)
            self.detach("protocol error")

    def _arm_message_deadline(self) -> None:
        assert self.conn is not None
        started = self.conn.message_started
        if started is None or self._message_deadline is not None:
            return
        delay = started + connection.MESSAGE_TIMEOUT - time.monotonic()
        self._message_deadline = self.loop.call_later(max(delay, 0.0), self._message_overdue)

    def _cancel_message_deadline(self) -> None:
        if self._message_deadline is not None:
            self._message_deadline.cancel()
            self._message_deadline = None

    def _message_overdue(self) -> None:
        self._message_deadline = None
        if self.conn is None or self.conn.message_started is None:
            return
        if time.monotonic() - self.conn.message_started < connection.MESSAGE_TIMEOUT:
            self._arm_message_deadline()  # a later message than the one this timer was for
            return
        guest_error(log, "closing the connection: a message was not complete %g s after its first byte",
                    connection.MESSAGE_TIMEOUT)
        self.detach("message timeout")

    def handle(self, msg: Message) -> None:
        """Run one request and send whatever reply the protocol asks for."""
        name = m.request_name(msg.request)
        log.debug("<- %s flags=%#x size=%d fds=%d", name, msg.flags, len(msg.payload), len(msg.fds))
        handler = self._handlers.get(msg.request)
        reply: bytes | None = None
        ok = False
        try:
            if handler is None:
                raise RequestError("not supported by this back end")
            reply = handler(msg)
            ok = True
        except (RequestError, GuestMemoryError) as exc:
            guest_error(log, "%s refused: %s", name, exc)
        except Exception:  # a device bug must not take the server down
            log.exception("%s failed", name)
        finally:
            msg.close_fds()
        if self.conn is None:
            return
        if msg.request in m.REQUESTS_WITH_REPLY:
            if reply is None and msg.request != m.FrontendRequest.GET_CONFIG:
                raise ProtocolError(f"cannot answer {name}")
            self.conn.reply(msg, reply or b"")
        elif msg.need_reply:
            self.conn.reply_status(msg, ok)

    # -- features -----------------------------------------------------------------------

    def _get_features(self, msg: Message) -> bytes:
        return _u64(self.offered_features)

    def _set_features(self, msg: Message) -> None:
        features = msg.parse(m.U64).value
        unknown = features & ~self.offered_features
        if unknown:
            raise RequestError(f"features {unknown:#x} were not offered")
        self.features = features
        self.features_set = True
        if not features & vc.bit(m.VHOST_USER_F_PROTOCOL_FEATURES):
            for vring in self.vrings:  # without protocol features rings start enabled
                vring.enabled = True
        log.debug("features %#x", features)
        self._maybe_activate()

    def _set_protocol_features(self, msg: Message) -> None:
        features = msg.parse(m.U64).value
        unknown = features & ~PROTOCOL_FEATURES
        if unknown:
            raise RequestError(f"protocol features {unknown:#x} were not offered")
        self.protocol_features = features

    def _has_protocol(self, feature: m.ProtocolFeature) -> bool:
        return bool(self.protocol_features & (1 << feature))

    # -- reset --------------------------------------------------------------------------

    def _reset_owner(self, msg: Message) -> None:
        """Deprecated; the spec suggests treating it as "disable all rings"."""
        self._stop_device("RESET_OWNER")
        for vring in self.vrings:
            vring.enabled = False

    def _reset_device(self, msg: Message) -> None:
        """Back to the initial device state; the connection, its protocol features and memory stay."""
        self._stop_device("RESET_DEVICE")
        self._reset_rings_and_features()

    # -- memory -------------------------------------------------------------------------

    def _set_mem_table(self, msg: Message) -> None:
        header, rest = msg.parse_prefix(m.MemoryTableHeader)
        count = header.nregions
        region_size = ctypes.sizeof(m.MemoryRegionDesc)
        if not 1 <= count <= m.MEMORY_BASELINE_NREGIONS or len(rest) < count * region_size:
            raise RequestError(f"bad memory table: {count} regions in {len(msg.payload)} bytes")
        infos = [RegionInfo.from_desc(m.MemoryRegionDesc.from_buffer_copy(rest, i * region_size))
                 for i in range(count)]
        fds, msg.fds = msg.fds, []
        self.memory_map.set_table(infos, fds)
        log.info("memory table: %s", "; ".join(map(str, infos)))

    def _add_mem_reg(self, msg: Message) -> None:
        info = RegionInfo.from_desc(msg.parse(m.SingleMemoryRegion).region)
        if len(msg.fds) != 1:
            raise RequestError(f"ADD_MEM_REG needs exactly one fd, got {len(msg.fds)}")
        self.memory_map.add(info, msg.take_fd())
        log.info("memory region added: %s", info)

    def _rem_mem_reg(self, msg: Message) -> None:
        info = RegionInfo.from_desc(msg.parse(m.SingleMemoryRegion).region)
        self.memory_map.remove(info)
        log.info("memory region removed: %s", info)

    # -- rings --------------------------------------------------------------------------

    def _vring(self, index: int) -> Vring:
        if not 0 <= index < len(self.vrings):
            raise RequestError(f"no vring {index} (the device has {len(self.vrings)})")
        return self.vrings[index]

    def _set_vring_num(self, msg: Message) -> None:
        state = msg.parse(m.VringState)
        vring = self._vring(state.index)
        size = state.num
        if not 0 < size <= vc.MAX_QUEUE_SIZE or size & (size - 1):
            raise RequestError(f"vring {vring.index}: size {size} is not a power of two <= {vc.MAX_QUEUE_SIZE}")
        if size > vring.device_max_size:
            # vhost-user cannot advertise a maximum (QEMU's virtio-mmio offers 1024 to the
            # driver whatever the device says), so the front end's choice stands.
            log.debug("vring %d: %d entries, more than the device's preferred %d",
                      vring.index, size, vring.device_max_size)
        vring.size = size

    def _set_vring_addr(self, msg: Message) -> None:
        addr = msg.parse(m.VringAddr)
        vring = self._vring(addr.index)
        if addr.flags & _VRING_F_LOG:
            raise RequestError(f"vring {vring.index}: dirty logging is not supported")
        size = vring.size or 1
        event_idx = bool(self.features & vc.bit(vc.RING_EVENT_IDX))
        to_guest = self.memory_map.user_to_guest
        addresses = RingAddresses(
            desc=to_guest(addr.desc_user_addr, vc.desc_table_size(size)),
            avail=to_guest(addr.avail_user_addr, vc.avail_ring_size(size, event_idx)),
            used=to_guest(addr.used_user_addr, vc.used_ring_size(size, event_idx)),
        )
        vring.addresses = addresses
        log.debug("vring %d: %s", vring.index, addresses)

    def _set_vring_base(self, msg: Message) -> None:
        state = msg.parse(m.VringState)
        vring = self._vring(state.index)
        if state.num > 0xFFFF:
            raise RequestError(f"vring {vring.index}: base {state.num} does not fit a 16-bit index")
        vring.base = state.num

    def _get_vring_base(self, msg: Message) -> bytes:
        """Stop the ring and report where the device got to in the available ring."""
        state = msg.parse(m.VringState)
        vring = self._vring(state.index)
        self._stop_device(f"GET_VRING_BASE {vring.index}")
        self._unwatch_kick(vring)
        vring.replace_fd("kick_fd", None)
        vring.replace_fd("call_fd", None)
        vring.kicked = False
        return bytes(m.VringState(vring.index, vring.base))

    def _vring_fd(self, msg: Message) -> tuple[Vring, int | None]:
        value = msg.parse(m.U64).value
        vring = self._vring(value & m.VRING_IDX_MASK)
        if value & m.VRING_NOFD_MASK:
            return vring, None
        if len(msg.fds) != 1:
            raise RequestError(f"vring {vring.index}: expected one fd, got {len(msg.fds)}")
        return vring, msg.take_fd()

    def _set_vring_kick(self, msg: Message) -> None:
        vring, fd = self._vring_fd(msg)
        self._unwatch_kick(vring)
        vring.replace_fd("kick_fd", fd)
        if fd is None:
            guest_error(log, "vring %d: polling mode (no kick fd) is not supported", vring.index)
            return
        try:
            os.set_blocking(fd, False)
            self.loop.add_reader(fd, self._on_kick, vring)
        except OSError as exc:  # e.g. a regular file, which epoll cannot watch
            vring.replace_fd("kick_fd", None)
            raise RequestError(f"vring {vring.index}: unusable kick fd: {exc}") from None
        self._maybe_activate()

    def _set_vring_call(self, msg: Message) -> None:
        vring, fd = self._vring_fd(msg)
        vring.replace_fd("call_fd", self._nonblocking(fd))

    def _set_vring_err(self, msg: Message) -> None:
        vring, fd = self._vring_fd(msg)
        vring.replace_fd("err_fd", self._nonblocking(fd))

    @staticmethod
    def _nonblocking(fd: int | None) -> int | None:
        """Signalling must never block the loop, whatever kind of fd the front end passed."""
        if fd is not None:
            try:
                os.set_blocking(fd, False)
            except OSError as exc:
                os.close(fd)
                raise RequestError(f"unusable fd: {exc}") from None
        return fd

    def _set_vring_enable(self, msg: Message) -> None:
        if not self.features & vc.bit(m.VHOST_USER_F_PROTOCOL_FEATURES):
            raise RequestError("SET_VRING_ENABLE without VHOST_USER_F_PROTOCOL_FEATURES")
        state = msg.parse(m.VringState)
        vring = self._vring(state.index)
        if state.num not in (0, 1):
            raise RequestError(f"vring {vring.index}: enable value {state.num}")
        vring.enabled = bool(state.num)
        self._maybe_activate()

    def _unwatch_kick(self, vring: Vring) -> None:
        if vring.kick_fd is not None:
            self.loop.remove_reader(vring.kick_fd)

    def _on_kick(self, vring: Vring) -> None:
        kick = vring.drain_kick()
        if kick is Kick.DEAD:
            # A pipe whose writer closed reads end of file for ever: left armed, it would
            # wake the loop continuously. The front end may send a new kick fd.
            self._unwatch_kick(vring)
            vring.replace_fd("kick_fd", None)
            guest_error(log, "vring %d: kick fd is at end of file or failing: ring disarmed until the next "
                        "SET_VRING_KICK", vring.index)
            return
        if kick is Kick.NONE:
            return
        log.log(TRACE, "kick vring %d", vring.index)
        if not self.runner.active:
            vring.kicked = True
            self._maybe_activate()
        elif vring.enabled:
            self.runner.notify(vring.index)

    # -- config space and status ------------------------------------------------------

    def _config_access(self, msg: Message) -> tuple[m.ConfigHeader, bytes]:
        header, data = msg.parse_prefix(m.ConfigHeader)
        if header.size > m.MAX_CONFIG_SIZE or len(data) != header.size:
            raise RequestError(f"config access of {header.size} bytes with {len(data)} bytes of payload")
        return header, data

    def _get_config(self, msg: Message) -> bytes:
        header, _ = self._config_access(msg)
        data = self.device.read_config(header.offset, header.size)
        data = bytes(data[:header.size]).ljust(header.size, b"\0")
        return bytes(header) + data

    def _set_config(self, msg: Message) -> None:
        header, data = self._config_access(msg)
        self.device.write_config(header.offset, data)

    def _set_status(self, msg: Message) -> None:
        status = msg.parse(m.U64).value
        if status > 0xFF:
            raise RequestError(f"device status {status:#x} does not fit a byte")
        self.status = status
        if status == 0:
            self._stop_device("status reset")
        elif status & vc.Status.DRIVER_OK:
            self._maybe_activate()
            if not self.active:
                missing = [v.index for v in self.vrings if not (v.configured and v.enabled)]
                guest_error(log, "DRIVER_OK but rings %s are not set up: the device stays stopped", missing)

    def _set_backend_req_fd(self, msg: Message) -> None:
        fd = msg.take_fd()
        if fd is None:
            raise RequestError("SET_BACKEND_REQ_FD without an fd")
        try:
            channel = Connection(socket.socket(fileno=fd), timeout=0.0)
        except OSError as exc:
            os.close(fd)
            raise RequestError(f"back-end channel fd is not a socket: {exc}") from None
        if self.backend_channel is not None:
            self.backend_channel.close()
        self.backend_channel = channel

    # -- device lifecycle -------------------------------------------------------------

    def _maybe_activate(self) -> None:
        if not self.runner.active and self.features_set and len(self.memory_map):
            self.runner.start(self.features & ~vc.bit(m.VHOST_USER_F_PROTOCOL_FEATURES))

    def _stop_device(self, reason: str) -> None:
        self.runner.stop(reason)

    def _send_config_change(self) -> None:
        if self.backend_channel is None or not self._has_protocol(m.ProtocolFeature.CONFIG):
            log.warning("config change not delivered: the front end gave no back-end channel")
            return
        try:
            self.backend_channel.send(m.BackendRequest.CONFIG_CHANGE_MSG, 0)
        except ProtocolError as exc:
            log.warning("config change not delivered: %s", exc)

    def _needs_reset(self, reason: str) -> None:
        """No vhost-user message for it: flag the status and raise every ring's error eventfd."""
        log.error("device needs a reset: %s", reason)
        self.status |= vc.Status.DEVICE_NEEDS_RESET
        for vring in self.vrings:
            vring.signal_err()
