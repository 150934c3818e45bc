"""Every control request code, and malformed requests each getting the right status."""

from __future__ import annotations

import logging
import struct

import pytest

from pyvmm_snd import spec
from pyvmm_snd.control import MAX_REQUEST_BYTES
from pyvmm_snd.spec import EventCode, QueueIndex, RequestCode, Status
from pyvmm_snd.stream import StreamState
from pyvmm_snd.topology import VOLUME_MAX
from snd_driver import SndDriver, status_of

VOLUME, SWITCH, CAPTURE_VOLUME, CAPTURE_SWITCH = range(4)


@pytest.fixture
def drv():
    with SndDriver() as d:
        yield d.start()


# -- malformed in general ----------------------------------------------------------------------------

@pytest.mark.parametrize("request_bytes,why", [
    (b"", "no readable bytes"),
    (b"\x00\x01", "shorter than the header"),
    ((0x0999).to_bytes(4, "little"), "unknown code"),
    ((EventCode.JACK_CONNECTED).to_bytes(4, "little") + bytes(4), "an event code is not a request"),
    ((Status.OK).to_bytes(4, "little"), "a status code is not a request"),
])
def test_malformed_requests_get_bad_msg(drv, request_bytes, why, caplog):
    caplog.set_level(logging.WARNING, logger="pyvmm_snd")
    entry = drv.linux_send(request_bytes, 4) if request_bytes else drv.send(b"", 4)
    assert entry.len == 4 and status_of(entry) == Status.BAD_MSG, why
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "BAD_MSG" in warnings[0].getMessage()


def test_no_room_for_the_status_leaves_the_request_unanswered_and_undone(drv):
    entry = drv.send(bytes(spec.PcmHdr(code=RequestCode.PCM_PREPARE, stream_id=0)), 2)
    assert entry.len == 0
    assert drv.device.streams[0].state == StreamState.SET_PARAMS


def test_oversized_request_is_rejected_without_acting(drv):
    request = bytes(spec.PcmHdr(code=RequestCode.PCM_PREPARE, stream_id=0)) + bytes(MAX_REQUEST_BYTES)
    entry = drv.send(request, 4, out_cuts=range(4096, len(request), 4096))
    assert status_of(entry) == Status.BAD_MSG
    assert drv.device.streams[0].state == StreamState.SET_PARAMS


def test_each_request_logged_at_debug(drv, caplog):
    caplog.set_level(logging.DEBUG, logger="pyvmm_snd.control")
    assert drv.set_params(0) == Status.OK
    lines = [r.getMessage() for r in caplog.records if r.name == "pyvmm_snd.control" and r.levelno == logging.DEBUG]
    assert lines == ["PCM_SET_PARAMS stream=0 buffer=32768 period=4096 ch=2 fmt=S16 rate=48000 features=none"
                     " -> OK (0 payload bytes)"]


# -- item queries --------------------------------------------------------------------------------------

QUERIES = [(RequestCode.JACK_INFO, 2, 24), (RequestCode.PCM_INFO, 2, 32), (RequestCode.CHMAP_INFO, 16, 24),
           (RequestCode.CTL_INFO, 4, 96)]


@pytest.mark.parametrize("code,items,size", QUERIES, ids=[q[0].name for q in QUERIES])
def test_query_rules(drv, code, items, size):
    ok = drv.query(code, 0, items, size)
    assert status_of(ok) == Status.OK and ok.len == 4 + items * size
    assert status_of(drv.query(code, 1, items - 1, size)) == Status.OK
    empty = drv.query(code, 0, 0, size)
    assert status_of(empty) == Status.OK and empty.len == 4
    assert status_of(drv.query(code, 0, items + 1, size)) == Status.BAD_MSG  # beyond the items
    assert status_of(drv.query(code, items, 1, size)) == Status.BAD_MSG
    assert status_of(drv.query(code, 0xFFFFFFFF, 2, size)) == Status.BAD_MSG  # no 32-bit wrap-around
    assert status_of(drv.query(code, 1, 0xFFFFFFFF, size, room=64)) == Status.BAD_MSG
    assert status_of(drv.query(code, 0, items, size, room=items * size - 1)) == Status.BAD_MSG  # area too small
    assert status_of(drv.query(code, 0, 1, 0)) == Status.BAD_MSG  # size 0
    assert status_of(drv.query(code, 0, 1, 3)) == Status.BAD_MSG  # smaller than hda_fn_nid
    short = spec.QueryInfo(code=code, start_id=0, count=1, size=size)
    assert status_of(drv.linux_send(bytes(short)[:12], 4, extra_in=size)) == Status.BAD_MSG


def test_query_with_bigger_item_size_pads_with_zeros(drv):
    entry = drv.query(RequestCode.PCM_INFO, 0, 2, 40)
    assert status_of(entry) == Status.OK and entry.len == 4 + 80
    first = entry.written[4:44]
    assert first[:32] == bytes(drv.device.topology.streams[0].info()) and first[32:] == bytes(8)


