"""The control queue: decode each request, check it, act, answer with a status.

A request may be split over any number of descriptors: the whole readable part is gathered
first and the response is scattered over the writable part. Every request gets an answer:
rejected ones get BAD_MSG / NOT_SUPP / IO_ERR with a WARNING naming the reason; every
request is logged at DEBUG as one line (``spec.describe``).
"""

from __future__ import annotations

import ctypes
import logging
from typing import TYPE_CHECKING, Callable

from pyvmm.events import NO_EVENTS, EventSink
from pyvmm_snd import rules, spec
from pyvmm_snd.controls import ControlStore
from pyvmm_snd.ctlfaults import ControlFaults
from pyvmm_snd.errors import GuestWarnings, RequestError, bad_msg, not_supp
from pyvmm_snd.spec import JackFeature, PcmFeature, QueueIndex, RequestCode, Status
from pyvmm_snd.stream import PcmParams, PcmStream
from pyvmm_snd.topology import Topology

if TYPE_CHECKING:
    from pyvmm.virtio.chain import DescriptorChain
    from pyvmm.virtio.device import DeviceContext

    from pyvmm_snd.dataplane import DataPlane

log = logging.getLogger(__name__)

HDR_SIZE = ctypes.sizeof(spec.Hdr)
MAX_REQUEST_BYTES = ctypes.sizeof(spec.CtlHdr) + ctypes.sizeof(spec.CtlTlv) + spec.CTL_TLV_MAX_VALUE_BYTES
"""The largest legal request (a TLV write with a 64 KiB value)."""

MAX_QUERY_ITEM_SIZE = 1024
"""Largest item ``size`` an *_INFO query may ask for: every info struct of the spec is far
smaller (PCM_INFO 32 bytes, CTL_INFO 104); the rest of a larger item would only be zeroes."""

CTL_REQUESTS = frozenset(c for c in RequestCode if c.name.startswith("CTL_"))


