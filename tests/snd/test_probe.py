"""The Linux probe sequence against the default device, checked field by field, and the same
answers whatever the descriptor layout of the request."""

from __future__ import annotations


import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyvmm_snd import spec
from pyvmm_snd.spec import ChannelPosition as Pos
from pyvmm_snd.spec import CtlAccess, CtlType, Direction, PcmFeature, PcmFormat, PcmRate, RequestCode, Status
from snd_driver import SndDriver, status_of

DEFAULT_FORMATS = spec.bits([PcmFormat.S16, PcmFormat.S24, PcmFormat.S32, PcmFormat.FLOAT])
DEFAULT_RATES = spec.bits(r for r in PcmRate if 8000 <= spec.RATE_HZ[r] <= 192000)


@pytest.fixture
def drv():
    with SndDriver() as d:
        yield d.start()


def linux_probe(d: SndDriver) -> dict:
    """What virtsnd_probe does after DRIVER_OK: config reads and one query per item kind."""
    cfg = d.config()
    found = {
        "jacks": d.items(RequestCode.JACK_INFO, spec.JackInfo, cfg.jacks),
        "streams": d.items(RequestCode.PCM_INFO, spec.PcmInfo, cfg.streams),
        "chmaps": d.items(RequestCode.CHMAP_INFO, spec.ChmapInfo, cfg.chmaps),
        "controls": [],
        "enum_items": {},
    }
    if d.features >> spec.F_CTLS & 1 and cfg.controls:
        found["controls"] = d.items(RequestCode.CTL_INFO, spec.CtlInfo, cfg.controls)
        for cid, info in enumerate(found["controls"]):
            if info.type == CtlType.ENUMERATED:
                entry = d.ctl(RequestCode.CTL_ENUM_ITEMS, cid, in_size=4 + 64 * info.value.enumerated.items)
                assert status_of(entry) == Status.OK
                found["enum_items"][cid] = entry.written[4:]
    return found


def linux_validate(found: dict) -> None:
    """The checks of virtsnd_pcm_build_hw, virtsnd_chmap_*, virtsnd_kctl_validate_info."""
    for info in found["streams"]:
        assert 1 <= info.channels_min <= info.channels_max
        assert info.formats and info.formats & ~((1 << len(PcmFormat)) - 1) == 0
        assert info.rates & spec.bits(spec.LINUX_MAPPED_RATES)
        assert info.direction in (0, 1)
        assert bytes(info.padding) == bytes(5)
    for info in found["jacks"]:
        assert info.features & ~spec.bits(spec.JackFeature) == 0 and bytes(info.padding) == bytes(7)
    for info in found["chmaps"]:
        assert info.direction in (0, 1) and info.channels <= spec.CHMAP_MAX_SIZE
        assert all(p < 37 for p in info.positions[:info.channels])
    names = set()
    for info in found["controls"]:
        ctype = CtlType(info.type)
        assert 1 <= info.count <= spec.CTL_MAX_COUNT[ctype]
        assert info.name and len(info.name) < spec.CTL_NAME_SIZE
        assert (info.name, info.index) not in names
        names.add((info.name, info.index))
        spec.decode_ctl_role(info.role)
        assert info.access & ~spec.bits(CtlAccess) == 0


def test_config_space(drv):
    cfg = drv.config()
    assert (cfg.jacks, cfg.streams, cfg.chmaps, cfg.controls) == (2, 2, 16, 4)
    assert drv.device.read_config(12, 4) == (4).to_bytes(4, "little")
    assert drv.device.read_config(14, 4) == bytes(4)  # past the end reads as zero
    drv.device.write_config(0, b"\xff" * 16)
    assert drv.config().streams == 2


