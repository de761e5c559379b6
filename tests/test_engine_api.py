"""mbms.engine: configuration strictness, input checking, state round trip, protection."""

from __future__ import annotations

import copy
import tomllib
from dataclasses import MISSING, fields
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mbms import _core
from mbms.engine import (
    PACK_INDEX,
    Action,
    BalancingConfig,
    Engine,
    EstimatorConfig,
    PackConfig,
)
from mbms.errors import ConfigError, InputError
from mbms.paths import data_dir

PACK = data_dir() / "packs" / "example_pack.toml"


@pytest.fixture(scope="module")
def raw() -> dict:
    return tomllib.loads(PACK.read_text())


def small(raw: dict, series: int = 8, temps: int = 2, **pack) -> PackConfig:
    d = copy.deepcopy(raw)
    d["pack"].update(series=series, temp_sensors=temps, **pack)
    return PackConfig.from_dict(d, source=str(PACK))


def noisy(rng: np.random.Generator, n: int, level: float = 3.7, sd: float = 1e-3) -> np.ndarray:
    return level + sd * rng.standard_normal(n)


def test_example_pack_loads_and_ignores_node_tables(raw: dict) -> None:
    cfg = PackConfig.from_toml(PACK)
    assert (cfg.pack.series, cfg.pack.parallel, cfg.pack.temp_sensors) == (96, 4, 24)
    d = copy.deepcopy(raw)
    d["node"] = {"id": 3, "transport": "udp"}  # the node runtime's tables are ignored
    d["hardware"] = {"anything": {"goes": 1}}
    assert PackConfig.from_dict(d) == cfg


def test_python_restates_no_default(raw: dict) -> None:
    """The views have no defaults: an omitted optional table gets Rust's values."""
    for cls in (EstimatorConfig, BalancingConfig):
        assert all(f.default is MISSING and f.default_factory is MISSING for f in fields(cls)), cls
    d = copy.deepcopy(raw)
    del d["estimator"], d["balancing"]
    cfg = PackConfig.from_dict(d)
    rust = _core.engine_config(d)
    assert cfg.estimator.rest_time_s == rust["estimator"]["rest_time_s"] == 600.0
    assert cfg.balancing.threshold == rust["balancing"]["threshold"]
    assert cfg.engine_dict() == rust


@pytest.mark.parametrize(
    "path, key",
    [
        (("pack",), "bogus"),
        (("estimator",), "voltage_noise"),
        (("protection", "cell_overvoltage_v"), "delay_s"),
        (("limits", "charge_soc_derating"), "y"),
        (("balancing",), "modes"),
    ],
)
def test_unknown_keys_name_the_dotted_field(raw: dict, path: tuple[str, ...], key: str) -> None:
    d = copy.deepcopy(raw)
    t = d
    for p in path:
        t = t[p]
    t[key] = 1
    with pytest.raises(ConfigError) as ei:
        PackConfig.from_dict(d)
    assert ei.value.field == ".".join(path + (key,))


@pytest.mark.parametrize(
    "path",
    [("pack", "series"), ("pack", "cell"), ("protection", "sensors", "stuck_samples"),
     ("limits", "max_charge_a"), ("protection", "temp_spread_c")],
)
def test_missing_keys_name_the_dotted_field(raw: dict, path: tuple[str, ...]) -> None:
    d = copy.deepcopy(raw)
    t = d
    for p in path[:-1]:
        t = t[p]
    del t[path[-1]]
    with pytest.raises(ConfigError) as ei:
        PackConfig.from_dict(d)
    assert ei.value.field == ".".join(path)


def test_thresholds_out_of_order(raw: dict) -> None:
    d = copy.deepcopy(raw)
    d["protection"]["cell_undervoltage_v"]["alarm"] = 2.9  # above the 2.8 V warning
    with pytest.raises(ConfigError) as ei:
        PackConfig.from_dict(d)
    assert ei.value.field == "protection.cell_undervoltage_v.warning"
    assert "warning >= alarm >= fault" in str(ei.value)
    d = copy.deepcopy(raw)
    d["limits"]["max_discharge_peak_a"] = 1.0
    with pytest.raises(ConfigError, match="max_discharge_peak_a"):
        PackConfig.from_dict(d)
    d = copy.deepcopy(raw)
    d["limits"]["charge_temp_derating"]["factor"] = [0.0, 1.0, 0.5, 1.0, 0.0]  # two windows
    with pytest.raises(ConfigError) as ei:
        PackConfig.from_dict(d)
    assert ei.value.field == "limits.charge_temp_derating"


