"""The PCM command lifecycle (all 5 x 5 state/request pairs), SET_PARAMS validation, held I/O,
RELEASE returning pending I/O before its own response, and reset."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyvmm_snd import spec
from pyvmm_snd.spec import PcmFeature, PcmFormat, PcmRate, QueueIndex, RequestCode, Status
from pyvmm_snd.stream import MIN_PERIOD_US, PcmParams, StreamState
from snd_driver import SndDriver, status_of

R = RequestCode
SET, PREP, START, STOP, REL = R.PCM_SET_PARAMS, R.PCM_PREPARE, R.PCM_START, R.PCM_STOP, R.PCM_RELEASE

# The spec's "possible valid transitions", written out independently of the device's table.
VALID = {
    "initial": {SET, PREP},
    "set_params": {SET, PREP},
    "prepared": {SET, PREP, START, REL},
    "started": {STOP},
    "stopped": {START, REL},
    "released": {SET, PREP},
}
PATH = {
    "initial": [],
    "set_params": [SET],
    "prepared": [SET, PREP],
    "started": [SET, PREP, START],
    "stopped": [SET, PREP, START, STOP],
    "released": [SET, PREP, REL],
}
STATE_OF = {SET: StreamState.SET_PARAMS, PREP: StreamState.PREPARED, START: StreamState.STARTED,
            STOP: StreamState.STOPPED, REL: StreamState.RELEASED}


def send(d: SndDriver, code: RequestCode, stream_id: int = 0) -> Status:
    return d.set_params(stream_id) if code == SET else d.pcm(code, stream_id)


@pytest.fixture
def drv():
    with SndDriver() as d:
        yield d.start()


@pytest.mark.parametrize("request_code", [SET, PREP, START, STOP, REL], ids=lambda c: c.name)
@pytest.mark.parametrize("state", list(PATH))
def test_every_state_request_pair(drv, state, request_code):
    for code in PATH[state]:
        assert send(drv, code) == Status.OK
    before = drv.device.streams[0].state
    status = send(drv, request_code)
    if request_code in VALID[state]:
        assert status == Status.OK
        assert drv.device.streams[0].state == STATE_OF[request_code]
    else:
        assert status == Status.BAD_MSG
        assert drv.device.streams[0].state == before
    assert drv.device.streams[1].state == StreamState.SET_PARAMS  # the other stream is untouched


def test_linux_run_sequence_with_pause(drv):
    """hw_params, prepare, start, pause (STOP), resume (START), stop, sync_stop (RELEASE), next run."""
    for code in (SET, PREP, START, STOP, START, STOP, REL, SET, PREP, START, STOP, REL):
        assert send(drv, code) == Status.OK, code.name


@pytest.mark.parametrize("code", [SET, PREP, START, STOP, REL], ids=lambda c: c.name)
def test_bad_stream_id(drv, code):
    assert send(drv, code, stream_id=2) == Status.BAD_MSG
    assert send(drv, code, stream_id=0xFFFFFFFF) == Status.BAD_MSG


def test_short_pcm_requests(drv):
    assert status_of(drv.linux_send(bytes(spec.PcmHdr(code=PREP))[:6], 4)) == Status.BAD_MSG
    assert status_of(drv.linux_send(bytes(spec.PcmSetParams(code=SET))[:23], 4)) == Status.BAD_MSG
    assert drv.device.streams[0].state == StreamState.SET_PARAMS


# -- SET_PARAMS validation -----------------------------------------------------------------------

@pytest.mark.parametrize("kwargs,expected", [
    ({}, Status.OK),
    (dict(fmt=PcmFormat.U8), Status.NOT_SUPP),                      # format not advertised
    (dict(fmt=99), Status.NOT_SUPP),                                # undefined format
    (dict(rate=PcmRate.RATE_384000), Status.NOT_SUPP),              # rate not advertised
    (dict(rate=99), Status.NOT_SUPP),                               # undefined rate
    (dict(channels=0), Status.NOT_SUPP),
    (dict(channels=9), Status.NOT_SUPP),
    (dict(features=1 << PcmFeature.MSG_POLLING), Status.NOT_SUPP),  # not offered
    (dict(features=1 << PcmFeature.SHMEM_HOST), Status.NOT_SUPP),
    (dict(features=1 << 31), Status.NOT_SUPP),
    (dict(features=1 << PcmFeature.EVT_XRUNS), Status.OK),
    (dict(period_bytes=0), Status.BAD_MSG),
    (dict(buffer_bytes=0), Status.BAD_MSG),
    (dict(buffer_bytes=4096 * 3 + 4, period_bytes=4096), Status.BAD_MSG),    # not a multiple of the period
    (dict(buffer_bytes=4098 * 4, period_bytes=4098, channels=2), Status.BAD_MSG),  # 4098 not whole 4-byte frames
    (dict(buffer_bytes=4098 * 4, period_bytes=4098, channels=1), Status.OK),       # 2-byte frames
    (dict(buffer_bytes=1 << 30, period_bytes=1 << 20), Status.NOT_SUPP),
])
def test_set_params_validation(drv, kwargs, expected):
    assert drv.set_params(**kwargs) == expected
    params = drv.device.streams[0].params
    if expected == Status.OK:
        assert params is not None and params.channels == kwargs.get("channels", 2)
    else:
        assert params is None


@settings(max_examples=60, deadline=None)
@given(channels=st.integers(0, 12), fmt=st.integers(0, 30), rate=st.integers(0, 20),
       periods=st.integers(1, 16), frames=st.integers(1, 2000))
def test_set_params_accepts_exactly_what_pcm_info_advertised(channels, fmt, rate, periods, frames):
    with SndDriver(options={"formats": "s16+float", "rates": "44100+48000", "channels": "1-2"}) as d:
        d.start()
        info = d.items(RequestCode.PCM_INFO, spec.PcmInfo, 2)[0]
        physical = spec.SAMPLE_LAYOUTS[PcmFormat(fmt)].physical_width if fmt < len(PcmFormat) else 16
        period = frames * max(channels, 1) * physical // 8
        status = d.set_params(0, buffer_bytes=period * periods, period_bytes=period, channels=channels,
                              fmt=fmt, rate=rate)
        offered = (info.formats >> fmt & 1 if fmt < 64 else 0) and (info.rates >> rate & 1 if rate < 64 else 0) \
            and info.channels_min <= channels <= info.channels_max
        long_enough = rate < len(PcmRate) and frames * 1_000_000 >= MIN_PERIOD_US * spec.RATE_HZ[PcmRate(rate)]
        assert status == (Status.OK if offered and long_enough else Status.NOT_SUPP)


def test_prepare_without_set_params_uses_defaults(drv):
    assert drv.pcm(PREP, 0) == Status.OK
    params = drv.device.streams[0].effective_params
    assert params == PcmParams.default_for(drv.device.topology.streams[0])
    assert (params.channels, params.format, params.rate) == (2, PcmFormat.S16, PcmRate.RATE_48000)
    assert params.buffer_bytes % params.period_bytes == 0 and params.period_bytes * 8 % params.frame_bits == 0


# -- I/O while the control plane moves the stream (placeholder data plane) --------------------------

PERIOD = 4096
PERIOD_S = PERIOD / (48000 * 4)  # S16 stereo at 48 kHz: 21.3 ms


def test_playback_held_before_start_then_paced_one_period_each(drv):
    assert send(drv, SET) == Status.OK and send(drv, PREP) == Status.OK
    heads = [drv.add_tx(0, bytes(PERIOD), cuts=[4, 1000]) for _ in range(3)]
    assert drv.kick(QueueIndex.TX) == []  # pre-buffered, held
    assert len(drv.device.dataplane.io[0].held) == 3
    drv.advance(1.0)
    assert drv.collect(QueueIndex.TX) == []  # not started: the clock does not run
    assert send(drv, START) == Status.OK
    assert drv.collect(QueueIndex.TX) == []  # nothing completes at START (no burst)
    done = []
    for n in range(1, 4):
        drv.advance(PERIOD_S * 0.9)
        assert len(done + drv.collect(QueueIndex.TX)) == n - 1 or pytest.fail("completed early")
        drv.advance(PERIOD_S * 0.1 + 1e-9)
        done += drv.collect(QueueIndex.TX)
        assert len(done) == n
    assert [e.id for e in done] == heads
    for entry in done:
        assert entry.len == 8 and drv.io_status(QueueIndex.TX, entry) == (Status.OK, 0)


def test_playback_underrun_restarts_the_clock_on_the_next_message(drv):
    for code in (SET, PREP, START):
        assert send(drv, code) == Status.OK
    drv.advance(10 * PERIOD_S)  # nothing queued: nothing to do
    head = drv.add_tx(0, bytes(PERIOD))
    assert drv.kick(QueueIndex.TX) == []
    drv.advance(PERIOD_S + 1e-9)
    assert [e.id for e in drv.collect(QueueIndex.TX)] == [head]


def test_pause_holds_messages_and_resume_continues(drv):
    for code in (SET, PREP, START):
        assert send(drv, code) == Status.OK
    for _ in range(3):
        drv.add_tx(0, bytes(PERIOD))
    drv.kick(QueueIndex.TX)
    drv.advance(PERIOD_S + 1e-9)
    assert len(drv.collect(QueueIndex.TX)) == 1
    assert send(drv, STOP) == Status.OK
    drv.advance(10 * PERIOD_S)
    assert drv.collect(QueueIndex.TX) == [] and len(drv.device.dataplane.io[0].held) == 2
    assert send(drv, START) == Status.OK
    drv.advance(2 * PERIOD_S + 1e-9)
    assert len(drv.collect(QueueIndex.TX)) == 2


def test_messages_complete_one_per_period():
    """The clock ticks once per negotiated period (125 ms here); a message that is not exactly
    one period is refused at once with IO_ERR and the clock carries on."""
    with SndDriver(options={"formats": "s16+s32"}) as d:
        d.start()
        assert d.set_params(0, buffer_bytes=48000 * 8, period_bytes=48000, channels=2,
                            fmt=PcmFormat.S32) == Status.OK  # 8-byte frames: 6000 frames = 125 ms
        assert d.pcm(PREP, 0) == Status.OK and d.pcm(START, 0) == Status.OK
        d.add_tx(0, bytes(48000))
        short = d.add_tx(0, bytes(24000))
        d.add_tx(0, bytes(48000))
        refused = d.kick(QueueIndex.TX)
        assert [e.id for e in refused] == [short]
        assert d.io_status(QueueIndex.TX, refused[0]) == (Status.IO_ERR, 0)
        d.advance(0.124)
        assert d.collect(QueueIndex.TX) == []
        d.advance(0.002)
        assert len(d.collect(QueueIndex.TX)) == 1
        d.advance(0.122)  # next tick at 0.250 s after START
        assert d.collect(QueueIndex.TX) == []
        d.advance(0.003)
        assert len(d.collect(QueueIndex.TX)) == 1


def test_capture_returns_silence_paced(drv):
    assert drv.set_params(1, fmt=PcmFormat.S16) == Status.OK and drv.pcm(PREP, 1) == Status.OK
    heads = [drv.add_rx(1, PERIOD, in_cuts=[100, PERIOD]) for _ in range(2)]
    assert drv.kick(QueueIndex.RX) == []
    assert drv.pcm(START, 1) == Status.OK
    assert drv.collect(QueueIndex.RX) == []
    drv.advance(2 * PERIOD_S + 1e-9)
    done = drv.collect(QueueIndex.RX)
    assert [e.id for e in done] == heads
    for entry in done:
        assert entry.len == PERIOD + 8
        assert entry.written[:PERIOD] == bytes(PERIOD)
        assert drv.io_status(QueueIndex.RX, entry) == (Status.OK, 0)


def test_capture_silence_of_unsigned_format():
    with SndDriver(options={"formats": "u8+s16"}) as d:
        d.start()
        assert d.set_params(1, buffer_bytes=4096, period_bytes=1024, channels=2, fmt=PcmFormat.U8) == Status.OK
        assert d.pcm(PREP, 1) == Status.OK and d.pcm(START, 1) == Status.OK
        d.add_rx(1, 1024)
        d.kick(QueueIndex.RX)
        d.advance(1.0)
        [entry] = d.collect(QueueIndex.RX)
        assert entry.written[:1024] == b"\x80" * 1024


def test_release_returns_pending_io_before_its_response(drv):
    for code in (SET, PREP, START, STOP):
        assert send(drv, code) == Status.OK
    heads = [drv.add_tx(0, bytes(4096)) for _ in range(4)]
    assert drv.kick(QueueIndex.TX) == []  # stopped: held
    order: list[int] = []
    drv.ctx.signal_used = order.append
    assert send(drv, REL) == Status.OK
    done = drv.collect(QueueIndex.TX)
    assert [e.id for e in done] == heads and all(e.len == 8 for e in done)
    assert all(drv.io_status(QueueIndex.TX, e)[0] == Status.OK for e in done)
    assert order.index(QueueIndex.TX) < order.index(QueueIndex.CONTROL)
    assert not drv.device.dataplane.io[0].held


def test_release_returns_pending_capture_with_no_frames(drv):
    assert drv.set_params(1) == Status.OK and drv.pcm(PREP, 1) == Status.OK
    drv.add_rx(1, 4096)
    assert drv.kick(QueueIndex.RX) == []
    assert drv.pcm(REL, 1) == Status.OK
    [entry] = drv.collect(QueueIndex.RX)
    assert entry.len == 8
    assert drv.io_status(QueueIndex.RX, entry) == (Status.OK, 0)


@pytest.mark.parametrize("path", [[], [SET], [SET, PREP, REL]], ids=["initial", "set_params", "released"])
def test_io_for_unprepared_stream_is_returned_with_io_err(drv, path):
    for code in path:
        assert send(drv, code) == Status.OK
    drv.add_tx(0, bytes(64))
    [entry] = drv.kick(QueueIndex.TX)
    assert entry.len == 8 and drv.io_status(QueueIndex.TX, entry) == (Status.IO_ERR, 0)


@pytest.mark.parametrize("queue,stream_id,reason", [
    (QueueIndex.TX, 7, "stream id out of range"),
    (QueueIndex.TX, 1, "capture stream on the tx queue"),
    (QueueIndex.RX, 0, "playback stream on the rx queue"),
])
def test_io_messages_for_the_wrong_stream_get_bad_msg(drv, queue, stream_id, reason):
    if queue == QueueIndex.TX:
        drv.add_tx(stream_id, bytes(64))
    else:
        drv.add_rx(stream_id, 64)
    [entry] = drv.kick(queue)
    assert drv.io_status(queue, entry)[0] == Status.BAD_MSG, reason


def test_malformed_io_messages(drv):
    tx = drv.queues[QueueIndex.TX]
    tx.add([b"\x00\x00"], [8])  # header cut short, nothing else readable
    tx.add([bytes(8)], [4])  # no room for the status
    entries = drv.kick(QueueIndex.TX)
    assert [e.len for e in entries] == [8, 0]
    assert int.from_bytes(entries[0].written[:4], "little") == Status.BAD_MSG


def test_reset_drops_everything(drv):
    for code in (SET, PREP):
        assert send(drv, code) == Status.OK
    drv.add_tx(0, bytes(4096))
    assert drv.kick(QueueIndex.TX) == []
    drv.device.reset()
    assert all(s.state == StreamState.SET_PARAMS and s.params is None for s in drv.device.streams)
    assert drv.device.events.buffers == type(drv.device.events.buffers)()
    assert drv.collect(QueueIndex.TX) == []  # nothing was completed
    drv.device.queue_notify(QueueIndex.CONTROL)  # not active: ignored, no crash
    # A new driver instance probes again from scratch.
    with SndDriver(drv.device) as again:
        again.start()
        assert again.items(RequestCode.PCM_INFO, spec.PcmInfo, 2)[0].channels_max == 8
        assert again.pcm(START, 0) == Status.BAD_MSG
        assert again.set_params(0) == Status.OK


@settings(max_examples=30, deadline=None)
@given(tx_cuts=st.lists(st.integers(1, 4099), max_size=8), rx_cuts=st.lists(st.integers(1, 4103), max_size=8),
       indirect=st.booleans())
def test_io_messages_split_anywhere(tx_cuts, rx_cuts, indirect):
    with SndDriver() as d:
        d.start()
        for stream_id in (0, 1):
            assert d.set_params(stream_id) == Status.OK and d.pcm(PREP, stream_id) == Status.OK
            assert d.pcm(START, stream_id) == Status.OK
        head = d.add_tx(0, bytes(range(256)) * 16, cuts=tx_cuts, indirect=indirect)
        d.add_rx(1, 4096, in_cuts=rx_cuts or [0], indirect=indirect)  # [0]: one writable descriptor
        d.device.queue_notify(QueueIndex.TX)
        d.device.queue_notify(QueueIndex.RX)
        d.advance(1.0)
        [entry] = d.collect(QueueIndex.TX)
        assert entry.id == head and entry.len == 8 and d.io_status(QueueIndex.TX, entry)[0] == Status.OK
        [entry] = d.collect(QueueIndex.RX)
        assert entry.len == 4096 + 8 and entry.written[:4096] == bytes(4096)
        assert d.io_status(QueueIndex.RX, entry)[0] == Status.OK


def test_reset_and_release_stop_the_clock(drv):
    for code in (SET, PREP, START):
        assert send(drv, code) == Status.OK
    for _ in range(3):
        drv.add_tx(0, bytes(PERIOD))
    drv.kick(QueueIndex.TX)
    assert drv.loop.pending_timers() == 1
    drv.device.reset()
    assert drv.loop.pending_timers() == 0
    drv.advance(1.0)
    assert drv.collect(QueueIndex.TX) == []

    with SndDriver() as d:
        d.start()
        for code in (SET, PREP, START):
            assert send(d, code) == Status.OK
        d.add_tx(0, bytes(PERIOD))
        d.kick(QueueIndex.TX)
        assert send(d, STOP) == Status.OK and send(d, REL) == Status.OK
        assert len(d.collect(QueueIndex.TX)) == 1  # returned by RELEASE
        assert d.loop.pending_timers() == 0