def test_probe_default_device_field_by_field(drv):
    found = linux_probe(drv)
    linux_validate(found)

    playback, capture = found["streams"]
    for info, direction in ((playback, Direction.OUTPUT), (capture, Direction.INPUT)):
        assert info.hda_fn_nid == 0
        assert info.features == 1 << PcmFeature.EVT_XRUNS
        assert info.formats == DEFAULT_FORMATS
        assert info.rates == DEFAULT_RATES
        assert info.direction == direction
        assert (info.channels_min, info.channels_max) == (1, 8)

    headphone, mic = found["jacks"]
    assert (headphone.hda_reg_defconf >> 20) & 0xF == 0x2  # HDA default device: HP out
    assert (mic.hda_reg_defconf >> 20) & 0xF == 0xA  # mic in
    assert headphone.hda_reg_defconf >> 30 == 0 and mic.hda_reg_defconf >> 30 == 0  # port: jack
    assert headphone.hda_reg_caps & (1 << 2 | 1 << 3 | 1 << 4) == 0b11100  # presence, HP drive, output
    assert mic.hda_reg_caps & (1 << 2 | 1 << 5) == 0b100100  # presence, input
    assert headphone.connected == 1 and mic.connected == 1 and headphone.features == 0

    chmaps = found["chmaps"]
    assert [c.direction for c in chmaps] == [0] * 8 + [1] * 8
    assert [c.channels for c in chmaps] == list(range(1, 9)) * 2
    assert list(chmaps[0].positions[:1]) == [Pos.MONO]
    assert list(chmaps[1].positions[:2]) == [Pos.FL, Pos.FR]
    assert list(chmaps[5].positions[:6]) == [Pos.FL, Pos.FR, Pos.RL, Pos.RR, Pos.FC, Pos.LFE]
    assert list(chmaps[7].positions[:8]) == [Pos.FL, Pos.FR, Pos.RL, Pos.RR, Pos.FC, Pos.LFE, Pos.SL, Pos.SR]
    assert bytes(chmaps[1].positions[2:]) == bytes(16)

    volume, switch, cvolume, cswitch = found["controls"]
    assert volume.name == b"PCM Playback Volume" and volume.index == 0
    assert volume.type == CtlType.INTEGER and volume.count == 1
    assert (volume.value.integer.min, volume.value.integer.max, volume.value.integer.step) == (0, 128, 1)
    assert volume.access == spec.bits([CtlAccess.READ, CtlAccess.WRITE, CtlAccess.TLV_READ])
    assert volume.role == spec.encode_ctl_role(spec.CtlRole.VOLUME, Direction.OUTPUT)
    assert switch.name == b"PCM Playback Switch" and switch.type == CtlType.BOOLEAN
    assert switch.role == spec.encode_ctl_role(spec.CtlRole.MUTE, Direction.OUTPUT)
    assert cvolume.name == b"Capture Volume" and cvolume.role == spec.encode_ctl_role(spec.CtlRole.VOLUME,
                                                                                        Direction.INPUT)
    assert cswitch.name == b"Capture Switch"
    assert found["enum_items"] == {}


def test_probe_without_ctls_negotiated():
    with SndDriver(features=0) as d:
        d.start()
        found = linux_probe(d)
        linux_validate(found)
        assert found["controls"] == []
        assert status_of(d.query(RequestCode.CTL_INFO, 0, 4, 96)) == Status.NOT_SUPP