def test_missing_cell_file(raw: dict, tmp_path: Path) -> None:
    d = copy.deepcopy(raw)
    d["pack"]["cell"] = "no_such_cell"
    with pytest.raises(ConfigError) as ei:
        PackConfig.from_dict(d)
    assert ei.value.field == "pack.cell"
    f = tmp_path / "p.toml"
    f.write_text(PACK.read_text().replace('cell = "lg_m50_nmc"', 'cell = "cells/missing.toml"'))
    with pytest.raises(ConfigError) as ei:
        PackConfig.from_toml(f)
    assert ei.value.field == "pack.cell" and ei.value.source == str(f)


def test_wrong_types_in_config(raw: dict) -> None:
    d = copy.deepcopy(raw)
    d["pack"]["series"] = "96"
    with pytest.raises(ConfigError, match="pack.series"):
        PackConfig.from_dict(d)
    d = copy.deepcopy(raw)
    d["balancing"]["mode"] = "magic"
    with pytest.raises(ConfigError, match="balancing.mode"):
        PackConfig.from_dict(d)


@settings(max_examples=40, deadline=None)
@given(
    n_v=st.integers(0, 20),
    n_t=st.integers(0, 6),
    dtype=st.sampled_from([np.float64, np.float32, np.int64]),
)
def test_bad_arrays_are_rejected_naming_the_argument(n_v: int, n_t: int, dtype: type) -> None:
    cfg = small(tomllib.loads(PACK.read_text()), series=8, temps=2)
    eng = Engine(cfg)
    v = np.full(n_v, 3.7, dtype=dtype)
    t = np.full(n_t, 25.0, dtype=dtype)
    if dtype is not np.float64:
        with pytest.raises(TypeError, match="v_cell_v"):
            eng.step(0.0, v, np.full(2, 25.0), 0.0)
        with pytest.raises(TypeError, match="t_cell_c"):
            eng.step(0.0, np.full(8, 3.7), t, 0.0)
        return
    if n_v != 8:
        with pytest.raises(InputError, match="v_cell_v"):
            eng.step(0.0, v, np.full(2, 25.0), 0.0)
    if n_t != 2:
        with pytest.raises(InputError, match="t_cell_c"):
            eng.step(0.0, np.full(8, 3.7), t, 0.0)
    if n_v == 8 and n_t == 2:
        res = eng.step(0.0, v, t, 0.0)
        assert res.soc.shape == (8,)
    with pytest.raises(TypeError, match="v_cell_v"):
        eng.step(0.0, [3.7] * 8, np.full(2, 25.0), 0.0)  # type: ignore[arg-type]


def test_time_must_increase(raw: dict) -> None:
    eng = Engine(small(raw))
    eng.step(1.0, np.full(8, 3.7), np.full(2, 25.0), 0.0)
    with pytest.raises(InputError, match="t_s"):
        eng.step(1.0, np.full(8, 3.7), np.full(2, 25.0), 0.0)


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    currents=st.lists(st.floats(-20.0, 40.0), min_size=1, max_size=40),
)
def test_results_are_sane_and_limits_bounded(seed: int, currents: list[float]) -> None:
    cfg = small(tomllib.loads(PACK.read_text()))
    eng = Engine(cfg)
    rng = np.random.default_rng(seed)
    lim = cfg.limits
    for k, i in enumerate(currents):
        r = eng.step(0.1 * k, noisy(rng, 8, 3.7 - 0.006 * i), 25.0 + rng.standard_normal(2) * 0.1, i)
        assert np.all((r.soc >= 0) & (r.soc <= 1)) and np.all(r.soc_sigma > 0)
        assert 0 <= r.dcl_a <= lim.max_discharge_a and 0 <= r.ccl_a <= lim.max_charge_a
        assert 0 <= r.dcl_peak_a <= lim.max_discharge_peak_a
        assert 0 <= r.ccl_peak_a <= lim.max_charge_peak_a
        assert r.soc_min <= r.soc_mean <= r.soc_max
        assert r.balance.dtype == bool and r.balance.shape == (8,)
        has_fault = any(f.level == "fault" for f in r.faults)
        assert has_fault == (r.action == Action.OPEN)


