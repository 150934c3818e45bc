"""Wire structs and constants against the Linux UAPI header's layout, and the describe() one-liners."""

from __future__ import annotations

import ctypes

import pytest

from pyvmm_snd import spec
from pyvmm_snd.spec import PcmFormat, PcmRate, RequestCode, Status

# (struct, size, {field: offset}) as laid out by include/uapi/linux/virtio_snd.h on x86-64.
LAYOUTS = [
    (spec.Config, 16, {"jacks": 0, "streams": 4, "chmaps": 8, "controls": 12}),
    (spec.Hdr, 4, {"code": 0}),
    (spec.Event, 8, {"code": 0, "data": 4}),
    (spec.QueryInfo, 16, {"code": 0, "start_id": 4, "count": 8, "size": 12}),
    (spec.JackHdr, 8, {"jack_id": 4}),
    (spec.JackInfo, 24, {"hda_fn_nid": 0, "features": 4, "hda_reg_defconf": 8, "hda_reg_caps": 12,
                         "connected": 16, "padding": 17}),
    (spec.JackRemap, 16, {"jack_id": 4, "association": 8, "sequence": 12}),
    (spec.PcmHdr, 8, {"stream_id": 4}),
    (spec.PcmInfo, 32, {"features": 4, "formats": 8, "rates": 16, "direction": 24, "channels_min": 25,
                        "channels_max": 26, "padding": 27}),
    (spec.PcmSetParams, 24, {"stream_id": 4, "buffer_bytes": 8, "period_bytes": 12, "features": 16,
                             "channels": 20, "format": 21, "rate": 22, "padding": 23}),
    (spec.PcmXfer, 4, {"stream_id": 0}),
    (spec.PcmStatus, 8, {"status": 0, "latency_bytes": 4}),
    (spec.ChmapHdr, 8, {"chmap_id": 4}),
    (spec.ChmapInfo, 24, {"direction": 4, "channels": 5, "positions": 6}),
    (spec.CtlHdr, 8, {"control_id": 4}),
    (spec.CtlInfo, 96, {"role": 4, "type": 8, "access": 12, "count": 16, "index": 20, "name": 24, "value": 72}),
    (spec.CtlEnumItem, 64, {"item": 0}),
    (spec.CtlIec958, 176, {"status": 0, "subcode": 24, "pad": 171, "dig_subframe": 172}),
    (spec.CtlValue, 512, {"value": 0}),
    (spec.CtlTlv, 8, {"type": 0, "length": 4}),
    (spec.CtlEvent, 8, {"code": 0, "control_id": 4, "mask": 6}),
]


@pytest.mark.parametrize("struct_type,size,offsets", LAYOUTS, ids=[t.__name__ for t, _, _ in LAYOUTS])
def test_struct_layout_matches_kernel_header(struct_type, size, offsets):
    assert ctypes.sizeof(struct_type) == size
    for name, offset in offsets.items():
        assert getattr(struct_type, name).offset == offset, name


def test_ctl_info_union_members():
    assert spec.CtlInfoValue.integer.offset == spec.CtlInfoValue.integer64.offset == 0
    assert ctypes.sizeof(spec.CtlInfoValue) == 24
    info = spec.CtlInfo()
    info.value.integer64.max = 0x1122334455667788
    raw = bytes(info)
    assert raw[72 + 8:72 + 16] == (0x1122334455667788).to_bytes(8, "little")


def test_code_values_from_the_spec():
    assert RequestCode.JACK_INFO == 1 and RequestCode.JACK_REMAP == 2
    assert [c.value for c in RequestCode if 0x100 <= c < 0x200] == list(range(0x100, 0x106))
    assert RequestCode.CHMAP_INFO == 0x200
    assert [c.value for c in RequestCode if c >= 0x300] == list(range(0x300, 0x307))
    assert [s.value for s in Status] == [0x8000, 0x8001, 0x8002, 0x8003]
    assert spec.EventCode.CTL_NOTIFY == 0x1200 and spec.EventCode.PCM_XRUN == 0x1101
    assert len(spec.ChannelPosition) == 37 and spec.ChannelPosition.BRC == 36
    assert len(PcmFormat) == 25 and PcmFormat.IEC958_SUBFRAME == 24
    assert spec.DEVICE_ID == 25 and spec.F_CTLS == 0


def test_rates_index_hz_round_trip():
    assert spec.RATE_HZ[PcmRate.RATE_5512] == 5512
    assert spec.RATE_HZ[PcmRate.RATE_384000] == 384000
    assert spec.RATE_HZ[PcmRate.RATE_12000] == 12000 and PcmRate.RATE_12000 == 14
    assert spec.RATE_HZ[PcmRate.RATE_24000] == 24000 and PcmRate.RATE_24000 == 15
    for rate, hz in spec.RATE_HZ.items():
        assert spec.HZ_TO_RATE[hz] == rate
    assert PcmRate.RATE_384000 not in spec.LINUX_MAPPED_RATES
    assert PcmRate.RATE_5512 in spec.LINUX_MAPPED_RATES and PcmRate.RATE_192000 in spec.LINUX_MAPPED_RATES


