"""Option parsing (QEMU-style key=value strings), validation errors, and the device as a plugin."""

from __future__ import annotations

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from pyvmm.errors import VmmError
from pyvmm_snd import spec, topology
from pyvmm_snd.device import SoundDevice
from pyvmm_snd.spec import Direction, PcmFormat, PcmRate, RequestCode, Status
from snd_driver import SndDriver


def test_defaults():
    top = topology.from_options({})
    assert [s.direction for s in top.streams] == [Direction.OUTPUT, Direction.INPUT]
    for s in top.streams:
        assert (s.channels_min, s.channels_max) == (1, 8)
        assert s.formats == {PcmFormat.S16, PcmFormat.S24, PcmFormat.S32, PcmFormat.FLOAT}
        assert min(spec.RATE_HZ[r] for r in s.rates) == 8000 and max(spec.RATE_HZ[r] for r in s.rates) == 192000
        assert PcmRate.RATE_5512 not in s.rates and PcmRate.RATE_384000 not in s.rates
    assert len(top.jacks) == 2 and len(top.chmaps) == 16 and len(top.controls) == 4
    assert top.backend == "null"


def test_options_shape_the_card():
    top = topology.from_options({"playback": "2", "capture": "0", "channels": "2", "formats": "s16+u8",
                                 "rates": "44100+48000", "jacks": "off", "chmaps": "on", "controls": "off",
                                 "xruns": "off", "backend": "wav", "backend.path": "/tmp/x.wav"})
    assert len(top.streams) == 2 and all(s.direction == Direction.OUTPUT for s in top.streams)
    assert top.streams[0].formats == {PcmFormat.S16, PcmFormat.U8}
    assert top.streams[0].rates == {PcmRate.RATE_44100, PcmRate.RATE_48000}
    assert top.streams[0].features == 0
    assert top.jacks == () and top.controls == ()
    assert [c.positions for c in top.chmaps] == [(spec.ChannelPosition.FL, spec.ChannelPosition.FR)]
    assert top.backend == "wav" and top.backend_options == {"path": "/tmp/x.wav"}
    device = SoundDevice({"playback": "2", "capture": "0", "controls": "off", "backend": "wav"})
    assert device.device_features() == 0 and device.backend == "wav"
    assert SoundDevice({}).device_features() == 1 << spec.F_CTLS


def test_two_streams_per_direction_get_indexed_controls():
    top = topology.from_options({"playback": "2", "capture": "2"})
    names = [(c.name, c.index, c.stream_id) for c in top.controls]
    assert ("PCM Playback Volume", 1, 1) in names and ("Capture Switch", 1, 3) in names
    assert len({(n, i) for n, i, _ in names}) == len(names)


@pytest.mark.parametrize("options,message", [
    ({"bogus": "1"}, "unknown option 'bogus'"),
    ({"playback": "x"}, "playback='x' is not a number"),
    ({"capture": "-1"}, "capture='-1' is not a number"),
    ({"playback": "17"}, "exceeds 16"),
    ({"playback": "0", "capture": "0"}, "without any stream"),
    ({"channels": "0"}, "1 <= MIN <= MAX <= 18"),
    ({"channels": "4-2"}, "1 <= MIN <= MAX <= 18"),
    ({"channels": "1-19"}, "1 <= MIN <= MAX <= 18"),
    ({"channels": "two"}, "not N or MIN-MAX"),
    ({"formats": "s16+mp3"}, "unknown sample format 'mp3'"),
    ({"formats": "+"}, "formats= is empty"),
    ({"rates": "44000"}, "rate '44000' in rates= is not a virtio rate"),
    ({"rates": "1-1000"}, "contains no virtio rate"),
    ({"rates": "384000"}, "no rate the Linux driver supports"),
    ({"rates": "12000+24000"}, "no rate the Linux driver supports"),
    ({"jacks": "maybe"}, "jacks='maybe' is not on/off"),
    ({"controls": ""}, "is not on/off"),
])
def test_option_errors_are_one_line(options, message):
    with pytest.raises(VmmError, match=message) as info:
        SoundDevice(options)
    assert "\n" not in str(info.value) and str(info.value).startswith("virtio-snd: ")


