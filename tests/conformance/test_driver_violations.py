"""The spec-conformance checker names deliberate driver violations sent from the Python driver
model: one test per rule, each checking the rule, its level and section, the quoted sentence in
the log line, and that a repeated violation is counted but logged once."""

import logging
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent.parent / "snd"))
sys.path.insert(0, str(Path(__file__).parent.parent / "snd_dataplane"))

from dp_helpers import PERIOD, FakeLoop  # noqa: E402
from pyvmm.conformance import Checker  # noqa: E402
from pyvmm.events import EventBus  # noqa: E402
from pyvmm_snd import spec  # noqa: E402
from pyvmm_snd.device import SoundDevice  # noqa: E402
from pyvmm_snd.spec import PcmFormat, QueueIndex, RequestCode, Status  # noqa: E402
from snd_driver import SndDriver  # noqa: E402


@pytest.fixture
def drv():
    checker = Checker()
    device = SoundDevice({"backend": "null", "formats": "s16+s32", "rates": "44100+48000"})
    device.event_sink = EventBus(checker=checker).sink("snd0")
    d = SndDriver(device=device, loop=FakeLoop())
    d.checker = checker
    d.start()
    yield d
    d.close()


def broken(drv) -> dict[str, int]:
    return {rule_id: n for (_, rule_id), n in drv.checker.counts.items()}


def prepared(drv):
    assert drv.set_params(0, buffer_bytes=8 * PERIOD, period_bytes=PERIOD) == Status.OK
    assert drv.pcm(RequestCode.PCM_PREPARE, 0) == Status.OK


def test_a_clean_linux_like_run_breaks_nothing(drv):
    prepared(drv)
    for _ in range(4):
        drv.add_tx(0, bytes(PERIOD))
    drv.kick(QueueIndex.TX)
    assert drv.pcm(RequestCode.PCM_START, 0) == Status.OK
    drv.advance(0.2)
    assert drv.pcm(RequestCode.PCM_STOP, 0) == Status.OK
    assert drv.pcm(RequestCode.PCM_RELEASE, 0) == Status.OK
    assert broken(drv) == {}
    assert drv.checker.summary() == "conformance: 0 violations"


def test_period_must_divide_buffer(drv, caplog):
    with caplog.at_level(logging.WARNING, logger="pyvmm.conformance"):
        assert drv.set_params(0, buffer_bytes=10000, period_bytes=4096) == Status.BAD_MSG
        assert drv.set_params(0, buffer_bytes=10001, period_bytes=4096) == Status.BAD_MSG
    assert broken(drv) == {"snd.params.period-divides-buffer": 2}
    [line] = [r.getMessage() for r in caplog.records if "conformance" in r.getMessage()]
    assert "MUST violated [5.14.6.6.2 PCM Stream Parameters]" in line
    assert '"period_bytes MUST be a divider buffer_bytes' in line
    assert "PCM_SET_PARAMS stream=0 buffer=10000 period=4096" in line and "state=set-params" in line


def test_unadvertised_format(drv):
    assert drv.set_params(0, fmt=PcmFormat.FLOAT) == Status.NOT_SUPP
    assert broken(drv) == {"snd.params.unadvertised-value": 1}


def test_undefined_format_value(drv):
    assert drv.set_params(0, fmt=200) == Status.NOT_SUPP
    assert broken(drv) == {"snd.params.undefined-value": 1}


def test_channels_outside_the_advertised_range(drv):
    assert drv.set_params(0, channels=9) == Status.NOT_SUPP
    assert broken(drv) == {"snd.params.channels-range": 1}


def test_both_shmem_bits(drv):
    assert drv.set_params(0, features=0b11) == Status.NOT_SUPP
    assert broken(drv) == {"snd.params.shmem-both": 1}


