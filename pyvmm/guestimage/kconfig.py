"""Kconfig fragments and the check that a merged ``.config`` holds what they asked for.

Kconfig silently drops a request whose dependencies are not met (``CPU_SUP_AMD=n`` does
nothing without ``PROCESSOR_SELECT``), so every requested value is verified after
``olddefconfig``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from pyvmm.errors import VmmError

_SET = re.compile(r"^(CONFIG_\w+)=(.*)$")
_UNSET = re.compile(r"^# (CONFIG_\w+) is not set$")


class KernelConfigError(VmmError):
    pass


@dataclass(frozen=True)
class ConfigMismatch:
    option: str
    requested: str
    actual: str  # "n" when the option is absent from .config

    def __str__(self) -> str:
        return f"{self.option}: requested {self.requested}, got {self.actual}"


def parse_config(text: str) -> dict[str, str]:
    """Options of a .config or fragment; "is not set" and "=n" both read as "n"."""
    values: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if m := _SET.match(line):
            values[m[1]] = m[2]
        elif m := _UNSET.match(line):
            values[m[1]] = "n"
    return values


def requested_options(fragments: list[Path]) -> dict[str, str]:
    """What the fragments ask for, later fragments overriding earlier ones."""
    values: dict[str, str] = {}
    for fragment in fragments:
        values.update(parse_config(fragment.read_text()))
    return values


def config_mismatches(requested: dict[str, str], actual: dict[str, str]) -> list[ConfigMismatch]:
    return [ConfigMismatch(option, want, actual.get(option, "n"))
            for option, want in requested.items() if actual.get(option, "n") != want]


def verify_config(fragments: list[Path], config: Path) -> None:
    """Raise :class:`KernelConfigError` naming every requested option that did not stick."""
    mismatches = config_mismatches(requested_options(fragments), parse_config(config.read_text()))
    if mismatches:
        listing = "; ".join(map(str, mismatches))
        raise KernelConfigError(
            f"kernel config: {len(mismatches)} requested option(s) did not stick "
            f"(missing dependencies?): {listing}")
