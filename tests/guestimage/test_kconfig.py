"""Verification that a merged .config holds every value the fragments asked for."""

import pytest

from pyvmm.guestimage.kconfig import (KernelConfigError, config_mismatches, parse_config,
                                      requested_options, verify_config)
from pyvmm.guestimage.recipe import Recipe

DOT_CONFIG = """\
#
# Automatically generated file; DO NOT EDIT.
#
CONFIG_64BIT=y
CONFIG_NR_CPUS=8
CONFIG_CMDLINE=""
# CONFIG_MODULES is not set
CONFIG_CPU_SUP_AMD=y
CONFIG_SND_VIRTIO=y
"""


def test_parse_reads_values_and_not_set_lines():
    values = parse_config(DOT_CONFIG)
    assert values["CONFIG_64BIT"] == "y"
    assert values["CONFIG_NR_CPUS"] == "8"
    assert values["CONFIG_CMDLINE"] == '""'
    assert values["CONFIG_MODULES"] == "n"
    assert "CONFIG_VT" not in values


def test_mismatches_name_what_did_not_stick():
    requested = parse_config("CONFIG_64BIT=y\nCONFIG_CPU_SUP_AMD=n\nCONFIG_MODULES=n\n"
                             "CONFIG_VT=n\nCONFIG_SND_PCM_XRUN_DEBUG=y\nCONFIG_NR_CPUS=4\n")
    found = {m.option: (m.requested, m.actual) for m in config_mismatches(requested, parse_config(DOT_CONFIG))}
    assert found == {"CONFIG_CPU_SUP_AMD": ("n", "y"),          # set although "off" was asked
                     "CONFIG_SND_PCM_XRUN_DEBUG": ("y", "n"),   # absent: dependency missing
                     "CONFIG_NR_CPUS": ("4", "8")}


def test_later_fragments_override_earlier(tmp_path):
    first, second = tmp_path / "a.config", tmp_path / "b.config"
    first.write_text("CONFIG_X=y\nCONFIG_Y=y\n")
    second.write_text("# CONFIG_X is not set\n")
    assert requested_options([first, second]) == {"CONFIG_X": "n", "CONFIG_Y": "y"}


def test_verify_raises_with_every_offending_option(tmp_path):
    fragment, config = tmp_path / "frag.config", tmp_path / ".config"
    fragment.write_text("CONFIG_64BIT=y\nCONFIG_CPU_SUP_AMD=n\nCONFIG_SND_PCM_XRUN_DEBUG=y\n")
    config.write_text(DOT_CONFIG)
    with pytest.raises(KernelConfigError) as info:
        verify_config([fragment], config)
    message = str(info.value)
    assert "2 requested option(s)" in message
    assert "CONFIG_CPU_SUP_AMD: requested n, got y" in message
    assert "CONFIG_SND_PCM_XRUN_DEBUG: requested y, got n" in message
    fragment.write_text("CONFIG_64BIT=y\nCONFIG_VT=n\n")
    verify_config([fragment], config)  # all satisfied: no error


def test_recipe_fragments_ask_for_the_platform_essentials():
    requested = requested_options(Recipe.load().kernel_config_fragments(debug=False))
    for option in ("CONFIG_PVH", "CONFIG_SND_VIRTIO", "CONFIG_VIRTIO_MMIO", "CONFIG_FUTEX",
                   "CONFIG_DEVPORT", "CONFIG_BLK_DEV_INITRD"):
        assert requested[option] == "y", option
    for option in ("CONFIG_CPU_SUP_AMD", "CONFIG_X86_KERNEL_IBT", "CONFIG_LEGACY_PTYS", "CONFIG_MODULES"):
        assert requested[option] == "n", option
