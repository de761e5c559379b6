"""The ``[hardware]`` tables of adapter "linux": the shipped pack file checks clean, and a bad
value is an error naming the file and the dotted field (the one schema, rust_core/src/config.rs)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from mbms.paths import data_dir

SHIPPED = data_dir() / "packs" / "linux_node1.toml"


def _check(tmp: Path, text: str) -> subprocess.CompletedProcess[str]:
    text = text.replace('extends = "example_pack.toml"', f'extends = "{data_dir() / "packs" / "example_pack.toml"}"')
    p = tmp / "linux.toml"
    p.write_text(text)
    return subprocess.run([sys.executable, "-m", "mbms", "node", "--config", str(p), "--system", "example_system",
                           "--check"], capture_output=True, text=True, timeout=60)


@pytest.mark.usefixtures("shipped_keys")
def test_shipped_linux_pack_checks_clean(tmp_path: Path) -> None:
    r = _check(tmp_path, SHIPPED.read_text())
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize("old,new,field", [
    ("cells_per_ic = 16", "cells_per_ic = 17", "hardware.afe.cells_per_ic"),
    ("temps_per_ic = 4", "temps_per_ic = 10", "hardware.afe.temps_per_ic"),
    ("spi_hz = 1000000", "spi_hz = 2000000", "hardware.afe.spi_hz"),
    ("dcto_code = 2", "dcto_code = 16", "hardware.afe.dcto_code"),
    ("pre_fb = 5", "pre_fb = 4", "hardware.contactors.neg_out"),
    ("current_sign = 1.0", "current_sign = 2.0", "hardware.current_sensor.current_sign"),
    ("min_kohm = 100.0", "min_kohm = 10.0", "hardware.insulation.min_kohm"),
    ('device = "emu:///tmp/mbms-devices/afe0.sock"', 'device = "spidev0.0"', "hardware.afe.device"),
    ("[hardware.afe]", "[hardware.afe_chain]", "hardware.afe_chain"),
    ("[hardware.contactors]", "[hardware.unused]", "hardware.unused"),
])
def test_bad_linux_hardware_values_name_their_field(tmp_path: Path, old: str, new: str, field: str) -> None:
    text = SHIPPED.read_text()
    assert old in text
    r = _check(tmp_path, text.replace(old, new, 1))
    assert r.returncode == 2 and f"{field}:" in r.stdout + r.stderr, r.stdout + r.stderr


def test_adapter_linux_needs_its_device_tables(tmp_path: Path) -> None:
    text = SHIPPED.read_text()
    cut = text[:text.index("[hardware.afe]")]
    r = _check(tmp_path, cut)
    out = r.stdout + r.stderr
    assert r.returncode == 2
    for t in ("afe", "sensor_can", "current_sensor", "contactors"):
        assert f"hardware.{t}:" in out, out
