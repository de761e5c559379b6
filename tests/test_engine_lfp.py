"""The engine on the flat-OCV LFP cell: the filter leans on coulomb counting and stays sane."""

from __future__ import annotations

import copy
import tomllib

import numpy as np

from mbms.engine import Engine, PackConfig
from mbms.paths import data_dir


def test_lfp_flat_ocv_tracks_without_diverging() -> None:
    d = copy.deepcopy(tomllib.loads((data_dir() / "packs" / "example_pack.toml").read_text()))
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
    # the plant runs at the engine's 25 °C: the table row and time constant of 25 °C (the cell
    # file has rows for 10, 25 and 40 °C; the 10 °C row has ~50 % more R0, a model mismatch
    # that on the flat plateau reads as a large SOC error)
    row = int(np.flatnonzero(tabs["temps"] == 25.0)[0])
    assert tabs["tau_temps"][row] == 25.0
    ocv, r0, r1 = tabs["ocv"], tabs["r0"][row], tabs["r1"][row]
    a1 = np.exp(-1.0 / tabs["tau1_s"][row])
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
        err = np.abs(r.soc - z)
        if k == 0:
            # start-up from one 2 mV-noisy rest voltage: on the plateau (dOCV/dz ~0.05..0.15 V
            # per unit SOC) that alone is ~1.5..4 % SOC; the engine must say so in its sigma
            # (voltage uncertainty / OCV slope), not claim its configured 5 % where the plateau
            # is flattest (cells starting at 0.50..0.55 here)
            assert np.all(r.soc_sigma[:3] > 0.1), r.soc_sigma
            assert np.all(err < 3.0 * r.soc_sigma), (err, r.soc_sigma)
        else:
            assert np.max(err) < 0.05, (k, r.soc, z)
        if k >= 120:
            # The voltage under load is weighted as the slow model bias the cell file declares
            # (issue 16: on the plateau a filter that lets it pin the SOC grows overconfident on
            # real cells), so the start error is not pinned down within minutes here; the
            # filter's σ must say how far off it may be
            assert np.all(err <= 3.0 * r.soc_sigma + 0.005), (k, err, r.soc_sigma)
        sig_prev = r.soc_sigma
    # coulomb counting and the filter agree in the plateau (no drift away)
    assert np.max(np.abs(r.soc - r.soc_cc)) < 0.05
    assert sig_prev is not None and np.all(sig_prev < 0.2)
