"""End to end, non-default cards: what the device options ask for is what the guest's ALSA shows.

One QEMU TCG boot (2 vCPUs) per topology, a few seconds each. The Linux driver makes one PCM
device per ``hda_fn_nid`` and one substream per stream of each direction in it; pyvmm gives
every stream nid 0, so N playback streams are N subdevices of PCM device 0.
"""

from __future__ import annotations

import re

import pytest

from snd_checks import (COMMAND_TIMEOUT, BackendLog, backend_trouble, booted, dmesg_trouble,
                        dump_hw_params)

pytestmark = pytest.mark.qemu

# (device options, ALSA's FORMAT, CHANNELS and RATE for them)
RESTRICTED_CARDS = {
    "s16-stereo-48k": ({"formats": "s16", "channels": "2", "rates": "48000"}, "S16_LE", "2", "48000"),
    "two-formats-mono-stereo-44k1-48k": ({"formats": "s32+s16", "channels": "1-2", "rates": "44100+48000"},
                                         "S16_LE S32_LE", "[1 2]", "[44100 48000]"),
}


@pytest.mark.parametrize("card", RESTRICTED_CARDS)
def test_restricted_card_shows_exactly_its_options(card):
    options, formats, channels, rates = RESTRICTED_CARDS[card]
    with booted({**options, "backend": "null"}) as guest:
        dumps = {tool: dump_hw_params(guest, tool) for tool in ("aplay", "arecord")}
        refused = guest.session.run("aplay -D hw:0,0 -d 1 -f FLOAT_LE -r 48000 -c 2 -t raw /dev/zero",
                                    timeout=COMMAND_TIMEOUT)
        trouble = dmesg_trouble(guest)
        log = guest.backend_log.read_text()
    for tool, params in dumps.items():
        assert (params["FORMAT"], params["CHANNELS"], params["RATE"]) == (formats, channels, rates), (tool, params)
    assert refused.status != 0 and "Sample format non available" in refused.output, refused.output
    assert not trouble, "\n".join(trouble)
    assert not backend_trouble(log), log


def test_two_playback_streams_are_two_subdevices():
    """Both playback streams are usable at once, each reaching its own device stream."""
    with booted({"playback": "2", "capture": "1", "backend": "null"}) as guest:
        playback = guest.session.check("aplay -l", timeout=COMMAND_TIMEOUT)
        capture = guest.session.check("arecord -l", timeout=COMMAND_TIMEOUT)
        substreams = guest.session.check("ls /proc/asound/card0/pcm0p /proc/asound/card0", timeout=COMMAND_TIMEOUT)
        controls = guest.session.check("amixer -c 0 controls", timeout=COMMAND_TIMEOUT)
        log = BackendLog(guest)
        log.start()
        both = guest.session.run(
            "aplay -q -D hw:0,0,0 -d 1 -f S16_LE -r 48000 -c 2 -t raw /dev/zero & first=$!; "
            "aplay -q -D hw:0,0,1 -d 1 -f S32_LE -r 44100 -c 1 -t raw /dev/zero; second=$?; "
            "wait $first; echo \"status $? $second\"", timeout=COMMAND_TIMEOUT)
        streams_log = log.since()
        log.start()
        guest.session.check("amixer -c 0 cset name='PCM Playback Volume',index=1 9", timeout=COMMAND_TIMEOUT)
        mixer_log = log.since()
        trouble = dmesg_trouble(guest)
        full_log = guest.backend_log.read_text()

    assert re.search(r"^card 0: .*device 0: .*\n\s+Subdevices: 2/2\n\s+Subdevice #0: .*\n\s+Subdevice #1: ",
                     playback, re.M), playback
    assert len(re.findall(r"^card 0: ", playback, re.M)) == 1, playback
    assert re.search(r"^card 0: .*device 0: .*\n\s+Subdevices: 1/1$", capture, re.M), capture
    assert substreams.split().count("sub0") == 1 and "sub1" in substreams.split(), substreams
    assert "pcm1p" not in substreams, substreams
    assert re.search(r"name='PCM Playback Volume'$", controls, re.M), controls
    assert re.search(r"name='PCM Playback Volume',index=1$", controls, re.M), controls

    assert "status 0 0" in both.output, both.output
    assert re.search(r"stream 0: 2ch S16 48000Hz", streams_log), streams_log
    assert re.search(r"stream 1: 1ch S32 44100Hz", streams_log), streams_log
    assert re.search(r"control \d+ 'PCM Playback Volume' \(index 1\) = \[9\]", mixer_log), mixer_log
    assert not trouble, "\n".join(trouble)
    assert not backend_trouble(full_log), full_log
