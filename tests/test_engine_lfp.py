"""The engine on the flat-OCV LFP cell: the filter leans on coulomb counting and stays sane."""

from __future__ import annotations

import copy
from mbms.engine import tomllib  # tomllib, or tomli on Python 3.10

import numpy as np

from mbms.engine import Engine, PackConfig
from mbms.paths import hw_dir


def test_lfp_flat_ocv_tracks_without_diverging() -> None:
    d = copy.deepcopy(tomllib.loads((hw_dir() / "packs" / "example_pack.toml").read_text()))
    d["pack"].update(cell="a123_anr26650_lfp", series=4, parallel=1, temp_sensors=1)
    # LFP window: 2.0..3.6 V (A123 ANR26650M1-B datasheet)
    d["protection"]["cell_overvoltage_v"].update(warning=3.6, alarm=3.65, fault=3.7)
    d["protection"]["cell_undervoltage_v"].update(warning=2.3, alarm=2.2, fault=2.0)
    d["limits"].update(max_discharge_a=20.0, max_charge_a=10.0, max_discharge_peak_a=40.0,
                       max_charge_peak_a=20.0)
    d["balancing"]["min_cell_v"] = 3.0
    cfg = PackConfig.from_dict(d)
    eng = Engine(cfg)
    tabs = eng._core.tables()
    ocv, r0, r1 = tabs["ocv"], tabs["r0"][0], tabs["r1"][0]
    a1 = np.exp(-1.0 / tabs["tau1_s"][0])
    v1 = np.zeros(4)
    grid = np.linspace(0.0, 1.0, len(ocv))
    rng = np.random.default_rng(2)
    z = np.array([0.50, 0.52, 0.55, 0.48])
    cap = tabs["capacity_ah"]
    dt = 1.0
    sig_prev = None
    for k in range(3000):
        # rest first (the engine starts from the OCV), then 1 C discharge / charge, 50 min
        i = 0.0 if k == 0 else (2.3 if (k // 300) % 2 == 0 else -1.5)
        # plant: the same equivalent circuit (exact ZOH RC update), 2 mV noise
        v1 = a1 * v1 + np.interp(z, grid, r1) * (1 - a1) * i
        z = z - i * dt / (3600.0 * cap)
        v = np.interp(z, grid, ocv) - np.interp(z, grid, r0) * i - v1 + 0.002 * rng.standard_normal(4)
        r = eng.step(k * dt, v, np.array([25.0]), i)
        assert np.all(np.isfinite(r.soc)) and np.all(np.isfinite(r.soc_sigma))
        assert np.max(np.abs(r.soc - z)) < 0.05, (k, r.soc, z)
        sig_prev = r.soc_sigma
    # coulomb counting and the filter agree in the plateau (no drift away)
    assert np.max(np.abs(r.soc - r.soc_cc)) < 0.05
    assert sig_prev is not None and np.all(sig_prev < 0.2)
