"""``SoundDevice``: the virtio-sound device plugin (``--device virtio-snd,key=value,...``).

Wires the pieces together: topology (what the card offers), control plane (control queue),
event queue, PCM streams and the data plane (tx/rx queues). Host-side changes (jack plugged,
control value set) are accepted from any thread and applied on the device event loop.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from typing import Sequence

from pyvmm.errors import VmmError
from pyvmm.virtio.device import DeviceContext, VirtioDevice

from pyvmm_snd import hostaudio, monitor, qmp, spec, topology
from pyvmm_snd.control import ControlPlane
from pyvmm_snd.controls import ControlStore
from pyvmm_snd.ctlfaults import ControlFaults
from pyvmm_snd.dataplane import PcmDataPlane
from pyvmm_snd.errors import GuestWarnings
from pyvmm_snd.events import EventQueue
from pyvmm_snd.spec import PcmFeature, QueueIndex
from pyvmm_snd.stream import PcmStream, StreamState

log = logging.getLogger(__name__)

QUEUE_SIZE = 64
"""Per queue: Linux does not check for a full queue, and 64 covers its default 16 periods per stream."""


class SoundDevice(VirtioDevice):
    """virtio-sound: PCM playback/capture streams, jacks, channel maps and mixer controls."""

    device_type = spec.DEVICE_ID
    queue_max_sizes = (QUEUE_SIZE,) * len(QueueIndex)
    feature_names = {spec.F_CTLS: "VIRTIO_SND_F_CTLS"}

    def __init__(self, options: dict[str, str] | None = None):
        options = dict(options or {})
        host = {key: value for key, value in options.items() if hostaudio.is_host_option(key)}
        card = {key: value for key, value in options.items() if key not in host}
        self._setup(topology.from_options(card), hostaudio.from_options(host))

    @classmethod
    def from_topology(cls, top: topology.Topology, host_audio: hostaudio.HostAudioConfig | None = None
                      ) -> SoundDevice:
        """A device with a hand-built topology (tests, embedders); it is validated first."""
        top.validate()
        device = cls.__new__(cls)
        device._setup(top, host_audio or hostaudio.from_options({}))
        return device

    def _setup(self, top: topology.Topology, host_audio: hostaudio.HostAudioConfig) -> None:
        self.topology = top
        self.host_audio = host_audio
        self.streams = [PcmStream(i, config) for i, config in enumerate(self.topology.streams)]
        self.backends = host_audio.create_backends([stream.direction for stream in self.streams])
        self.controls = ControlStore(self.topology.controls)
        self.controls.on_change = self._control_changed
        self.jack_connected = [jack.connected for jack in self.topology.jacks]
        self.events = EventQueue()
        self.control_plane = ControlPlane(self.topology, self.streams, self.controls, self.jack_connected)
        self.dataplane: PcmDataPlane | None = None
        self.ctx: DeviceContext | None = None
        self._config = bytes(self.topology.config())
        self.paused = False
        """The VM is paused (QMP ``stop``): stream clocks stand still."""
        self._warn = GuestWarnings(log)
        log.info("virtio-snd: %d streams, %d jacks, %d chmaps, %d controls; %s",
                 len(self.streams), len(self.topology.jacks), len(self.topology.chmaps),
                 len(self.topology.controls), self.host_audio)

    @classmethod
    def describe_options(cls) -> str:
        card = [line for line in topology.describe_options().splitlines() if not line.startswith("  backend ")]
        return "\n".join(card) + "\n" + hostaudio.describe_options()

    @property
    def backend(self) -> str:
        """Names of the back ends the streams use (``wav+tone`` for the default card)."""
        return "+".join(dict.fromkeys(b.NAME for b in self.backends))

    # -- VirtioDevice -----------------------------------------------------------------------

    def device_features(self) -> int:
        return 1 << spec.F_CTLS if self.topology.controls else 0

    def read_config(self, offset: int, size: int) -> bytes:
        data = self._config[offset:offset + size] if offset >= 0 else b""
        return data + bytes(size - len(data))

    def write_config(self, offset: int, data: bytes) -> None:
        log.debug("virtio-snd: ignored driver write of %d bytes to read-only config at %#x", len(data), offset)

    def activate(self, ctx: DeviceContext) -> None:
        self.ctx = ctx
        self.control_plane.ctls_negotiated = bool(ctx.features >> spec.F_CTLS & 1)
        self.dataplane = PcmDataPlane(ctx, self.streams, self.backends, self.host_audio.clock,
                                      self.controls.stream_gain, self._xrun_detected, sink=self.event_sink)
        if self.paused:
            for io in self.dataplane.io:
                io.freeze()
        self.control_plane.dataplane = self.dataplane
        self.control_plane.sink = self.events.sink = self.event_sink
        if self.paused:
            self.control_plane.faults.freeze(ctx)
        self.events.activate(ctx)
        log.debug("virtio-snd: activated (features %#x)", ctx.features)
        for queue in (QueueIndex.CONTROL, QueueIndex.TX, QueueIndex.RX):
            self.queue_notify(queue)

    def queue_notify(self, queue_index: int) -> None:
        if self.ctx is None:
            log.debug("virtio-snd: notify on queue %d before activation: ignored", queue_index)
            return
        if queue_index == QueueIndex.CONTROL:
            self.control_plane.process(self.ctx)
        elif queue_index == QueueIndex.EVENT:
            self.events.refill()
        elif queue_index == QueueIndex.TX:
            self._process_io(QueueIndex.TX)
        elif queue_index == QueueIndex.RX:
            self._process_io(QueueIndex.RX)
        else:
            self._warn("virtio-snd: notify on queue %d, which does not exist", queue_index)

    def reset(self) -> None:
        if self.dataplane is not None:
            self.dataplane.reset()
        self.dataplane = None
        self.control_plane.dataplane = None
        self.control_plane.ctls_negotiated = False
        self.control_plane.faults.reset()
        for stream in self.streams:
            stream.reset()
        self.events.reset()
        self.ctx = None
        log.debug("virtio-snd: reset")

    def close(self) -> None:
        """The VMM exits (also on Ctrl-C/SIGTERM): stop the clocks, flush and close the back ends."""
        if self.dataplane is not None:
            self.dataplane.close()
        for backend in self.backends:
            backend.close()
        for line in hostaudio.written_files(self.backends):
            print(f"pyvmm: {line}", file=sys.stderr)

    def monitor_commands(self):
        """``snd0 jack|xrun|ctl|fail|info ...`` in the monitor (see ``pyvmm_snd/monitor.py``)."""
        return monitor.commands(self)

    def qmp_commands(self):
        """``x-pyvmm-snd-query-streams``, ``x-pyvmm-snd-inject`` (see ``pyvmm_snd/qmp.py``)."""
        return qmp.commands(self)

    def pause(self) -> None:
        """QMP ``stop``: every stream's period clock stands still (no completion, no xrun)."""
        self.paused = True
        self.control_plane.faults.freeze(self.ctx)
        if self.dataplane is not None:
            self.dataplane.freeze()

    def resume(self) -> None:
        self.paused = False
        self.control_plane.faults.thaw(self.ctx)
        if self.dataplane is not None:
            self.dataplane.thaw()

    # -- PCM I/O ------------------------------------------------------------------------------

    def _process_io(self, queue_index: QueueIndex) -> None:
        assert self.dataplane is not None
        self.dataplane.process(queue_index)

    # -- host side (any thread) ------------------------------------------------------------------

    def set_jack(self, jack_id: int, connected: bool) -> None:
        """Plug or unplug a jack; the guest gets a JACK_(DIS)CONNECTED event."""
        if not 0 <= jack_id < len(self.jack_connected):
            raise VmmError(f"virtio-snd: jack {jack_id} does not exist ({len(self.jack_connected)} jacks)")
        self._on_loop(self._set_jack, jack_id, connected)

    def _set_jack(self, jack_id: int, connected: bool) -> None:
        if self.jack_connected[jack_id] == connected:
            return
        self.jack_connected[jack_id] = connected
        log.info("virtio-snd: jack %d %s", jack_id, "connected" if connected else "disconnected")
        self.events.jack(jack_id, connected)
        self.event_sink.emit("SND_JACK_CHANGED", jack=jack_id, connected=connected, notified=self.ctx is not None)

    def control_faults(self) -> ControlFaults:
        """The control queue's faults, to arm (monitor, QMP). Often armed before the driver
        activates the device, so their trace records go to the device's sink from here."""
        faults = self.control_plane.faults
        faults.sink = self.event_sink
        return faults

    def set_control(self, control_id: int, values: Sequence[int] | bytes) -> None:
        """Change a control value from the host; the guest gets a CTL_NOTIFY event."""
        config = self.controls.config_or_none(control_id)
        if config is None:
            raise VmmError(f"virtio-snd: control {control_id} does not exist ({len(self.controls)} controls)")
        self.controls.validate(control_id, values)
        self._on_loop(self.controls.set, control_id, values)

    def report_xrun(self, stream_id: int, kind: str = "injected") -> bool:
        """Send an XRUN event if the driver asked for them on that stream; True if sent.
        Host event ``SND_PCM_XRUN`` either way; ``kind``: injected (monitor, QMP), underrun
        or overrun (the data plane found no guest buffer for a period)."""
        stream = self.streams[stream_id]
        params = stream.params
        notified = params is not None and params.wants(PcmFeature.EVT_XRUNS) and stream.state == StreamState.STARTED
        if notified:
            self.events.xrun(stream_id)
        self.event_sink.emit("SND_PCM_XRUN", stream=stream_id, kind=kind, notified=notified)
        return notified

    def _xrun_detected(self, stream_id: int) -> bool:
        output = self.streams[stream_id].direction == spec.Direction.OUTPUT
        return self.report_xrun(stream_id, "underrun" if output else "overrun")

    def _control_changed(self, control_id: int, mask: int) -> None:
        notified = self.control_plane.ctls_negotiated
        if notified:
            self.events.ctl_notify(control_id, mask)
        self.event_sink.emit("SND_CTL_CHANGED", control=control_id, mask=mask, notified=notified)

    def _on_loop(self, fn, *args) -> None:
        ctx = self.ctx
        if ctx is not None and ctx.loop is not None and ctx.loop.is_running():
            try:
                current = asyncio.get_running_loop()
            except RuntimeError:
                current = None
            if current is not ctx.loop:
                ctx.loop.call_soon_threadsafe(fn, *args)
                return
        fn(*args)