def test_padding_must_be_zero_reported_but_tolerated(drv):
    req = spec.PcmSetParams(code=RequestCode.PCM_SET_PARAMS, stream_id=0, buffer_bytes=8 * PERIOD,
                            period_bytes=PERIOD, channels=2, format=PcmFormat.S16, rate=spec.PcmRate.RATE_48000,
                            padding=7)
    assert Status(int.from_bytes(drv.linux_send(bytes(req), 4).written[:4], "little")) == Status.OK
    assert broken(drv) == {"snd.params.padding-zero": 1}


def test_item_range_beyond_the_configured_count(drv):
    drv.query(RequestCode.PCM_INFO, 1, 5, ctypes_size(spec.PcmInfo))
    assert broken(drv) == {"snd.info.item-range": 1}


def test_item_response_buffer_too_small(drv):
    drv.query(RequestCode.PCM_INFO, 0, 2, ctypes_size(spec.PcmInfo), room=10)
    assert broken(drv) == {"snd.info.response-size": 1}


def test_start_before_prepare_breaks_the_lifecycle(drv):
    assert drv.set_params(0) == Status.OK
    assert drv.pcm(RequestCode.PCM_START, 0) == Status.BAD_MSG
    assert broken(drv) == {"snd.pcm.lifecycle": 1}
    [(_, rule_id)] = drv.checker.first
    assert drv.checker.first[("snd0", rule_id)].state == {"stream": 0, "state": "set-params"}


def test_io_on_a_stream_that_is_not_prepared(drv):
    drv.add_tx(0, bytes(PERIOD))
    drv.kick(QueueIndex.TX)
    assert broken(drv) == {"snd.pcm.io-not-prepared": 1}


def test_tx_buffer_not_a_period_is_a_should(drv):
    prepared(drv)
    drv.add_tx(0, bytes(PERIOD // 2))
    drv.kick(QueueIndex.TX)
    assert broken(drv) == {"snd.tx.period-size": 1}
    assert drv.checker.first[("snd0", "snd.tx.period-size")].rule.level == "SHOULD"


def test_tx_with_device_writable_frames(drv):
    prepared(drv)
    drv.queues[QueueIndex.TX].add([bytes(spec.PcmXfer(stream_id=0)) + bytes(PERIOD)], [64, 8])
    drv.kick(QueueIndex.TX)
    assert "snd.tx.device-writable" in broken(drv)


def test_rx_with_device_readable_frames(drv):
    assert drv.set_params(1, buffer_bytes=8 * PERIOD, period_bytes=PERIOD) == Status.OK
    assert drv.pcm(RequestCode.PCM_PREPARE, 1) == Status.OK
    drv.queues[QueueIndex.RX].add([bytes(spec.PcmXfer(stream_id=1)), bytes(64)], [PERIOD + 8])
    drv.kick(QueueIndex.RX)
    assert broken(drv) == {"snd.rx.device-readable": 1}


def test_event_buffers_too_small_or_readable():
    checker = Checker()
    device = SoundDevice({"backend": "null"})
    device.event_sink = EventBus(checker=checker).sink("snd0")
    with SndDriver(device=device, loop=FakeLoop()) as d:
        d.queues[QueueIndex.EVENT].add(writable=[4])
        d.queues[QueueIndex.EVENT].add([b"x" * 8], [8])
        d.post_event_buffers(4)
        d.activate()
    assert {rule for _, rule in checker.counts} == {"snd.init.event-buffer-size", "snd.init.event-buffer-readable"}


def test_summary_table_counts_every_violation(drv):
    for _ in range(3):
        drv.set_params(0, channels=0)
    drv.pcm(RequestCode.PCM_START, 0)
    text = drv.checker.summary()
    assert text.splitlines()[0] == "conformance: 4 violations of 2 rules"
    assert "snd.params.channels-range" in text and "3x" in text and "[5.14.6.6.2 PCM Stream Parameters]" in text


def ctypes_size(struct_type) -> int:
    import ctypes

    return ctypes.sizeof(struct_type)