def test_state_export_import_round_trip(raw: dict) -> None:
    cfg = small(raw)
    rng = np.random.default_rng(3)
    a = Engine(cfg)
    for k in range(50):
        a.step(0.1 * k, noisy(rng, 8), noisy(rng, 2, 25.0, 0.1), 10.0)
    blob = a.export_state()
    assert isinstance(blob, bytes)
    b, c = Engine(cfg), Engine(cfg)
    b.import_state(blob)
    c.import_state(blob)
    assert b.export_state() == blob
    for k in range(50, 80):
        v, t = noisy(rng, 8), noisy(rng, 2, 25.0, 0.1)
        rb, rc = b.step(0.1 * k, v, t, 5.0), c.step(0.1 * k, v, t, 5.0)
        np.testing.assert_array_equal(rb.soc, rc.soc)
        assert rb.dcl_a == rc.dcl_a
    # the imported state continues from the exported SOC and covariance, not from a fresh OCV
    # start: one more sample 0.1 s on, with voltages like the last ones, keeps the σ
    last = a.result()
    d = Engine(cfg)
    d.import_state(blob)
    v, tc = noisy(rng, 8), noisy(rng, 2, 25.0, 0.1)
    r = d.step(5.0, v, tc, 10.0)
    np.testing.assert_allclose(r.soc, last.soc, atol=0.1)
    assert np.all(r.soc_sigma <= last.soc_sigma * 1.01)  # the restored σ, narrowed by this sample
    fresh = Engine(cfg).step(5.0, v, tc, 10.0)  # a fresh start: the start-up σ, not narrowed
    assert np.all(fresh.soc_sigma > 1.5 * r.soc_sigma), (fresh.soc_sigma, r.soc_sigma)
    with pytest.raises(InputError):
        Engine(small(raw, series=9)).import_state(blob)
    with pytest.raises(InputError):
        Engine(cfg).import_state(blob[:-3])
    with pytest.raises(InputError):
        Engine(cfg).import_state(b"garbage" * 10)


def _run_until(eng: Engine, make, t0: float, dt: float, pred, limit_s: float):  # type: ignore[no-untyped-def]
    """Step until ``pred(result)``; return (time, result). Fails after ``limit_s``."""
    t = t0
    while t - t0 <= limit_s:
        v, temps, i = make(t)
        r = eng.step(t, v, temps, i)
        if pred(r):
            return t, r
        t += dt
    raise AssertionError(f"condition not reached within {limit_s} s of simulated time")


def test_nan_voltage_sensor_opens_after_the_debounce(raw: dict) -> None:
    cfg = small(raw)
    eng = Engine(cfg)
    rng = np.random.default_rng(5)
    t_bad = 1.0

    def make(t: float):  # type: ignore[no-untyped-def]
        v = noisy(rng, 8)
        if t >= t_bad - 1e-9:
            v[3] = np.nan
        return v, noisy(rng, 2, 25.0, 0.1), 2.0

    t, r = _run_until(eng, make, 0.0, 0.1, lambda r: r.action == Action.OPEN, 5.0)
    delay = cfg.protection.sensors.fault_delay_s
    assert t - t_bad == pytest.approx(delay, abs=1e-6)  # confirmed exactly at the debounce
    assert ("voltage_sensor", "fault", 3) in [(f.rule, f.level, f.index) for f in r.faults]
    assert r.dcl_a == 0.0 and r.ccl_a == 0.0


def test_stuck_temperature_sensor_trips(raw: dict) -> None:
    d = copy.deepcopy(raw)
    d["protection"]["sensors"]["stuck_samples"] = 10
    eng = Engine(small(d))
    rng = np.random.default_rng(6)

    def make(t: float):  # type: ignore[no-untyped-def]
        return noisy(rng, 8), np.array([25.0, 25.0 + 0.1 * rng.standard_normal()]), 1.0

    _, r = _run_until(eng, make, 0.0, 0.1, lambda r: r.action == Action.OPEN, 5.0)
    assert [(f.rule, f.index) for f in r.faults] == [("temp_sensor", 0)]


def test_overvoltage_latches_until_cleared_and_reset(raw: dict) -> None:
    eng = Engine(small(raw))
    rng = np.random.default_rng(7)
    high = {"on": True}

    def make(t: float):  # type: ignore[no-untyped-def]
        v = noisy(rng, 8, 4.0)
        if high["on"]:
            v[6] = 4.3
        return v, noisy(rng, 2, 25.0, 0.1), -2.0

    t, r = _run_until(eng, make, 0.0, 0.1, lambda r: r.action == Action.OPEN, 5.0)
    assert any(f.rule == "cell_overvoltage" and f.index == 6 for f in r.faults)
    eng.reset_faults(t)  # condition still present: stays
    assert eng.result().action == Action.OPEN
    high["on"] = False
    t, r = _run_until(eng, make, t + 0.1, 0.1, lambda r: True, 1.0)
    assert r.action == Action.OPEN  # latched
    eng.reset_faults(t)
    assert eng.result().action == Action.NONE and eng.result().faults == ()