@pytest.mark.parametrize("fmt,width,physical", [
    (PcmFormat.IMA_ADPCM, 4, 4), (PcmFormat.U8, 8, 8), (PcmFormat.S16, 16, 16), (PcmFormat.S18_3, 18, 24),
    (PcmFormat.U24_3, 24, 24), (PcmFormat.S20, 20, 32), (PcmFormat.S24, 24, 32), (PcmFormat.FLOAT, 32, 32),
    (PcmFormat.FLOAT64, 64, 64), (PcmFormat.DSD_U16, 16, 16), (PcmFormat.IEC958_SUBFRAME, 32, 32),
])
def test_sample_widths(fmt, width, physical):
    layout = spec.SAMPLE_LAYOUTS[fmt]
    assert (layout.width, layout.physical_width) == (width, physical)


def test_every_format_has_a_layout_and_silence_of_its_size():
    for fmt in PcmFormat:
        layout = spec.SAMPLE_LAYOUTS[fmt]
        assert len(layout.silence) == max(1, layout.physical_width // 8)
    assert spec.SAMPLE_LAYOUTS[PcmFormat.U8].silence == b"\x80"
    assert spec.SAMPLE_LAYOUTS[PcmFormat.U16].silence == b"\x00\x80"
    assert spec.SAMPLE_LAYOUTS[PcmFormat.U24].silence == b"\x00\x00\x80\x00"
    assert spec.SAMPLE_LAYOUTS[PcmFormat.S32].silence == bytes(4)


def test_ctl_role_encoding():
    role = spec.encode_ctl_role(spec.CtlRole.VOLUME, spec.Direction.INPUT)
    assert role == 3
    assert spec.decode_ctl_role(role) == (spec.CtlRole.VOLUME, spec.Direction.INPUT)
    assert spec.encode_ctl_role(spec.CtlRole.UNDEFINED, spec.Direction.INPUT) == 0
    with pytest.raises(ValueError):
        spec.decode_ctl_role(4 << 1)


def test_describe_set_params_with_response():
    req = spec.PcmSetParams(code=RequestCode.PCM_SET_PARAMS, stream_id=0, buffer_bytes=32768, period_bytes=4096,
                            channels=2, format=PcmFormat.S16, rate=PcmRate.RATE_48000)
    line = spec.describe(bytes(req), bytes(spec.Hdr(code=Status.OK)))
    assert line == ("PCM_SET_PARAMS stream=0 buffer=32768 period=4096 ch=2 fmt=S16 rate=48000 features=none"
                    " -> OK")


@pytest.mark.parametrize("request_bytes,expected", [
    (bytes(spec.QueryInfo(code=RequestCode.PCM_INFO, start_id=0, count=2, size=32)),
     "PCM_INFO start=0 count=2 size=32"),
    (bytes(spec.PcmHdr(code=RequestCode.PCM_START, stream_id=1)), "PCM_START stream=1"),
    (bytes(spec.CtlHdr(code=RequestCode.CTL_READ, control_id=3)), "CTL_READ control=3"),
    (bytes(spec.JackRemap(code=RequestCode.JACK_REMAP, jack_id=1, association=2, sequence=3)),
     "JACK_REMAP jack=1 association=2 sequence=3"),
    ((0x999).to_bytes(4, "little"), "unknown request 0x0999 (4 bytes)"),
    (b"\x01", "(short request, 1 bytes)"),
    ((0x101).to_bytes(4, "little") + bytes(4), "PCM_SET_PARAMS (short: 8 bytes)"),
])
def test_describe_requests(request_bytes, expected):
    assert spec.describe(request_bytes) == expected


def test_describe_events():
    assert spec.describe_event(bytes(spec.Event(code=spec.EventCode.JACK_CONNECTED, data=1))) == "JACK_CONNECTED jack=1"
    assert spec.describe_event(bytes(spec.Event(code=spec.EventCode.PCM_XRUN, data=0))) == "PCM_XRUN stream=0"
    ctl = spec.CtlEvent(code=spec.EventCode.CTL_NOTIFY, control_id=2, mask=0b101)
    assert spec.describe_event(bytes(ctl)) == "CTL_NOTIFY control=2 mask=VALUE+TLV"


def test_parse_rejects_short_data():
    with pytest.raises(ValueError, match="needs 24 bytes"):
        spec.parse(spec.PcmSetParams, bytes(23))
