"""The data shipped inside the package (mbms/data) and how names are resolved: shipped files by
name, a user's own folder ($MBMS_HW_DIR) first, explicit paths as given, and errors that say
where they looked."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from mbms import paths
from mbms.errors import ConfigError

SHIPPED = {
    "cells": ["lg_m50_nmc", "a123_anr26650_lfp", "lfp_280ah_prismatic"],
    "packs": ["example_pack", "node1", "node2", "node3", "node4"],
    "systems": ["example_system", "example_system_udp", "example_plant"],
    "scenarios": ["default", "partition", "kill_restart", "processes_3", "processes_kill"],
}


def test_data_lives_inside_the_package() -> None:
    import mbms

    pkg = Path(mbms.__file__).resolve().parent
    assert paths.data_dir().resolve() == pkg / "data"
    assert paths.dbc_file().read_text().startswith("VERSION")
    assert sorted(p.name for p in paths.traces_dir().glob("dfn_*.npz")) == ["dfn_lfp.npz", "dfn_nmc.npz"]


@pytest.mark.parametrize("kind", sorted(SHIPPED))
def test_every_shipped_name_resolves(kind: str) -> None:
    for name in SHIPPED[kind]:
        p = paths.find(kind, name)
        assert p == paths.data_dir() / kind / f"{name}.toml"
        assert paths.find(kind, f"{name}.toml") == p


def test_missing_name_says_where_it_looked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MBMS_HW_DIR", str(tmp_path))
    with pytest.raises(ConfigError) as ei:
        paths.cell_file("no_such_cell")
    msg = str(ei.value)
    assert "'no_such_cell' not found" in msg
    assert str(tmp_path / "cells") in msg and str(paths.data_dir() / "cells") in msg
    assert "lg_m50_nmc" in msg  # the names that do exist
    assert ei.value.field == "cell"


def test_user_folder_is_searched_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    own = tmp_path / "cells"
    own.mkdir()
    (own / "my_cell.toml").write_text("# a user's cell\n")
    (own / "lg_m50_nmc.toml").write_text("# the user's own variant\n")
    monkeypatch.setenv("MBMS_HW_DIR", str(tmp_path))
    assert paths.cell_file("my_cell") == own / "my_cell.toml"
    assert paths.cell_file("lg_m50_nmc") == own / "lg_m50_nmc.toml"
    # what the user's folder lacks still comes from the shipped data
    assert paths.pack_file("example_pack") == paths.data_dir() / "packs" / "example_pack.toml"


def test_a_path_is_taken_as_given(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    mine = tmp_path / "sub" / "example_pack.toml"
    mine.parent.mkdir()
    mine.write_text("# mine\n")
    assert paths.pack_file(mine) == mine
    assert paths.pack_file("sub/example_pack.toml") == Path("sub/example_pack.toml")
    # a path with a folder part that does not exist is an error, never the shipped file of that name
    with pytest.raises(ConfigError, match="'other/example_pack.toml' not found"):
        paths.pack_file("other/example_pack.toml")
    # the CAN database is looked up by name only: a file of that name in the working folder is ignored
    (tmp_path / "mbms.dbc").write_text("not a dbc")
    assert paths.dbc_file() == paths.data_dir() / "dbc" / "mbms.dbc"


@pytest.mark.usefixtures("shipped_keys")
def test_cli_takes_shipped_names_and_rejects_unknown_ones(tmp_path: Path) -> None:
    ok = subprocess.run([sys.executable, "-m", "mbms", "node", "--config", "node2", "--system", "example_system",
                         "--check"], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert str(paths.data_dir() / "packs" / "node2.toml") in ok.stdout
    bad = subprocess.run([sys.executable, "-m", "mbms", "sim", "--scenario", "no_such_story"],
                         capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert bad.returncode == 2
    lines = bad.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mbms sim: error: argument --scenario: "), bad.stderr
    assert "'no_such_story' not found" in lines[0] and "partition" in lines[0]