def test_probe_with_enumerated_control():
    import dataclasses

    from pyvmm_snd.device import SoundDevice
    from pyvmm_snd.topology import ControlConfig, from_options
    mode = ControlConfig(name="Mode", type=CtlType.ENUMERATED, access=spec.bits([CtlAccess.READ, CtlAccess.WRITE]),
                         items=("Normal", "Loud", "Quiet"))
    top = from_options({})
    device = SoundDevice.from_topology(dataclasses.replace(top, controls=top.controls + (mode,)))
    with SndDriver(device) as d:
        d.start()
        infos = d.items(RequestCode.CTL_INFO, spec.CtlInfo, 5)
        assert infos[4].value.enumerated.items == 3
        entry = d.ctl(RequestCode.CTL_ENUM_ITEMS, 4, in_size=4 + 3 * 64)
        assert status_of(entry) == Status.OK and entry.len == 4 + 3 * 64
        names = [entry.written[4 + 64 * i:4 + 64 * (i + 1)].rstrip(b"\0") for i in range(3)]
        assert names == [b"Normal", b"Loud", b"Quiet"]
        assert status_of(d.ctl(RequestCode.CTL_ENUM_ITEMS, 4, in_size=4 + 2 * 64)) == Status.BAD_MSG
        assert status_of(d.ctl(RequestCode.CTL_ENUM_ITEMS, 0, in_size=4 + 3 * 64)) == Status.BAD_MSG
        assert d.ctl_write(4, [2]) == Status.OK
        assert d.ctl_read(4)[1].value.enumerated[0] == 2
        assert d.ctl_write(4, [3]) == Status.BAD_MSG


# -- descriptor layouts ----------------------------------------------------------------------------

def _pcm_info_request() -> bytes:
    return bytes(spec.QueryInfo(code=RequestCode.PCM_INFO, start_id=0, count=2, size=32))


def _reference_answer() -> bytes:
    with SndDriver() as d:
        d.start()
        return d.send(_pcm_info_request(), 4 + 64).written


@pytest.mark.parametrize("indirect", [False, True], ids=["direct", "indirect"])
@pytest.mark.parametrize("out_cuts,in_cuts", [
    ((), ()),                              # 1 + 1 descriptors
    ((), (4,)),                            # Linux: request | header, items
    ((8,), (4,)),                          # 2 + 2
    ((3, 9), (2, 37)),                     # 3 + 3, cuts inside fields
    (tuple(range(1, 16)), tuple(range(1, 48))),  # N: one byte per descriptor, 16 + 48 = 64 descriptors
])
def test_pcm_info_any_descriptor_layout(indirect, out_cuts, in_cuts):
    expected = _reference_answer()
    with SndDriver() as d:
        d.start()
        entry = d.send(_pcm_info_request(), 4 + 64, out_cuts, in_cuts, indirect=indirect)
        assert entry.len == 68 and entry.written == expected
        assert status_of(entry) == Status.OK


@settings(max_examples=40, deadline=None)
@given(out_cuts=st.lists(st.integers(1, 23), max_size=6), in_cuts=st.lists(st.integers(1, 3), max_size=3),
       indirect=st.booleans())
def test_set_params_split_anywhere(out_cuts, in_cuts, indirect):
    req = spec.PcmSetParams(code=RequestCode.PCM_SET_PARAMS, stream_id=0, buffer_bytes=32768, period_bytes=4096,
                            channels=2, format=PcmFormat.S16, rate=PcmRate.RATE_48000)
    with SndDriver() as d:
        d.start()
        entry = d.send(bytes(req), 4, out_cuts, in_cuts, indirect=indirect)
        assert entry.len == 4 and status_of(entry) == Status.OK
        params = d.device.streams[0].params
        assert (params.buffer_bytes, params.period_bytes, params.channels) == (32768, 4096, 2)


@settings(max_examples=30, deadline=None)
@given(start=st.integers(0, 15), count=st.integers(0, 16), extra=st.integers(0, 40), size=st.sampled_from([24, 16, 32]))
def test_chmap_info_ranges(start, count, extra, size):
    with SndDriver() as d:
        d.start()
        entry = d.query(RequestCode.CHMAP_INFO, start, count, size, room=count * size + extra)
        if start + count > 16:
            assert status_of(entry) == Status.BAD_MSG and entry.len == 4
            return
        assert status_of(entry) == Status.OK and entry.len == 4 + count * size
        full = [bytes(c.info()) for c in d.device.topology.chmaps]
        for i in range(count):
            item = entry.written[4 + i * size:4 + (i + 1) * size]
            assert item == (full[start + i] + bytes(8))[:size]
