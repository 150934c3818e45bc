"""Decode ACPI tables with Debian's iasl (acpica-tools, installed by scripts/setup)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest


def iasl() -> str:
    path = shutil.which("iasl")
    if path is None:
        pytest.fail("iasl is not installed: run ./scripts/setup (Debian package acpica-tools)")
    return path


def disassemble(table: bytes, work: Path, name: str) -> str:
    """``iasl -d`` of one table; returns the .dsl text (fails the test if iasl complains)."""
    work.mkdir(parents=True, exist_ok=True)
    (work / f"{name}.dat").write_bytes(table)
    result = subprocess.run([iasl(), "-d", f"{name}.dat"], cwd=work, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    return (work / f"{name}.dsl").read_text()


def compile_asl(dsl: str, work: Path, name: str) -> bytes:
    """``iasl`` compiles ASL text back to a table (the round trip check)."""
    work.mkdir(parents=True, exist_ok=True)
    (work / f"{name}.asl").write_text(dsl)
    result = subprocess.run([iasl(), "-p", name, f"{name}.asl"], cwd=work, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    return (work / f"{name}.aml").read_bytes()