def test_query_with_smaller_item_size_cuts_items(drv):
    """An older driver with a shorter struct gets the prefix it knows."""
    entry = drv.query(RequestCode.PCM_INFO, 0, 2, 27)
    assert status_of(entry) == Status.OK and entry.len == 4 + 54
    assert entry.written[4 + 27:4 + 54] == bytes(drv.device.topology.streams[1].info())[:27]


def test_jack_info_reflects_host_plug_state(drv):
    drv.device.set_jack(0, False)
    jacks = drv.items(RequestCode.JACK_INFO, spec.JackInfo, 2)
    assert (jacks[0].connected, jacks[1].connected) == (0, 1)


def test_jack_remap(drv):
    remap = spec.JackRemap(code=RequestCode.JACK_REMAP, jack_id=0, association=1, sequence=2)
    assert status_of(drv.linux_send(bytes(remap), 4)) == Status.NOT_SUPP  # jack does not offer REMAP
    remap.jack_id = 2
    assert status_of(drv.linux_send(bytes(remap), 4)) == Status.BAD_MSG
    assert status_of(drv.linux_send(bytes(remap)[:12], 4)) == Status.BAD_MSG


# -- control elements -------------------------------------------------------------------------------------

def test_ctl_read_initial_values(drv):
    status, value = drv.ctl_read(VOLUME)
    assert status == Status.OK and value.value.integer[0] == VOLUME_MAX
    status, value = drv.ctl_read(SWITCH)
    assert status == Status.OK and value.value.integer[0] == 1
    assert drv.ctl_read(4)[0] == Status.BAD_MSG
    assert status_of(drv.ctl(RequestCode.CTL_READ, VOLUME, in_size=4 + 511)) == Status.BAD_MSG


def test_ctl_write_then_read_and_notify(drv):
    assert drv.ctl_write(VOLUME, [64]) == Status.OK
    assert drv.ctl_read(VOLUME)[1].value.integer[0] == 64
    assert drv.device.controls.value(VOLUME) == [64]
    [event] = drv.events()
    ctl_event = spec.CtlEvent.from_buffer_copy(bytes(event))
    assert (ctl_event.code, ctl_event.control_id, ctl_event.mask) == (EventCode.CTL_NOTIFY, VOLUME, 1)
    assert drv.ctl_write(VOLUME, [64]) == Status.OK
    assert drv.events() == []  # unchanged value: no notification


@pytest.mark.parametrize("control,values", [
    (VOLUME, [VOLUME_MAX + 1]),
    (VOLUME, [-1]),
    (SWITCH, [2]),
    (CAPTURE_SWITCH, [0xFFFFFFFF]),
])
def test_ctl_write_out_of_range(drv, control, values):
    before = drv.device.controls.value(control)
    assert drv.ctl_write(control, values) == Status.BAD_MSG
    assert drv.device.controls.value(control) == before


def test_ctl_write_malformed(drv):
    short_value = bytes(spec.CtlValue())[:100]
    assert status_of(drv.ctl(RequestCode.CTL_WRITE, VOLUME, payload=short_value)) == Status.BAD_MSG
    assert status_of(drv.ctl(RequestCode.CTL_WRITE, 9, payload=bytes(spec.CtlValue()))) == Status.BAD_MSG
    assert status_of(drv.linux_send(bytes(spec.CtlHdr(code=RequestCode.CTL_WRITE))[:6], 4)) == Status.BAD_MSG


def test_ctl_tlv_read_gives_db_scale(drv):
    entry = drv.ctl(RequestCode.CTL_TLV_READ, VOLUME, in_size=4 + 64)
    assert status_of(entry) == Status.OK and entry.len == 4 + 16
    tlv_type, length, min_cdb, step = struct.unpack_from("<IIiI", entry.written, 4)
    assert (tlv_type, length) == (spec.ALSA_TLVT_DB_SCALE, 8)
    assert min_cdb == -6400 and step == 50 | spec.ALSA_TLV_DB_SCALE_MUTE
    assert min_cdb + VOLUME_MAX * 50 == 0  # top of the range is 0 dB


def test_ctl_tlv_read_truncates_to_the_buffer(drv):
    entry = drv.ctl(RequestCode.CTL_TLV_READ, VOLUME, in_size=4 + 12)
    assert status_of(entry) == Status.OK and entry.len == 16


def test_ctl_tlv_read_without_access(drv):
    assert status_of(drv.ctl(RequestCode.CTL_TLV_READ, SWITCH, in_size=4 + 64)) == Status.NOT_SUPP


