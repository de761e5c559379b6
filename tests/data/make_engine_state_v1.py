"""Writes ``engine_state_v1_latched.bin``, ``engine_state_v1_plain.bin`` and
``engine_state_v1_expected.json``: a node state file in the
engine's first, slot-numbered state format (magic ``MBMSENG1``), as ``mbms node`` wrote it before
the versioned per-stage format, and what the engine that wrote it did next.

Run ONCE with the code of main before the versioned format (commit 9be3b54 + the schema/s3
branches); the committed outputs are test data for tests/test_state_versions.py. With the current
code this script writes the new format, so do not re-run it to refresh the files. The expected
outputs were refreshed for issue 16 (the SOC filter's measurement and process noise changed; then its
model error held through a charge, max |ΔSOC| 1e-7):
the format-1 states imported and stepped with that engine; faults and actions are unchanged.
Refreshed again for issue 9's engine speed-up (pack sums in four vector lanes, a fixed order):
the same import and 20 steps, max relative difference 6.9e-16, faults, actions and balancing
unchanged. Refreshed for issue 16's capacity consider term in the reported SOC σ: only
``soc_sigma`` changed (max relative change 0.56 %), every other output identical. Refreshed for
issue 16's robust (Huber, 3σ) voltage update and the RC resistances taking the learnt ratio only
upwards: max relative change soc 5.1e-5, soc_sigma 9.2e-5, soc_mean 5.5e-7, soe_wh 5.9e-7;
limits, capacity, faults, actions and balancing identical.
Refreshed for issue 16's model failure carried from one voltage update to the next
(soc_ekf::carried_miss_variance; a format-1 file carries none): only the latched state moved, max
relative change soc 1.7e-11, soc_sigma 3.5e-11; the plain state, limits, capacity, faults, actions
and balancing identical.
Refreshed for issue 16's step-resistance model (the R0 observation divided by its step's
Butler-Volmer factor, the filter's R0 drop on the chord from rest to the load; soh.rs
r0_step_factor) and the R0 ratio's running mean over its first observations (a format-1 file
carries no count: its ratio counts as learnt): max relative change soc 2.0e-5, soc_sigma 8.8e-5,
soe_wh 1.2e-6, r_string_ohm 5.6e-8; limits, capacity, faults, actions and balancing identical.

The engine runs example_pack.toml through a dynamic profile, once with an over-voltage fault latched
on cell 3 ("latched": the pack is open, limits 0) and once without ("plain": limits carried), so
the files carry SOC, RC, hysteresis, covariance, capacity and R0 estimates, limits and a latched
fault. The expected file holds the outputs of 20 steps after importing each state.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

import tomllib

from mbms import _core
from mbms.engine import Level
from mbms.node.persistence import StateStore
from mbms.paths import hw_dir

HERE = Path(__file__).parent
PACK = hw_dir() / "packs" / "example_pack.toml"
ENGINE_TABLES = ("pack", "estimator", "protection", "limits", "balancing")


def engine() -> _core.Engine:
    """The extension's engine on the engine tables of example_pack.toml (the Python wrapper is
    left out on purpose: only the Rust state format is under test)."""
    d = tomllib.loads(PACK.read_text())
    cfg = {k: d[k] for k in ENGINE_TABLES if k in d}
    cell = (hw_dir() / "cells" / f"{cfg['pack']['cell']}.toml").read_text()
    return _core.Engine(cfg, cell)


def profile(k: int, n: int, nt: int) -> tuple[np.ndarray, np.ndarray, float]:
    """Deterministic inputs of step k: a dynamic current and cell voltages that follow it."""
    i = 8.0 * np.sin(0.05 * k) + (20.0 if (k // 40) % 2 else -10.0)
    if 300 <= k < 330:
        i = 0.0
    v = 3.70 + 0.002 * np.arange(n) / n - 0.004 * i / 10.0 + 0.001 * np.sin(0.3 * k + np.arange(n))
    t = 25.0 + 0.5 * np.sin(0.01 * k + np.arange(nt))
    return v, t, float(i)


def outputs(e: _core.Engine) -> dict:
    o = e.output()
    return {"soc": o["soc"].tolist(), "soc_sigma": o["soc_sigma"].tolist(), "soc_cc": o["soc_cc"].tolist(),
            "capacity_ah": o["capacity_ah"].tolist(), "balance": o["balance"].tolist(),
            **{k: float(o[k]) for k in ("dcl_a", "ccl_a", "dcl_peak_a", "ccl_peak_a", "soh_capacity",
                                        "soh_resistance", "soc_mean", "ocv_string_v", "r_string_ohm", "soe_wh")},
            "action": int(o["action"]), "faults": sorted([f["rule"], int(Level[f["level"].upper()]), f["index"]] for f in o["faults"])}


def continuation(e: _core.Engine, n: int, nt: int, k0: int) -> list[dict]:
    out = []
    for k in range(k0, k0 + 20):
        v, t, i = profile(k, n, nt)
        e.step(0.1 * k, v, t, i)
        out.append(outputs(e))
    return out


def main() -> None:
    expected = {"pack": "example_pack.toml", "k0": 400}
    for name, fault in (("latched", True), ("plain", False)):
        e = engine()
        n, nt = e.n_cells, e.n_temps
        for k in range(400):
            v, t, i = profile(k, n, nt)
            if fault and 100 <= k < 110:
                v[3] = 4.30  # over-voltage fault on cell 3: latched
            e.step(0.1 * k, v, t, i)
        blob = e.export_state()
        assert blob[:8] == b"MBMSENG1", "run this with the code that writes the first format"
        tmp = HERE / "_state_tmp"
        store = StateStore(tmp, 1)
        store.save(blob)
        (HERE / f"engine_state_v1_{name}.bin").write_bytes(store.state_path.read_bytes())
        store.close() if hasattr(store, "close") else None
        for p in sorted(tmp.iterdir()):
            p.unlink()
        tmp.rmdir()
        fresh = engine()
        assert fresh.import_state(blob) == []
        latched = any(f[0] == "cell_overvoltage" and f[2] == 3 for f in outputs(fresh)["faults"])
        assert latched == fault
        expected[name] = continuation(fresh, n, nt, 400)
    (HERE / "engine_state_v1_expected.json").write_text(json.dumps(expected))


if __name__ == "__main__":
    main()
