"""The Rust engine and the numpy reference compute the same step (same inputs, same outputs)."""

from __future__ import annotations

import copy
import tomllib
from pathlib import Path

import numpy as np
import pytest

from mbms.engine import Engine, PackConfig
from mbms.paths import cell_file, data_dir
from mbms.reference.engine_numpy import NumpyEngine

PACK = data_dir() / "packs" / "example_pack.toml"


# r_cell_ohm: the cells' resistance as the voltages show it (element of 4 M50 in parallel: the
# table's R0 is ~5.2 mOhm at 50 % SOC): 6.25 mOhm learns a ratio above 1, 3 mOhm one below 1,
# which the limits do not take (engine/cells.rs, the SOF)
# sigma_floor: the cell file's soc_sigma_floor (cell_model.rs), on a copy of the NMC cell file
# (whose own is 0), high enough that the reported sigma sits on it for part of the run
# start_a: the current of the first sample; under load the start-up σ gains the polarisation the
# reading cannot see (engine/cells.rs, Cells::initialize)
@pytest.mark.parametrize(
    ("mode", "r_cell_ohm", "sigma_floor", "start_a"),
    [("soc", 0.00625, None, 0.0), ("voltage", 0.00625, None, 0.0), ("soc", 0.003, None, 0.0),
     ("soc", 0.00625, 0.012, 0.0), ("soc", 0.00625, None, 40.0), ("soc", 0.00625, None, "hysteresis+entropic")],
)
def test_rust_and_numpy_agree(mode: str, r_cell_ohm: float, sigma_floor: float | None, start_a: float | str,
                              tmp_path: Path) -> None:
    d = tomllib.loads(PACK.read_text())
    d = copy.deepcopy(d)
    text = cell_file(d["pack"]["cell"]).read_text()
    t_cells_c = 25.0
    if sigma_floor is not None:
        assert "\nsoc_sigma_floor = 0 " in text
        text = text.replace("\nsoc_sigma_floor = 0 ", f"\nsoc_sigma_floor = {sigma_floor} ")
    hyst = start_a == "hysteresis+entropic"
    if hyst:
        # the OCV's hysteresis state and entropic term (absent from the identified NMC file),
        # with the cells 10 K above the table's temperature
        zeros = "docv_dt_v_per_k = [" + ", ".join(["0"] * 101) + "]"
        assert zeros in text
        text = text.replace(zeros, "docv_dt_v_per_k = [" + ", ".join(["-0.0002"] * 101) + "]")
        text += "\n[hysteresis]\nm_v = 0.01\ngamma = 80\n"
        start_a, t_cells_c = 0.0, 35.0
    assert isinstance(start_a, float)
    if text != cell_file(d["pack"]["cell"]).read_text():
        cell = tmp_path / "cell.toml"
        cell.write_text(text)
        d["pack"]["cell"] = str(cell)
    floored = above = 0
    consider_max = consider_tau_max = 0.0
    d["pack"].update(series=24, temp_sensors=6)
    # no pack current caps: the limits compared are the cells' own (headroom over resistance)
    d["limits"].update(max_discharge_a=1e4, max_charge_a=1e4, max_discharge_peak_a=1e4, max_charge_peak_a=1e4)
    d["estimator"].update(rest_time_s=1e9, rest_end_min_s=0.0)
    d["protection"]["sensors"]["stuck_samples"] = 20
    d["balancing"].update(mode=mode, max_cells=3, threshold=0.01 if mode == "soc" else 0.01)
    cfg = PackConfig.from_dict(d)
    rust, ref = Engine(cfg), NumpyEngine(cfg)
    rng = np.random.default_rng(11)
    n = 24
    base = 3.6 + 0.08 * rng.random(n)
    for k in range(1500):
        t = 0.1 * k
        # starts at rest: under load (and for the relaxation time after it, cell file
        # model_error_relax_s) the voltage weighs too little for the iterated update to trigger
        i = [0.0, 20.0, 5.0, -8.0, 35.0, 50.0][(k // 120) % 6]
        v = base - r_cell_ohm * i + 0.001 * rng.standard_normal(n) - 2e-5 * k
        tc = t_cells_c + 0.1 * rng.standard_normal(6)
        if k == 0:
            v[:8] -= 0.15  # a bad first sample: start 10..20 % off, recovered by the IEKF branch
            i = start_a
        if 300 <= k < 310:
            v[5] = np.nan  # failed sensor for 1 s
        if 600 <= k < 650:
            tc[2] = t_cells_c  # stuck sensor
        if k == 900:
            v[7] = 4.4
        if 60 <= k < 100:
            # a voltage drop the model misses, persisting (soc_ekf.rs failure_voltage_r), in the
            # first rest: under load the model error's variance keeps it inside the gate
            v[10] -= 0.1
        a, b = rust.step(t, v, tc, i), ref.step(t, v, tc, i)
        if k == 0:
            # the same first sample at rest: the start-up σ of the loaded start is wider
            at_rest = Engine(cfg).step(t, v, tc, 0.0)
            wider = np.asarray(a.soc_sigma) > np.asarray(at_rest.soc_sigma)
            assert bool(np.all(wider)) == (start_a != 0.0), (a.soc_sigma, at_rest.soc_sigma)
        assert a.action == b.action, k
        assert a.faults == b.faults, k
        np.testing.assert_array_equal(a.balance, b.balance)
        for name in ("soc", "soc_sigma", "soc_cc"):
            np.testing.assert_allclose(getattr(a, name), getattr(b, name), rtol=0, atol=1e-12)
        consider_max = max(consider_max, float(np.max(np.abs(ref.sens_z))))
        consider_tau_max = max(consider_tau_max, float(np.max(np.abs(ref.sens_tz))))
        if sigma_floor is not None:
            sig = np.asarray(a.soc_sigma)
            floored += int(np.sum(sig == sigma_floor))
            above += int(np.sum(sig > sigma_floor))
            assert np.all(sig >= sigma_floor), k
        for name in ("dcl_a", "ccl_a", "dcl_peak_a", "ccl_peak_a", "soc_mean", "r_string_ohm",
                     "ocv_string_v", "soe_wh", "soh_resistance"):
            assert getattr(a, name) == pytest.approx(getattr(b, name), rel=1e-12, abs=1e-9), name
        if k == 1000:
            rust.reset_faults(t)
            ref.reset_faults()
    if start_a == 0.0:
        # (a start under load leaves the first rest's model error wide: neither branch fires)
        assert ref.iterated_updates >= 8  # the iterated-update branch was compared too
        assert ref.persisting_failures >= 20  # and the count of a persisting failure
    # and the RC polarisation's consider term of the reported sigma (cell_model.rs
    # rc_polarisation_rel_error, on in the NMC cell file), at a size the comparison sees: a
    # term of (1e-6)² in σ² moves a σ of ~1 % by ~5e-11, above the 1e-12 tolerance
    cell_est = tomllib.loads(cfg.cell_path.read_text())["estimator"]  # type: ignore[union-attr]
    rel = cell_est["rc_polarisation_rel_error"]
    assert rel * consider_max > 1e-6, (rel, consider_max)
    # and the time constants' (rc_time_constant_rel_error, on in the NMC file too)
    rel_tau = cell_est["rc_time_constant_rel_error"]
    assert rel_tau * consider_tau_max > 1e-6, (rel_tau, consider_tau_max)
    if hyst:
        # the hysteresis state was compared where it is not small (m_v 10 mV)
        assert float(np.max(np.abs(ref.h))) > 5e-3, ref.h
    if sigma_floor is not None:
        # the floor bound the reported sigma for part of the run, not all of it
        assert floored > 0 and above > 0, (floored, above)
    # the resistance ratio learnt is on the side of 1 this case is for
    assert (a.soh_resistance - 1.0) * (r_cell_ohm - 0.0052) > 0, a.soh_resistance


def test_zero_current_calibration_agrees_and_stops_the_rest_drift() -> None:
    """A current sensor reading +0.2 A at rest (inside the 0.5 A rest band): after the rest's
    first minute both engines learn it as the sensor's offset (rest.rs RestSoh::zero_current)
    and take it out of the coulomb count, identically."""
    d = copy.deepcopy(tomllib.loads(PACK.read_text()))
    d["pack"].update(series=4, temp_sensors=1)
    d["estimator"].update(rest_time_s=1e9, rest_end_min_s=0.0)  # no rest point (not in the numpy reference)
    cfg = PackConfig.from_dict(d)
    assert cfg.estimator.current_offset_tau_s > 0.0, "the calibration is on by default"
    rust, ref = Engine(cfg), NumpyEngine(cfg)
    rng = np.random.default_rng(5)
    offset = 0.2
    base = 3.65 + 0.02 * rng.random(4)
    cc = []
    dt = 0.5
    for k in range(2700):
        t = dt * k
        load = 30.0 if 1600 <= k < 1700 else 0.0  # rest 800 s, 50 s load, rest 500 s
        i = load + offset + 0.01 * rng.standard_normal()
        v = base - 0.00625 * load + 0.001 * rng.standard_normal(4)
        a, b = rust.step(t, v, np.array([25.0]), i), ref.step(t, v, np.array([25.0]), i)
        for name in ("soc", "soc_sigma", "soc_cc"):
            np.testing.assert_allclose(getattr(a, name), getattr(b, name), rtol=0, atol=1e-12)
        cc.append(float(np.mean(a.soc_cc)))
    q_as = 3600.0 * tomllib.loads((data_dir() / "cells" / "lg_m50_nmc.toml").read_text())["capacity_ah"] * 4
    raw_drift = offset * 400.0 / q_as  # what the offset alone would count from k = 1900 on
    drift = cc[1900] - cc[-1]  # the last rest, after its first minute and more
    # learnt over 740 s of the first rest with tau 300 s: e^(-740/300) ~ 8 % left, then less
    assert abs(drift) < 0.1 * raw_drift, (drift, raw_drift)