@pytest.mark.parametrize("code", [RequestCode.CTL_TLV_WRITE, RequestCode.CTL_TLV_COMMAND], ids=lambda c: c.name)
def test_ctl_tlv_write_and_command(drv, code):
    tlv = bytes(spec.CtlTlv(type=1, length=8)) + bytes(8)
    assert status_of(drv.ctl(code, VOLUME, payload=tlv)) == Status.NOT_SUPP  # no TLV_WRITE/COMMAND access
    bad_length = bytes(spec.CtlTlv(type=1, length=12)) + bytes(8)
    assert status_of(drv.ctl(code, VOLUME, payload=bad_length)) == Status.BAD_MSG
    odd_length = bytes(spec.CtlTlv(type=1, length=6)) + bytes(8)
    assert status_of(drv.ctl(code, VOLUME, payload=odd_length)) == Status.BAD_MSG
    assert status_of(drv.ctl(code, VOLUME, payload=bytes(4))) == Status.BAD_MSG  # TLV header cut short
    assert status_of(drv.ctl(code, 77, payload=tlv)) == Status.BAD_MSG


def test_ctl_requests_need_the_feature():
    with SndDriver(features=0) as d:
        d.start()
        for code in (RequestCode.CTL_INFO, RequestCode.CTL_ENUM_ITEMS, RequestCode.CTL_READ, RequestCode.CTL_WRITE,
                     RequestCode.CTL_TLV_READ, RequestCode.CTL_TLV_WRITE, RequestCode.CTL_TLV_COMMAND):
            assert status_of(d.ctl(code, 0, in_size=4 + 512, payload=bytes(520))) == Status.NOT_SUPP, code.name


def test_host_side_control_change_notifies_the_guest(drv):
    drv.device.set_control(SWITCH, [0])
    [event] = drv.events()
    ctl_event = spec.CtlEvent.from_buffer_copy(bytes(event))
    assert (ctl_event.control_id, ctl_event.mask) == (SWITCH, 1 << spec.CtlEventMask.VALUE)
    assert drv.ctl_read(SWITCH)[1].value.integer[0] == 0
    with pytest.raises(ValueError):
        drv.device.set_control(SWITCH, [5])


def test_every_request_code_is_answered(drv):
    """Each code, with a plausible body, gets exactly one answer with a defined status."""
    for code in RequestCode:
        if code in (RequestCode.JACK_INFO, RequestCode.PCM_INFO, RequestCode.CHMAP_INFO, RequestCode.CTL_INFO):
            entry = drv.query(code, 0, 1, 128)
        elif code == RequestCode.PCM_SET_PARAMS:
            entry = drv.linux_send(bytes(spec.PcmSetParams(code=code, buffer_bytes=8192, period_bytes=4096,
                                                           channels=2, format=5, rate=7)), 4)
        elif code == RequestCode.JACK_REMAP:
            entry = drv.linux_send(bytes(spec.JackRemap(code=code)), 4)
        elif code.name.startswith("PCM_"):
            entry = drv.linux_send(bytes(spec.PcmHdr(code=code)), 4)
        else:
            entry = drv.ctl(code, 0, in_size=4 + 512, payload=bytes(spec.CtlTlv(length=4)) + bytes(512))
        assert status_of(entry) in set(Status), code.name
    assert drv.collect(QueueIndex.CONTROL) == []


def test_a_looping_guest_cannot_flood_the_log(drv, caplog):
    caplog.set_level(logging.DEBUG, logger="pyvmm_snd")
    for _ in range(60):
        drv.linux_send((0x0999).to_bytes(4, "little"), 4)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 5 and "rate-limited from now on" in warnings[-1].getMessage()  # pyvmm.guest_log
    assert sum("unknown request code" in r.getMessage() for r in caplog.records) == 60


def test_internal_error_is_answered_with_io_err(drv, monkeypatch, caplog):
    def broken(request, room):
        raise RuntimeError("simulated device bug")
    monkeypatch.setitem(drv.device.control_plane._handlers, RequestCode.PCM_PREPARE, broken)
    assert drv.pcm(RequestCode.PCM_PREPARE, 0) == Status.IO_ERR
    assert any("internal error" in r.getMessage() and r.exc_info for r in caplog.records)
    assert drv.pcm(RequestCode.PCM_START, 0) == Status.BAD_MSG  # the queue still works


def test_stream_gain_follows_volume_and_switch(drv):
    controls = drv.device.controls
    assert controls.stream_gain(0) == pytest.approx(1.0)
    assert drv.ctl_write(VOLUME, [VOLUME_MAX - 12]) == Status.OK  # -6 dB
    assert controls.stream_gain(0) == pytest.approx(10 ** (-6 / 20))
    assert controls.stream_gain(1) == pytest.approx(1.0)  # capture untouched
    assert drv.ctl_write(VOLUME, [0]) == Status.OK
    assert controls.stream_gain(0) == 0.0
    assert drv.ctl_write(VOLUME, [VOLUME_MAX]) == Status.OK and drv.ctl_write(SWITCH, [0]) == Status.OK
    assert controls.stream_gain(0) == 0.0
