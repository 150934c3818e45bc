"""Split-queue and transport rules: a malformed chain or a notification the spec forbids is
reported with its rule; ``--strict`` stops the back end at the first MUST violation."""

import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent.parent / "vhost_user"))

from pyvmm.conformance import STRICT_EXIT_STATUS, Checker  # noqa: E402
from pyvmm.events import EventBus  # noqa: E402
from pyvmm.virtio import constants as C  # noqa: E402
from pyvmm.virtio.mmio import MmioTransport  # noqa: E402
from pyvmm.virtio.testing import EchoDevice, FakeInterrupt, MmioDriver  # noqa: E402


@pytest.fixture
def checked(memory, allocator, device_loop):
    checker = Checker()
    device = EchoDevice()
    device.event_sink = EventBus(checker=checker).sink("echo0")
    irq = FakeInterrupt()
    transport = MmioTransport(device, memory, device_loop, irq, name="echo")
    yield MmioDriver(transport, memory, allocator), irq, checker
    transport.close()


def rules_of(checker):
    return {rule for _, rule in checker.counts}


def test_readable_after_writable_descriptor(checked):
    drv, irq, checker = checked
    drv.probe()
    dq = drv.queues[0]
    head = dq.add([b"ping"], [16], publish=False)
    # rewrite the chain so that the writable descriptor comes first
    first, second = dq.pending[head].descriptors
    dq.write_desc(first, dq.pending[head].writable[0][0], 16, C.VIRTQ_DESC_F_WRITE | C.VIRTQ_DESC_F_NEXT, second)
    dq.write_desc(second, dq.buffer(b"ping"), 4, 0, 0)
    dq.publish(head)
    drv.kick(0)
    assert irq.wait(5)
    assert rules_of(checker) == {"virtq.readable-after-writable"}
    assert checker.first[("echo0", "virtq.readable-after-writable")].rule.section == "2.7.4 Message Framing"


def test_avail_idx_jump_is_reported_as_a_must(checked):
    drv, irq, checker = checked
    drv.probe()
    drv.queues[0].set_avail_idx(500)
    drv.kick(0)
    irq.wait(5)
    assert rules_of(checker) == {"virtq.avail-idx-jump"}


def test_notify_before_driver_ok(checked):
    drv, irq, checker = checked
    drv.probe(driver_ok=False)
    drv.kick(0)
    deadline = time.monotonic() + 5
    while not checker.counts and time.monotonic() < deadline:
        time.sleep(0.01)
    assert rules_of(checker) == {"virtio.notify-before-driver-ok"}


def test_strict_vhost_user_back_end_exits_at_the_first_must_violation(tmp_path):
    from vhost_frontend import connect, start_device

    from pyvmm_snd import spec
    from pyvmm_snd.device import SoundDevice
    from pyvmm_snd.spec import PcmFormat, PcmRate, QueueIndex, RequestCode

    sock = tmp_path / "snd.sock"
    backend = subprocess.Popen([sys.executable, "-m", "pyvmm", "vhost-user", "snd", "--socket", str(sock),
                                "--strict", "backend=null"], stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while not sock.exists():
            assert backend.poll() is None and time.monotonic() < deadline, backend.stderr.read()
            time.sleep(0.05)
        fe = connect(str(sock))
        start_device(fe, SoundDevice({"backend": "null"}), wait=False)
        req = spec.PcmSetParams(code=RequestCode.PCM_SET_PARAMS, stream_id=0, buffer_bytes=10000, period_bytes=4096,
                                channels=2, format=PcmFormat.S16, rate=PcmRate.RATE_48000)
        ctl = fe.rings[QueueIndex.CONTROL]
        ctl.add([bytes(req)], [4])
        fe.kick(QueueIndex.CONTROL)
        status = backend.wait(30)
        err = backend.stderr.read()
        fe.close()
    finally:
        if backend.poll() is None:
            backend.kill()
    assert status == STRICT_EXIT_STATUS, err
    assert "--strict: stopped at conformance: snd0: MUST violated [5.14.6.6.2 PCM Stream Parameters]" in err
    assert "conformance: 1 violations of 1 rules" in err