class ControlPlane:
    """Handlers for every control request; state lives in the streams, controls and jacks it is given."""

    def __init__(self, topology: Topology, streams: list[PcmStream], controls: ControlStore,
                 jack_connected: list[bool]):
        self.topology = topology
        self.streams = streams
        self.controls = controls
        self.jack_connected = jack_connected
        self.ctls_negotiated = False
        self.dataplane: DataPlane | None = None
        self.sink: EventSink = NO_EVENTS
        """The device's event sink (``ctl`` traces); set when the device activates."""
        self.faults = ControlFaults()
        """Armed from the host (``ctl-fail``, ``ctl-late``); survives driver resets."""
        self._warn = GuestWarnings(log)
        self._handlers: dict[RequestCode, Callable[[bytes, int], bytes]] = {
            RequestCode.JACK_INFO: self._jack_info,
            RequestCode.JACK_REMAP: self._jack_remap,
            RequestCode.PCM_INFO: self._pcm_info,
            RequestCode.PCM_SET_PARAMS: self._pcm_set_params,
            RequestCode.PCM_PREPARE: self._pcm_command,
            RequestCode.PCM_RELEASE: self._pcm_command,
            RequestCode.PCM_START: self._pcm_command,
            RequestCode.PCM_STOP: self._pcm_command,
            RequestCode.CHMAP_INFO: self._chmap_info,
            RequestCode.CTL_INFO: self._ctl_info,
            RequestCode.CTL_ENUM_ITEMS: self._ctl_enum_items,
            RequestCode.CTL_READ: self._ctl_read,
            RequestCode.CTL_WRITE: self._ctl_write,
            RequestCode.CTL_TLV_READ: self._ctl_tlv_read,
            RequestCode.CTL_TLV_WRITE: self._ctl_tlv_write,
            RequestCode.CTL_TLV_COMMAND: self._ctl_tlv_write,
        }

    # -- the queue ---------------------------------------------------------------------------

    def process(self, ctx: DeviceContext) -> None:
        queue = ctx.queues[QueueIndex.CONTROL]
        completed = 0
        while (chain := queue.pop()) is not None:
            completed += self.handle(ctx, chain)
        if completed:
            ctx.signal_used(QueueIndex.CONTROL)

    def handle(self, ctx: DeviceContext, chain: DescriptorChain) -> bool:
        """Answer one request chain (without signalling the driver); False if an armed
        ``ctl-late`` holds the answer back."""
        reader = chain.reader()
        capacity = chain.writable_len
        if capacity < HDR_SIZE:
            request = reader.read(min(64, chain.readable_len))
            self._warn("%s: no room for the %d-byte response (%d writable bytes); returned unanswered",
                       spec.describe(request), HDR_SIZE, capacity)
            ctx.complete(QueueIndex.CONTROL, chain, 0, notify=False)
            return True
        code = None
        if chain.readable_len > MAX_REQUEST_BYTES:
            request = reader.read(min(64, chain.readable_len))
            status, payload = Status.BAD_MSG, b""
            self._warn("%s -> BAD_MSG: request of %d bytes exceeds the largest legal request (%d)",
                       spec.describe(request), chain.readable_len, MAX_REQUEST_BYTES)
        else:
            request = reader.read()
            code = int.from_bytes(request[:HDR_SIZE], "little") if len(request) >= HDR_SIZE else None
            injected = self.faults.take_failure(code)
            if injected is not None:
                status, payload = injected, b""
                log.info("%s -> %s (injected: not acted on)", spec.describe(request), status.name)
            else:
                status, payload = self.dispatch(request, capacity)
        writer = chain.writer()
        writer.write(spec.Hdr(code=status))
        if payload:
            writer.write(payload)
        if self.sink.tracing("ctl"):
            self.sink.trace("ctl", "request", code=spec.request_name(request), desc=spec.describe(request),
                            status=status.name, payload=len(payload), head=chain.head)
        if self.faults.hold(ctx, code, chain, writer.written):
            return False
        ctx.complete(QueueIndex.CONTROL, chain, writer.written, notify=False)
        return True

    def dispatch(self, request: bytes, capacity: int) -> tuple[Status, bytes]:
        """Status and response payload (after the 4-byte header) for one request."""
        try:
            if len(request) < HDR_SIZE:
                raise bad_msg(f"request of {len(request)} bytes has no header")
            value = int.from_bytes(request[:HDR_SIZE], "little")
            try:
                code = RequestCode(value)
            except ValueError:
                raise bad_msg(f"unknown request code {value:#06x}") from None
            if code in CTL_REQUESTS and not self.ctls_negotiated:
                raise not_supp("control elements need VIRTIO_SND_F_CTLS, which was not negotiated")
            payload = self._handlers[code](request, capacity - HDR_SIZE)
        except RequestError as exc:
            self._warn("%s -> %s: %s", spec.describe(request), exc.status.name, exc)
            if exc.rule is not None:
                self.sink.violation(exc.rule, f"{spec.describe(request)} -> {exc.status.name}: {exc}",
                                    **self._stream_state(request))
            return exc.status, b""
        except Exception:  # a device bug must not leave the driver waiting for an answer
            log.exception("%s -> IO_ERR: internal error", spec.describe(request))
            return Status.IO_ERR, b""
        log.debug("%s -> OK (%d payload bytes)", spec.describe(request), len(payload))
        return Status.OK, payload

    # -- helpers -----------------------------------------------------------------------------

    @staticmethod
    def _parse(struct_type, request: bytes):
        try:
            return spec.parse(struct_type, request)
        except ValueError:
            raise bad_msg(f"request of {len(request)} bytes, {struct_type.__name__} needs "
                          f"{ctypes.sizeof(struct_type)}") from None

    @staticmethod
    def _room(payload_len: int, room: int) -> None:
        if payload_len > room:
            raise bad_msg(f"response needs {HDR_SIZE + payload_len} writable bytes, the driver gave {HDR_SIZE + room}")

    def _query(self, request: bytes, room: int, items: list[ctypes.Structure]) -> bytes:
        q = self._parse(spec.QueryInfo, request)
        if q.start_id + q.count > len(items):
            raise bad_msg(f"items {q.start_id}..{q.start_id + q.count - 1} requested, {len(items)} exist",
                          rules.ITEM_RANGE)
        if q.count and q.size < ctypes.sizeof(spec.Info):
            raise bad_msg(f"item size {q.size} is smaller than the common info header")
        if q.size > MAX_QUERY_ITEM_SIZE:
            raise bad_msg(f"item size {q.size} exceeds {MAX_QUERY_ITEM_SIZE} bytes")
        # Other sizes are honoured (spec: "for backward compatibility"): items are cut or
        # zero-padded. Memory is at most (advertised items) x MAX_QUERY_ITEM_SIZE.
        if q.count * q.size > room:
            raise bad_msg(f"response needs {HDR_SIZE + q.count * q.size} writable bytes, the driver gave "
                          f"{HDR_SIZE + room}", rules.ITEM_RESPONSE_SIZE)
        out = bytearray()
        for item in items[q.start_id:q.start_id + q.count]:
            raw = bytes(item)[:q.size]
            out += raw + bytes(q.size - len(raw))
        return bytes(out)

    def _stream_state(self, request: bytes) -> dict[str, object]:
        """The state a PCM request met (for conformance reports): its stream's id and state."""
        code = spec.request_name(request)
        if not code.startswith("PCM_") or code == "PCM_INFO" or len(request) < 8:
            return {}
        stream_id = int.from_bytes(request[4:8], "little")
        if not 0 <= stream_id < len(self.streams):
            return {"stream": stream_id}
        return {"stream": stream_id, "state": self.streams[stream_id].state.value}

    def _stream(self, stream_id: int) -> PcmStream:
        if not 0 <= stream_id < len(self.streams):
            raise bad_msg(f"stream {stream_id} does not exist ({len(self.streams)} streams)")
        return self.streams[stream_id]

    # -- jacks -------------------------------------------------------------------------------

    def _jack_info(self, request: bytes, room: int) -> bytes:
        items = [jack.info(self.jack_connected[i]) for i, jack in enumerate(self.topology.jacks)]
        return self._query(request, room, items)

    def _jack_remap(self, request: bytes, room: int) -> bytes:
        remap = self._parse(spec.JackRemap, request)
        if not 0 <= remap.jack_id < len(self.topology.jacks):
            raise bad_msg(f"jack {remap.jack_id} does not exist ({len(self.topology.jacks)} jacks)")
        if not self.topology.jacks[remap.jack_id].features >> JackFeature.REMAP & 1:
            raise not_supp(f"jack {remap.jack_id} does not offer remapping")
        raise not_supp("jack remapping is not implemented")  # no jack offers it; kept for the future

    # -- PCM ---------------------------------------------------------------------------------

    def _pcm_info(self, request: bytes, room: int) -> bytes:
        return self._query(request, room, [s.config.info() for s in self.streams])

    def _pcm_set_params(self, request: bytes, room: int) -> bytes:
        req = self._parse(spec.PcmSetParams, request)
        stream = self._stream(req.stream_id)
        if req.padding:  # tolerated, but the driver broke a MUST
            self.sink.violation(rules.PADDING_ZERO, f"{spec.describe(request)}: padding={req.padding}",
                                stream=stream.id, state=stream.state.value)
        shmem = 1 << PcmFeature.SHMEM_HOST | 1 << PcmFeature.SHMEM_GUEST
        if req.features & shmem == shmem:
            raise not_supp("both SHMEM_HOST and SHMEM_GUEST requested", rules.SHMEM_BOTH)
        stream.check(RequestCode.PCM_SET_PARAMS)
        params = PcmParams.from_request(stream.config, req)
        stream.apply(RequestCode.PCM_SET_PARAMS, params)
        log.info("stream %d: %s", stream.id, params)
        return b""

    def _pcm_command(self, request: bytes, room: int) -> bytes:
        hdr = self._parse(spec.PcmHdr, request)
        code = RequestCode(hdr.code)
        stream = self._stream(hdr.stream_id)
        stream.apply(code)
        if self.dataplane is not None:
            if code == RequestCode.PCM_PREPARE:
                self.dataplane.prepare(stream)
            elif code == RequestCode.PCM_START:
                self.dataplane.start(stream)
            elif code == RequestCode.PCM_STOP:
                self.dataplane.stop(stream)
            elif code == RequestCode.PCM_RELEASE:
                self.dataplane.release(stream)
        return b""

    # -- channel maps ----------------------------------------------------------------------------

    def _chmap_info(self, request: bytes, room: int) -> bytes:
        return self._query(request, room, [c.info() for c in self.topology.chmaps])

    # -- control elements ------------------------------------------------------------------------

    def _ctl_info(self, request: bytes, room: int) -> bytes:
        return self._query(request, room, [c.info() for c in self.controls.configs])

    def _ctl_enum_items(self, request: bytes, room: int) -> bytes:
        hdr = self._parse(spec.CtlHdr, request)
        items = self.controls.enum_items(hdr.control_id)
        self._room(len(items), room)
        return items

    def _ctl_read(self, request: bytes, room: int) -> bytes:
        hdr = self._parse(spec.CtlHdr, request)
        self._room(ctypes.sizeof(spec.CtlValue), room)
        return bytes(self.controls.read(hdr.control_id))

    def _ctl_write(self, request: bytes, room: int) -> bytes:
        hdr = self._parse(spec.CtlHdr, request)
        value = self._parse(spec.CtlValue, request[ctypes.sizeof(spec.CtlHdr):])
        self.controls.write(hdr.control_id, value)
        return b""

    def _ctl_tlv_read(self, request: bytes, room: int) -> bytes:
        hdr = self._parse(spec.CtlHdr, request)
        tlv = self.controls.tlv_read(hdr.control_id)
        return tlv[:room]  # spec: write as much as fits and succeed

    def _ctl_tlv_write(self, request: bytes, room: int) -> bytes:
        hdr = self._parse(spec.CtlHdr, request)
        body = request[ctypes.sizeof(spec.CtlHdr):]
        tlv = self._parse(spec.CtlTlv, body)
        value_bytes = len(body) - ctypes.sizeof(spec.CtlTlv)
        if tlv.length % 4 or tlv.length > spec.CTL_TLV_MAX_VALUE_BYTES or tlv.length > value_bytes:
            raise bad_msg(f"TLV length {tlv.length} (must be a multiple of 4, <= {spec.CTL_TLV_MAX_VALUE_BYTES} "
                          f"and <= the {value_bytes} bytes sent)",
                          rules.CTL_TLV_SIZE if tlv.length > spec.CTL_TLV_MAX_VALUE_BYTES else None)
        self.controls.tlv_write(hdr.control_id, hdr.code == RequestCode.CTL_TLV_COMMAND,
                                body[:ctypes.sizeof(spec.CtlTlv) + tlv.length])
        return b""
