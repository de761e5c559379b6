"""Issue 9 item 5: the engine state is a versioned document, one section per engine stage, and a
state file of the previous format (binary, slot-numbered, magic ``MBMSENG1``) is migrated, never
misread; a newer or foreign one is refused with a message that says what was found.

The format-1 files in tests/data were written by the engine of main before the change
(tests/data/make_engine_state_v1.py), through the node's state store, with what that engine did
next: the migrated state must continue exactly the same, number for number.
"""

from __future__ import annotations

import json
import shutil
import tomllib
from pathlib import Path

import numpy as np
import pytest

from mbms import _core
from mbms.engine import Level
from mbms.node.persistence import StateStore
from mbms.paths import hw_dir

DATA = Path(__file__).parent / "data"
PACK = hw_dir() / "packs" / "example_pack.toml"
ENGINE_TABLES = ("pack", "estimator", "protection", "limits", "balancing")


def _engine() -> _core.Engine:
    d = tomllib.loads(PACK.read_text())
    cfg = {k: d[k] for k in ENGINE_TABLES if k in d}
    cell = (hw_dir() / "cells" / f"{cfg['pack']['cell']}.toml").read_text()
    # The expected outputs were recorded by the engine of that time, before the reported SOC σ
    # had the RC polarisation's consider terms (cell_model.rs rc_polarisation_rel_error,
    # rc_time_constant_rel_error); with them off, the migrated state must still continue
    # number for number.
    for key in ("\nrc_polarisation_rel_error = ", "\nrc_time_constant_rel_error = "):
        assert key in cell
        start = cell.index(key) + len(key)
        cell = cell[:start] + "0" + cell[cell.index(" ", start):]
    return _core.Engine(cfg, cell)


def _profile(k: int, n: int, nt: int) -> tuple[np.ndarray, np.ndarray, float]:
    """The inputs of tests/data/make_engine_state_v1.py (same formula, same numbers)."""
    i = 8.0 * np.sin(0.05 * k) + (20.0 if (k // 40) % 2 else -10.0)
    if 300 <= k < 330:
        i = 0.0
    v = 3.70 + 0.002 * np.arange(n) / n - 0.004 * i / 10.0 + 0.001 * np.sin(0.3 * k + np.arange(n))
    t = 25.0 + 0.5 * np.sin(0.01 * k + np.arange(nt))
    return v, t, float(i)


def _outputs(e: _core.Engine) -> dict:
    o = e.output()
    return {"soc": o["soc"].tolist(), "soc_sigma": o["soc_sigma"].tolist(), "soc_cc": o["soc_cc"].tolist(),
            "capacity_ah": o["capacity_ah"].tolist(), "balance": o["balance"].tolist(),
            **{k: float(o[k]) for k in ("dcl_a", "ccl_a", "dcl_peak_a", "ccl_peak_a", "soh_capacity",
                                        "soh_resistance", "soc_mean", "ocv_string_v", "r_string_ohm", "soe_wh")},
            "action": int(o["action"]), "faults": sorted([f["rule"], int(Level[f["level"].upper()]), f["index"]] for f in o["faults"])}


def _load_v1(tmp_path: Path, name: str) -> bytes:
    """The blob of a format-1 state file, read by the node's own state store."""
    d = tmp_path / name
    d.mkdir()
    shutil.copy(DATA / f"engine_state_v1_{name}.bin", d / "state.bin")
    store = StateStore(d, 1)
    res = store.load()
    store.close()
    assert res.status == "ok", res
    assert res.data is not None and res.data[:8] == b"MBMSENG1"
    return res.data


@pytest.mark.parametrize("name", ["plain", "latched"])
def test_a_format_1_state_file_is_migrated_and_continues_exactly(tmp_path: Path, name: str) -> None:
    expected = json.loads((DATA / "engine_state_v1_expected.json").read_text())
    e = _engine()
    assert e.import_state(_load_v1(tmp_path, name)) == []
    n, nt, k0 = e.n_cells, e.n_temps, expected["k0"]
    for j, want in enumerate(expected[name]):
        k = k0 + j
        v, t, i = _profile(k, n, nt)
        e.step(0.1 * k, v, t, i)
        assert _outputs(e) == want, f"step {k}: the migrated state continues differently"
    if name == "latched":
        assert ["cell_overvoltage", 2, 3] in expected[name][0]["faults"]
    else:
        assert expected[name][-1]["dcl_a"] > 0  # the limits were carried, not restarted


def test_a_migrated_state_is_saved_in_the_versioned_format(tmp_path: Path) -> None:
    e = _engine()
    e.import_state(_load_v1(tmp_path, "plain"))
    doc = json.loads(e.export_state())
    assert (doc["format"], doc["version"]) == ("mbms-engine-state", 2)
    assert {s: doc[s]["version"] for s in ("cells", "rest_soh", "limits", "protection")} == \
        {"cells": 1, "rest_soh": 1, "limits": 1, "protection": 1}
    again = _engine()
    assert again.import_state(e.export_state()) == []
    assert again.export_state() == e.export_state()


@pytest.mark.parametrize(("change", "words"), [
    (lambda d: d["cells"].update(version=2), 'section "cells" has version 2; this mbms reads version 1'),
    (lambda d: d["protection"].update(version=9), 'section "protection" has version 9'),
    (lambda d: d.pop("limits"), 'section "limits" missing'),
    (lambda d: d.update(version=3), "document version Some(3)"),
    (lambda d: d.update(format="other-tool"), 'format Some("other-tool")'),
    (lambda d: d["rest_soh"].update(cap_ah=d["rest_soh"]["cap_ah"][:5]), "rest_soh.cap_ah: 5 values, expected 96"),
])
def test_a_newer_or_foreign_state_is_refused_and_nothing_applied(tmp_path: Path, change, words) -> None:
    e = _engine()
    e.import_state(_load_v1(tmp_path, "latched"))
    doc = json.loads(e.export_state())
    change(doc)
    fresh = _engine()
    before = fresh.export_state()
    with pytest.raises(ValueError, match="engine state: ") as exc:
        fresh.import_state(json.dumps(doc).encode())
    assert words in str(exc.value)
    assert fresh.export_state() == before


def test_a_damaged_format_1_file_is_refused(tmp_path: Path) -> None:
    blob = _load_v1(tmp_path, "plain")
    with pytest.raises(ValueError, match="format 1: truncated"):
        _engine().import_state(blob[:-7])
    with pytest.raises(ValueError, match="not an mbms engine state"):
        _engine().import_state(b"MBMSENG9" + blob[8:])