def test_validation_of_hand_built_topologies():
    top = topology.from_options({})
    import dataclasses
    bad_stream = dataclasses.replace(top.streams[0], channels_min=0)
    with pytest.raises(VmmError, match="invalid channel range"):
        SoundDevice.from_topology(dataclasses.replace(top, streams=(bad_stream,)))
    polling = dataclasses.replace(top.streams[0], features=1 << spec.PcmFeature.MSG_POLLING)
    with pytest.raises(VmmError, match="does not implement"):
        SoundDevice.from_topology(dataclasses.replace(top, streams=(polling,)))
    dup = top.controls + (top.controls[0],)
    with pytest.raises(VmmError, match="duplicate name/index"):
        SoundDevice.from_topology(dataclasses.replace(top, controls=dup))
    long_name = dataclasses.replace(top.controls[0], name="x" * 44)
    with pytest.raises(VmmError, match="ASCII characters"):
        SoundDevice.from_topology(dataclasses.replace(top, controls=(long_name,)))
    too_many = dataclasses.replace(top.controls[0], count=129)
    with pytest.raises(VmmError, match="count 129"):
        SoundDevice.from_topology(dataclasses.replace(top, controls=(too_many,)))
    enum_empty = dataclasses.replace(top.controls[0], type=spec.CtlType.ENUMERATED, items=())
    with pytest.raises(VmmError, match="enumerated items"):
        SoundDevice.from_topology(dataclasses.replace(top, controls=(enum_empty,)))
    chmap = topology.ChmapConfig(Direction.OUTPUT, (spec.ChannelPosition.FL,) * 19)
    with pytest.raises(VmmError, match="19 positions"):
        SoundDevice.from_topology(dataclasses.replace(top, chmaps=(chmap,)))


def test_describe_options_and_plugin_entry_point():
    text = SoundDevice.describe_options()
    for key in topology.OPTION_HELP:
        assert f"  {key} " in text
    from pyvmm import plugins
    assert plugins.device_class("virtio-snd") is SoundDevice
    assert "virtio-sound" in plugins.describe("virtio-snd")
    from pyvmm.config import DeviceSpec
    device = plugins.create_device(DeviceSpec.parse("virtio-snd,playback=1,capture=0"))
    assert isinstance(device, SoundDevice) and len(device.streams) == 1
    with pytest.raises(VmmError, match="unknown option"):
        plugins.create_device(DeviceSpec.parse("virtio-snd,volume=11"))


def test_device_identity():
    device = SoundDevice({})
    assert device.device_type == 25
    assert device.queue_max_sizes == (64, 64, 64, 64)


# -- what Linux would negotiate is accepted --------------------------------------------------------------

formats_st = st.sets(st.sampled_from([f.name.lower() for f in PcmFormat if f != PcmFormat.IMA_ADPCM]),
                     min_size=1, max_size=5)
rates_st = st.sets(st.sampled_from([hz for r, hz in spec.RATE_HZ.items() if r in spec.LINUX_MAPPED_RATES]),
                   min_size=1, max_size=4)


@settings(max_examples=40, deadline=None)
@given(formats=formats_st, rates=rates_st, cmin=st.integers(1, 8), extra=st.integers(0, 4), data=st.data())
def test_linux_hw_params_within_advertised_limits_are_accepted(formats, rates, cmin, extra, data):
    """Derive ALSA's limits from PCM_INFO as virtsnd_pcm_build_hw does, pick a configuration in
    them, and check the device accepts it."""
    options = {"formats": "+".join(sorted(formats)), "rates": "+".join(map(str, sorted(rates))),
               "channels": f"{cmin}-{cmin + extra}"}
    with SndDriver(options=options) as d:
        d.start()
        info = d.items(RequestCode.PCM_INFO, spec.PcmInfo, 2)[0]
        fmt = data.draw(st.sampled_from([f for f in PcmFormat if info.formats >> f & 1]))
        rate = data.draw(st.sampled_from([r for r in spec.LINUX_MAPPED_RATES if info.rates >> r & 1]))
        channels = data.draw(st.integers(info.channels_min, info.channels_max))
        frame = spec.SAMPLE_LAYOUTS[fmt].physical_width // 8 * channels
        period_frames = data.draw(st.integers(max(1, spec.RATE_HZ[rate] // 100), spec.RATE_HZ[rate] * 80 // 1000))
        periods = data.draw(st.integers(2, 16))
        # virtsnd_pcm_build_hw caps the buffer at 160 ms of the widest format, most channels, top rate
        widest = max(spec.SAMPLE_LAYOUTS[f].physical_width // 8 for f in PcmFormat if info.formats >> f & 1)
        top_rate = max(spec.RATE_HZ[r] for r in spec.LINUX_MAPPED_RATES if info.rates >> r & 1)
        linux_max = -(-widest * info.channels_max * 160 * top_rate // 1000 // 4096) * 4096
        assume(period_frames * frame * periods <= linux_max)
        status = d.set_params(0, buffer_bytes=period_frames * frame * periods, period_bytes=period_frames * frame,
                              channels=channels, fmt=fmt, rate=rate)
        assert status == Status.OK
