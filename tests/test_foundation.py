"""The package, the CLI and the cell parameter sets load as a user would use them."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

import mbms
from mbms import _core
from mbms.errors import ConfigError
from mbms.paths import cell_file


def test_version_and_help_from_the_console() -> None:
    out = subprocess.run([sys.executable, "-m", "mbms", "--version"], capture_output=True, text=True)
    assert out.returncode == 0
    assert out.stdout.strip() == f"mbms {mbms.__version__}"
    out = subprocess.run([sys.executable, "-m", "mbms", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "bench" in out.stdout


@pytest.mark.parametrize("name", ["lg_m50_nmc", "a123_anr26650_lfp"])
def test_cell_files_parse_and_ocv_is_monotone(name: str) -> None:
    cell = _core.CellModel.from_toml(cell_file(name).read_text())
    assert cell.source
    ocvs = [cell.ocv(z / 100, 25.0) for z in range(101)]
    assert all(b >= a for a, b in zip(ocvs, ocvs[1:]))
    assert cell.v_min_v <= ocvs[0] and ocvs[-1] <= cell.v_max_v + 0.05
    for z in (0.1, 0.5, 0.9):
        assert cell.soc_from_ocv(cell.ocv(z, 25.0), 25.0) == pytest.approx(z, abs=0.02)


def test_bad_cell_file_names_the_field() -> None:
    # the identified file's capacity is not a round number: replace whatever it is
    text, n = re.subn(r"(?m)^capacity_ah = .*$", "capacity_ah = 0", cell_file("lg_m50_nmc").read_text())
    assert n == 1
    with pytest.raises(ValueError, match="capacity_ah"):
        _core.CellModel.from_toml(text)


def test_unknown_cell_name_lists_the_known_ones() -> None:
    with pytest.raises(ConfigError, match="lg_m50_nmc"):
        cell_file("no_such_cell")