def test_overcurrent_is_pack_level_and_charge_window_uses_current_sign(raw: dict) -> None:
    eng = Engine(small(raw))
    rng = np.random.default_rng(8)

    def make(t: float):  # type: ignore[no-untyped-def]
        return noisy(rng, 8), np.array([44.0, 44.0]) + 0.01 * rng.standard_normal(2), 60.0

    _, r = _run_until(eng, make, 0.0, 0.1, lambda r: r.action == Action.OPEN, 5.0)
    rules = {(f.rule, f.index) for f in r.faults}
    assert ("overcurrent_discharge", PACK_INDEX) in rules
    # 44 °C is inside the discharge window (< 50 °C warning) but over the charge alarm (43 °C)
    assert not any(f.rule.startswith("overtemp") for f in r.faults)
    eng2 = Engine(small(raw))

    def charge(t: float):  # type: ignore[no-untyped-def]
        return noisy(rng, 8), np.array([44.0, 25.0]) + 0.01 * rng.standard_normal(2), -5.0

    _, r = _run_until(eng2, charge, 0.0, 0.1, lambda r: r.action >= Action.RAMP_DOWN, 5.0)
    assert ("overtemp_charge", "alarm", 0) in [(f.rule, f.level, f.index) for f in r.faults]


def test_string_quantities_for_current_sharing(raw: dict) -> None:
    cfg = small(raw)
    eng = Engine(cfg)
    r = eng.step(0.0, np.full(8, 3.7), np.full(2, 25.0), 0.0)
    cell = _core.CellModel.from_toml(cfg.cell_path.read_text())  # type: ignore[union-attr]
    assert r.ocv_string_v == pytest.approx(8 * 3.7, abs=1e-6)  # SOC from OCV at start
    r0 = cell.r0(float(r.soc[0]), 25.0)
    assert r.r_string_ohm == pytest.approx(8 * r0 / cfg.pack.parallel + cfg.pack.r_extra_ohm, rel=1e-9)
    assert r.soe_wh > 0 and r.soh_capacity == 1.0


def test_a_pack_commissioned_with_its_measured_capacity_counts_against_it(raw: dict) -> None:
    """`estimator.capacity_prior_ratio`: an aged pack starts on its measured capacity (the SOH
    reads it, the coulomb count divides by it), where a default pack starts on the cell file's."""
    d = copy.deepcopy(raw)
    d["pack"].update(series=8, temp_sensors=2)
    cell = _core.CellModel.from_toml(PackConfig.from_dict(d).cell_path.read_text())  # type: ignore[union-attr]
    par = d["pack"]["parallel"]
    drops = {}
    for ratio in (1.0, 0.8):
        d["estimator"]["capacity_prior_ratio"] = ratio
        eng = Engine(PackConfig.from_dict(d))
        v, t = np.full(8, 3.7), np.full(2, 25.0)
        r0 = eng.step(0.0, v, t, 0.0)
        assert r0.soh_capacity == pytest.approx(ratio)
        assert np.asarray(r0.capacity_ah) == pytest.approx(ratio * cell.capacity_ah * par)
        # one hour at 0.1 C of the cell file's capacity
        i = 0.1 * cell.capacity_ah * par
        for k in range(1, 3601):
            r = eng.step(float(k), v, t, i)
        drops[ratio] = float(np.asarray(r0.soc_cc)[0] - np.asarray(r.soc_cc)[0])
    assert drops[1.0] == pytest.approx(0.1, rel=1e-3)
    assert drops[0.8] == pytest.approx(0.1 / 0.8, rel=1e-3)


@pytest.mark.parametrize("ratio", [0.2, 1.6, float("nan")])
def test_a_capacity_ratio_outside_the_estimators_band_is_refused(raw: dict, ratio: float) -> None:
    d = copy.deepcopy(raw)
    d["estimator"]["capacity_prior_ratio"] = ratio
    with pytest.raises(ConfigError) as ei:
        PackConfig.from_dict(d)
    assert ei.value.field == "estimator.capacity_prior_ratio"
    assert "expected" in str(ei.value)


@pytest.mark.parametrize("key", ["sens", "sens_tau"])
def test_the_state_file_carries_the_sigma_consider_sensitivity(raw: dict, key: str) -> None:
    """The state file carries the consider sensitivities of the reported σ (`cells.sens` and
    `cells.sens_tau`, cell_model.rs rc_polarisation_rel_error and rc_time_constant_rel_error),
    restored as they were saved; a file written before one (without the key) restores 0 and
    is accepted."""
    import json

    cfg = small(raw)
    rng = np.random.default_rng(7)
    a = Engine(cfg)
    for k in range(200):
        a.step(0.5 * k, noisy(rng, 8), noisy(rng, 2, 25.0, 0.1), 40.0 if (k // 30) % 2 else 0.0)
    blob = a.export_state()
    doc = json.loads(blob)
    sens = doc["cells"][key]
    assert len(sens) == 8 and any(abs(float(x)) > 0.0 for pair in sens for x in pair)
    b = Engine(cfg)
    b.import_state(blob)
    assert json.loads(b.export_state())["cells"][key] == sens
    del doc["cells"][key]
    c = Engine(cfg)
    c.import_state(json.dumps(doc).encode())
    assert all(float(x) == 0.0 for pair in json.loads(c.export_state())["cells"][key] for x in pair)
