"""SOC and SOH accuracy of the pack engine against committed DFN reference traces (brief §5,
issue 16).

The legacy pair (mbms/data/traces/dfn_<cell>.npz, scripts/make_reference_traces.py) and the
family (mbms/data/traces/family, scripts/make_trace_family.py), split into a tuning and a
held-out set. The estimator settings are those a user's pack gets (cell file [estimator] table,
engine defaults; the harness states only the sensors); they were chosen on the tuning set, and
the accuracy tests below score the held-out set. The measurements are corrupted by
mbms.accuracy (seeded). No PyBaMM: only the committed .npz files.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from mbms import _core
from mbms.accuracy import (
    CONVERGENCE_WINDOW_S,
    LOAD_C,
    believed_start_soc,
    circuit_error,
    commissioned_pack,
    convergence,
    convergence_starts,
    soc_bin,
    trace_window,
    NEES_95,
    TARGETS,
    family_traces,
    Corruption,
    ReferenceTrace,
    corrupt,
    one_cell_pack,
    reference_traces,
    soc_accuracy,
)
from mbms.errors import ConfigError, InputError
from mbms.paths import cell_file

TRACES = reference_traces()


def test_reference_traces_are_committed_and_sane() -> None:
    assert set(TRACES) >= {"nmc", "lfp"}
    for name, path in TRACES.items():
        tr = ReferenceTrace.load(path)
        assert tr.t_s[-1] - tr.t_s[0] >= 3600.0, name  # at least one hour
        assert tr.dt_s == pytest.approx(1.0)
        assert np.ptp(tr.soc_true) > 0.3, name  # a real swing of SOC
        assert tr.i_a.max() > 2.0 * tr.capacity_ah and tr.i_a.min() < -0.4 * tr.capacity_ah, name
        # soc_true is coulomb counting of the current against the file's capacity
        dq = np.concatenate([[0.0], np.cumsum(0.5 * (tr.i_a[1:] + tr.i_a[:-1]) * np.diff(tr.t_s))]) / 3600.0
        assert np.max(np.abs(tr.soc_true[0] - dq / tr.capacity_ah - tr.soc_true)) < 1e-5, name
        model = _core.CellModel.from_toml(cell_file(tr.cell_file).read_text())
        assert model.capacity_ah == pytest.approx(tr.capacity_ah, rel=1e-6)
        # the trace starts at rest on the OCV of the parameter set
        assert abs(model.ocv(float(tr.soc_true[0]), 25.0) - tr.v_v[0]) < 2e-3, name


def test_corruption_is_seeded_and_applied() -> None:
    tr = ReferenceTrace.load(TRACES["nmc"])
    cell = _core.CellModel.from_toml(cell_file(tr.cell_file).read_text())
    a = corrupt(tr, Corruption(seed=3), cell)
    b = corrupt(tr, Corruption(seed=3), cell)
    c = corrupt(tr, Corruption(seed=4), cell)
    np.testing.assert_array_equal(a.v_cell_v, b.v_cell_v)
    np.testing.assert_array_equal(a.i_a, b.i_a)
    assert not np.array_equal(a.v_cell_v, c.v_cell_v)
    dv = a.v_cell_v[1:] - tr.v_v[1:]
    assert 0.0015 < np.std(dv) < 0.0025
    # gain +1 % and offset +0.01 A/Ah: regress the measured on the true current
    gain, offset = np.polyfit(tr.i_a, a.i_a, 1)
    assert gain == pytest.approx(1.01, abs=1e-3)
    assert offset == pytest.approx(0.01 * tr.capacity_ah, abs=2e-3)
    # the first sample reads the OCV 20 % below the true SOC
    assert a.soc_start_believed == pytest.approx(tr.soc_true[0] - 0.2)
    assert cell.soc_from_ocv(float(a.v_cell_v[0]), 25.0) == pytest.approx(tr.soc_true[0] - 0.2, abs=1e-3)


def test_harness_rejects_bad_inputs(tmp_path) -> None:
    with pytest.raises(InputError, match="not found"):
        ReferenceTrace.load(tmp_path / "nope.npz")
    np.savez(tmp_path / "bad.npz", t_s=np.arange(3.0), i_a=np.zeros(3))
    with pytest.raises(InputError, match="missing arrays"):
        ReferenceTrace.load(tmp_path / "bad.npz")
    cfg = one_cell_pack("lg_m50_nmc")
    cfg["pack"]["series"] = 2
    with pytest.raises(ConfigError):
        soc_accuracy(ReferenceTrace.load(TRACES["nmc"]), cfg)



# ---------------------------------------------------------------------------------------------
# The family: structure
# ---------------------------------------------------------------------------------------------

HELDOUT = family_traces("heldout")
TUNING = family_traces("tuning")


def test_family_is_split_and_covers_the_conditions() -> None:
    assert HELDOUT and TUNING and not set(HELDOUT) & set(TUNING)
    for split in (HELDOUT, TUNING):
        assert {n.split("_")[0] for n in split} == {"nmc", "lfp"}
    starts, temps, aged = [], [], 0
    for name, path in {**HELDOUT, **TUNING}.items():
        tr = ReferenceTrace.load(path)
        assert tr.dt_s == pytest.approx(1.0), name
        # soc_true is the coulomb count of the DFN's current over the (aged) cell's capacity
        dq = np.concatenate([[0.0], np.cumsum(0.5 * (tr.i_a[1:] + tr.i_a[:-1]) * np.diff(tr.t_s))]) / 3600.0
        assert np.max(np.abs(tr.soc_true[0] - dq / tr.capacity_ah - tr.soc_true)) < 2e-3, name
        # every trace has a full charge (CC-CV) and a rest of at least 10 min
        assert tr.soc_true.max() > 0.97, name
        rest = np.abs(tr.i_a) < 1e-6
        runs = np.diff(np.flatnonzero(np.diff(np.concatenate([[0], rest.astype(int), [0]]))))[::2]
        assert runs.max() >= 600, name
        starts.append(float(tr.soc_true[0]))
        temps.append(float(tr.temp_c[0]))
        aged += tr.capacity_ah < 0.95 * tr.capacity_nominal_ah
    assert min(starts) <= 0.06 and max(starts) >= 0.99
    assert {0.0, 10.0, 25.0, 40.0} <= {round(t) for t in temps}
    assert aged >= 4


# ---------------------------------------------------------------------------------------------
# Held-out accuracy. Figures measured with the shipped settings (seed 1); where a target is not
# met the test is a strict xfail carrying the measured figure (mbms bench soc prints them all).
# ---------------------------------------------------------------------------------------------

_RESULTS: dict = {}


def _result(name: str):
    if name not in _RESULTS:
        _RESULTS[name] = soc_accuracy(ReferenceTrace.load({**HELDOUT, **TUNING}[name]))
    return _RESULTS[name]


def _figures(name: str, r) -> str:
    rmse_t, max_t = TARGETS[r.chemistry]
    return (
        f"{name}: RMSE after 10 min {100 * r.rmse_after_settle:.3f} % (target {100 * rmse_t:.1f} %), "
        f"max after 10 min {100 * r.max_abs_after_settle:.3f} % (target {100 * max_t:.1f} %)"
    )


# name -> reason (measured figures) for held-out traces that miss a SOC target
SOC_MISSES: dict[str, str] = {
    'lfp_h5_drive_aged': 'measured (seed 1): RMSE after 10 min 4.33 %, max 8.95 % (cold start, 12 % faded: the charge from 36 to 100 % before a second anchor)',
    'nmc_h3_ess_aged': 'measured (seed 1): RMSE after 10 min 1.70 %, max 3.16 % (cold start, 18 % faded)',
    'nmc_h4_drive_aged': 'measured (seed 1): RMSE after 10 min 2.63 %, max 5.09 % (cold start, 10 % faded: the charge from 15 to 98 % before a second anchor)',
}


def _marked(names, misses):
    return [pytest.param(n, marks=pytest.mark.xfail(strict=True, reason=misses[n])) if n in misses else n for n in names]


@pytest.mark.parametrize("name", _marked(sorted(HELDOUT), SOC_MISSES))
def test_heldout_soc_meets_brief_targets(name: str) -> None:
    r = _result(name)
    # the engine did start 20 % off (the injected initial error took effect)
    assert abs(r.soc_est[0] - r.soc_true[0]) > 0.1
    assert r.meets_targets, _figures(name, r)


# The control of the cold-start misses: the same traces on a pack commissioned with the cell's
# measured capacity (`estimator.capacity_prior_ratio`, σ 2 %). Where it meets the targets, the
# miss above is the unknown capacity's, not the SOC filter's. lfp_h5 still misses its max
# (6.29 %, measured, at the first scored sample): it starts at 65 % on the A123 plateau, 20 %
# low, and after 10 min of drive the 6 % left is ~1.5 mV of OCV (55..65 %: 2.2 mV) under the
# cell monitor's 2 mV noise; from 15 min on it stays within 4.6 %.
COMMISSIONED_MISSES: dict[str, str] = {
    'lfp_h5_drive_aged': 'measured (seed 1): RMSE after 10 min 1.77 %, max 6.29 % (the first minutes on the plateau)',
}


@pytest.mark.parametrize("name", _marked(sorted(SOC_MISSES), COMMISSIONED_MISSES))
def test_a_cold_start_miss_is_the_unknown_capacity(name: str) -> None:
    tr = ReferenceTrace.load(HELDOUT[name])
    assert tr.capacity_ah < 0.95 * tr.capacity_nominal_ah  # an aged cell
    cfg = commissioned_pack(tr)
    assert cfg["estimator"]["capacity_prior_ratio"] == pytest.approx(tr.capacity_ah / tr.capacity_nominal_ah)
    r = soc_accuracy(tr, cfg)
    assert r.meets_targets, _figures(name, r)


# name -> reason for LFP held-out traces where the filter's σ does not cover its error (none
# since the RC time constants' consider term: lfp_h7_drive_aged_service was at 3.3σ in a rest
# after 2.6C pulses near empty, a relaxation slower than the circuit's; now 2.6σ)
CONSISTENCY_MISSES: dict[str, str] = {}


@pytest.mark.parametrize("name", _marked(sorted(n for n in HELDOUT if n.startswith("lfp")), CONSISTENCY_MISSES))
def test_lfp_filter_is_not_overconfident(name: str) -> None:
    """On LFP the filter's own σ must cover its error (AccuracyResult.consistent): after the
    first 10 min, the error stays within 3σ (the issue's failure: σ shrank on the plateau while
    the error stayed ~12 %), and the NEES lies above its 95 % chi-square band no more often than
    a consistent filter's would (a conservative σ is allowed)."""
    r = _result(name)
    after = r.t_s - r.t_s[0] >= r.settle_s
    err = np.abs(r.soc_est - r.soc_true)[after]
    sig = r.soc_sigma[after]
    # the harness's figures are those of the samples (not a stored verdict)
    assert r.max_err_over_sigma == pytest.approx(np.max(err / sig))
    assert r.within_3_sigma, f"{name}: max |e|/σ {r.max_err_over_sigma:.2f}"
    assert r.nees_above_95 <= 0.05, f"{name}: NEES above its 95 % bound in {r.nees_above_95:.1%}"
    assert r.consistent


# name -> reason for aged held-out cells whose SOH capacity / resistance misses its target
# (issue 16: capacity within 2 %, resistance within 5 %; the two are separate tests so that a
# capacity that meets its target passes even where the resistance does not)
CAPACITY_MISSES: dict[str, str] = {
    # its one capacity observation spans 16 % of SOC from a rest on the plateau (83.6 %), whose
    # OCV reading carries a σ of ~10 % of SOC: the estimate stays near the prior (a single
    # noisy rest sample had moved it to 0.898 on seed 1 and 0.989 on seed 3)
    'lfp_h4_ess_aged': 'measured (seed 1): capacity 0.968 vs 0.820 (+18.0 %)',
}
RESISTANCE_MISSES: dict[str, str] = {
    'lfp_h4_ess_aged': 'measured (seed 1): resistance ratio 1.61 vs 1.70 (-5.6 %), 9 steps',
    'lfp_h5_drive_aged': 'measured (seed 1): resistance ratio 1.59 vs 1.48 (+7.2 %)',
}
AGED = sorted(n for n in HELDOUT if "aged" in n)


@pytest.mark.parametrize("name", _marked(AGED, CAPACITY_MISSES))
def test_heldout_soh_capacity_of_aged_cells(name: str) -> None:
    r = _result(name)
    assert r.soh_capacity_true < 0.95  # really aged
    cap_err = r.soh_capacity / r.soh_capacity_true - 1.0
    assert abs(cap_err) <= 0.02, f"{name}: capacity {r.soh_capacity:.3f} vs {r.soh_capacity_true:.3f} ({100 * cap_err:+.2f} %)"


@pytest.mark.parametrize("name", _marked(AGED, RESISTANCE_MISSES))
def test_heldout_soh_resistance_of_aged_cells(name: str) -> None:
    r = _result(name)
    assert r.soh_resistance_true > 1.2  # really aged
    res_err = r.soh_resistance / r.soh_resistance_true - 1.0
    assert abs(res_err) <= 0.05, f"{name}: resistance {r.soh_resistance:.3f} vs {r.soh_resistance_true:.3f} ({100 * res_err:+.1f} %)"


# A fresh cell reads a resistance ratio of 1 whatever its duty: the step-resistance model
# (soh.rs r0_step_factor) takes out what a small step from rest reads above a large step
# between drive currents. Without it the storage traces read 1.20 (lfp_h1) and 1.49 (nmc_h5)
# and the drive traces 0.82 (lfp_h2) and 0.70 (nmc_h1). The cold storage trace (nmc_h5, 0 C)
# read 1.12 while its 0 C steps counted: below the cell file's r0_soh_min_temp_c (5 C) the
# step model is not fitted, and the SOH ratio now holds what warmer steps learnt (here none:
# the table's 1; the learning itself is proven in rust_core engine_tests
# the_soh_resistance_learns_only_inside_the_step_models_temperature_range).
FRESH_RESISTANCE_MISSES: dict[str, str] = {}
FRESH = sorted(n for n in HELDOUT if "aged" not in n)


@pytest.mark.parametrize("name", _marked(FRESH, FRESH_RESISTANCE_MISSES))
def test_heldout_fresh_cells_read_a_resistance_ratio_of_one(name: str) -> None:
    r = _result(name)
    assert r.soh_capacity_true == 1.0 and r.soh_resistance_true == 1.0  # really fresh
    assert abs(r.soh_resistance - 1.0) <= 0.05, f"{name}: resistance ratio {r.soh_resistance:.3f}"


SERVICE = sorted(n for n in HELDOUT if n.endswith("_aged_service"))


def test_in_service_traces_are_scored_after_their_history() -> None:
    """An aged cell in service: the trace's history (partial cycles with rests and full
    charges) runs through the engine, and the scored window starts where it ends, not after
    the first 10 min; the history holds the anchors the capacity is learnt between."""
    assert {n.split("_")[0] for n in SERVICE} == {"nmc", "lfp"}
    for name in SERVICE:
        tr = ReferenceTrace.load(HELDOUT[name])
        assert tr.capacity_ah < 0.9 * tr.capacity_nominal_ah, name
        assert tr.score_from_s > 3 * 3600.0, name  # three partial cycles
        hist = tr.t_s - tr.t_s[0] < tr.score_from_s
        assert np.sum(np.diff((tr.soc_true[hist] > 0.97).astype(int)) == 1) >= 3, f"{name}: a full charge per cycle"
        r = _result(name)
        assert r.settle_s == tr.score_from_s
        after = r.t_s - r.t_s[0] >= r.settle_s
        assert r.max_abs_after_settle == pytest.approx(float(np.max(np.abs(r.soc_est - r.soc_true)[after])))


def test_a_score_start_outside_the_trace_is_refused(tmp_path) -> None:
    d = dict(np.load(HELDOUT[SERVICE[0]], allow_pickle=False))
    d["score_from_s"] = np.float64(1e9)
    np.savez(tmp_path / "late.npz", **d)
    with pytest.raises(InputError, match="score_from_s"):
        ReferenceTrace.load(tmp_path / "late.npz")


def test_bench_soc_json_reports_the_heldout_figures() -> None:
    """`mbms bench soc --json` scores held-out traces only, with the harness's figures."""
    import json
    import subprocess
    import sys

    name = sorted(n for n in HELDOUT if n.startswith("lfp"))[0]
    # a tuning trace asked for is not scored in the held-out set: refused, named, nothing run
    tuning = sorted(TUNING)[0]
    bad = subprocess.run([sys.executable, "-m", "mbms", "bench", "soc", "--json", "--trace", name, "--trace", tuning],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and bad.stdout == ""
    assert f"--trace {tuning}: not a trace of the heldout set" in bad.stderr and name in bad.stderr
    out = subprocess.run([sys.executable, "-m", "mbms", "bench", "soc", "--json", "--trace", name],
                         capture_output=True, text=True, timeout=300, check=True).stdout
    d = json.loads(out)
    assert d["split"] == "heldout"
    assert [r["trace"] for r in d["results"]] == [name]
    row, r = d["results"][0], _result(name)
    assert row["rmse_after_10min_pct"] == pytest.approx(100 * r.rmse_after_settle)
    assert row["max_after_10min_pct"] == pytest.approx(100 * r.max_abs_after_settle)
    assert row["meets_targets"] == r.meets_targets
    # the consistency check, as the harness makes it
    assert row["max_err_over_sigma"] == pytest.approx(r.max_err_over_sigma)
    assert row["nees_above_95"] == pytest.approx(r.nees_above_95)
    assert row["consistent"] == r.consistent
    assert d["aggregate"]["LFP"]["traces"] == 1
    assert d["aggregate"]["LFP"]["consistent_traces"] == int(r.consistent)


def test_bench_soc_capacity_known_runs_the_commissioned_control() -> None:
    """`mbms bench soc --capacity-known` scores each trace on a pack commissioned with the cell's
    true capacity, and says so."""
    import json
    import subprocess
    import sys

    name = "nmc_h4_drive_aged"
    tr = ReferenceTrace.load(HELDOUT[name])
    out = subprocess.run([sys.executable, "-m", "mbms", "bench", "soc", "--json", "--capacity-known", "--trace", name],
                         capture_output=True, text=True, timeout=300, check=True).stdout
    d = json.loads(out)
    assert d["capacity_known"] is True
    row, r = d["results"][0], soc_accuracy(tr, commissioned_pack(tr))
    assert row["rmse_after_10min_pct"] == pytest.approx(100 * r.rmse_after_settle)
    # not the cold start's figures, which are measured beside it
    cold = _result(name)
    assert row["rmse_after_10min_pct"] != pytest.approx(100 * cold.rmse_after_settle, rel=0.05)
    assert row["meets_targets"] is True
    assert row["cold_start_rmse_after_10min_pct"] == pytest.approx(100 * cold.rmse_after_settle)
    assert row["cold_start_max_after_10min_pct"] == pytest.approx(100 * cold.max_abs_after_settle)
    assert row["cold_start_meets_targets"] is cold.meets_targets is False


def test_bench_soc_reports_where_an_in_service_trace_is_scored_from() -> None:
    import json
    import subprocess
    import sys

    name = [n for n in SERVICE if n.startswith("nmc")][0]
    out = subprocess.run([sys.executable, "-m", "mbms", "bench", "soc", "--json", "--trace", name],
                         capture_output=True, text=True, timeout=300, check=True).stdout
    row, r = json.loads(out)["results"][0], _result(name)
    assert row["in_service"] is True
    assert row["scored_from_s"] == pytest.approx(ReferenceTrace.load(HELDOUT[name]).score_from_s)
    assert row["max_after_10min_pct"] == pytest.approx(100 * r.max_abs_after_settle)


# ---------------------------------------------------------------------------------------------
# Convergence from a 20 % error, the engine powered up anywhere in a trace (issue 16, NMC:
# "converge from a 20 % initial error within minutes anywhere in the SOC range")
# ---------------------------------------------------------------------------------------------


def _error_series(tr: ReferenceTrace, start: int, c: Corruption) -> tuple[np.ndarray, np.ndarray]:
    """The error of the engine powered up at ``start`` over the convergence window, by the
    accuracy harness itself (the convergence figures must be this series read out)."""
    t_rel = tr.t_s - tr.t_s[0]
    stop = int(np.searchsorted(t_rel, t_rel[start] + CONVERGENCE_WINDOW_S, side="right"))
    win = trace_window(tr, start, stop)
    r = soc_accuracy(win, corruption=c, settle_s=0.0)
    return win.t_s - win.t_s[0], r.soc_est - r.soc_true


def test_convergence_starts_cover_the_soc_bins_with_a_window_left() -> None:
    tr = ReferenceTrace.load(HELDOUT["nmc_h2_pulse"])
    starts = convergence_starts(tr)
    bins = [int(soc_bin(tr.soc_true[k])) for k in starts]
    assert len(set(bins)) == len(bins) >= 8, bins  # one start per bin, most of the range
    t_rel = tr.t_s - tr.t_s[0]
    assert all(t_rel[-1] - t_rel[k] >= CONVERGENCE_WINDOW_S for k in starts)
    # most of them under load: the pulse trace charges and discharges between its rests
    assert sum(abs(tr.i_a[k]) > 0.5 for k in starts) >= 6


@pytest.mark.parametrize("side", [-1, 1])
def test_an_nmc_engine_powered_up_under_load_20_percent_off_converges_within_minutes(side: int) -> None:
    """A drive trace at 70 % SOC and 2.7C discharge: the start-up σ covers the polarisation
    the first reading cannot see (engine/cells.rs, Cells::initialize), so the voltage is let in
    and the error is within the NMC max target after minutes; with the rest-assumption σ alone
    it stayed 18..19 % off for the whole half hour."""
    tr = ReferenceTrace.load(HELDOUT["nmc_h1_drive"])
    k = next(k for k in convergence_starts(tr) if 0.6 <= tr.soc_true[k] < 0.7)
    assert tr.i_a[k] > 2.0 * tr.capacity_ah  # under a discharge above 2C at power-up
    c = Corruption(initial_error_direction=side)
    r = convergence(tr, k, c)
    assert r.initial_error == pytest.approx(side * 0.2)
    assert r.converged_after_s is not None and r.converged_after_s <= 15 * 60, r
    # the figures are the harness's error series read out
    t, err = _error_series(tr, k, c)
    assert abs(err[0]) == pytest.approx(0.2, abs=1e-6)  # the engine did start 20 % off
    tol = TARGETS["NMC"][1]
    assert np.all(np.abs(err[t >= r.converged_after_s]) <= tol)
    assert np.abs(err[t < r.converged_after_s]).max() > tol
    assert r.max_abs_after_settle == pytest.approx(np.abs(err[t >= 600.0]).max())
    # and the engine's σ covers its error after 10 min (the start-up σ under load is honest)
    assert r.max_err_over_sigma <= 3.0, r


def test_soc_bins_are_tenths_with_full_in_the_last() -> None:
    assert [int(soc_bin(z)) for z in (0.0, 0.0999, 0.1, 0.55, 0.9, 1.0)] == [0, 0, 1, 5, 9, 9]


def test_convergence_inputs_are_checked() -> None:
    with pytest.raises(InputError, match="initial_error_direction"):
        Corruption(initial_error_direction=2)
    with pytest.raises(InputError, match="initial_soc_error"):
        Corruption(initial_soc_error=-0.1)
    tr = ReferenceTrace.load(HELDOUT["nmc_h1_drive"])
    with pytest.raises(InputError, match="window"):
        trace_window(tr, 10, 5)
    # the side toward the middle is the default; a forced side beyond the range is clamped
    assert believed_start_soc(0.7, Corruption()) == pytest.approx(0.5)
    assert believed_start_soc(0.3, Corruption()) == pytest.approx(0.5)
    assert believed_start_soc(0.9, Corruption(initial_error_direction=1)) == 1.0


def test_bench_soc_convergence_json_reports_each_start() -> None:
    import json
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "mbms", "bench", "soc", "--convergence", "--json",
                          "--trace", "nmc_h1_drive"], capture_output=True, text=True, timeout=300, check=True).stdout
    d = json.loads(out)
    assert d["bench"] == "soc-convergence" and d["window_s"] == CONVERGENCE_WINDOW_S
    rows = d["results"]
    tr = ReferenceTrace.load(HELDOUT["nmc_h1_drive"])
    starts = convergence_starts(tr)
    # both sides where 20 % fits inside the SOC range, one side where it does not
    expected = sum(int(tr.soc_true[k] - 0.2 >= 0.0) + int(tr.soc_true[k] + 0.2 <= 1.0) for k in starts)
    assert len(rows) == expected
    agg = d["aggregate"]["NMC"]
    assert agg["starts"] == len(rows)
    assert agg["converged"] == sum(r["converged_after_s"] is not None for r in rows)
    assert sum(b["starts"] for b in agg["bins"].values()) == len(rows)
    # each row is the harness's figure for that start
    row = rows[0]
    k = int(np.argmin(np.abs((tr.t_s - tr.t_s[0]) - row["start_s"])))
    r = convergence(tr, k, Corruption(initial_error_direction=1 if row["initial_error_pct"] > 0 else -1))
    assert row["max_after_10min_pct"] == pytest.approx(100 * r.max_abs_after_settle)
    assert row["converged_after_s"] == r.converged_after_s
    assert row["max_err_over_sigma_after_10min"] == pytest.approx(r.max_err_over_sigma)
    assert agg["within_3_sigma_after_10min"] == sum(x["max_err_over_sigma_after_10min"] <= 3.0 for x in rows)


# ---------------------------------------------------------------------------------------------
# The circuit's own error (mbms bench soc --circuit)
# ---------------------------------------------------------------------------------------------

def _circuit_trace(cell_name: str, *, capacity_scale: float = 1.0, resistance_scale: float = 1.0,
                   aged: bool = False) -> ReferenceTrace:
    """A trace the cell file's own circuit made: from a minute's rest (as the family's traces
    start, so the first sample's SOC is the start's), 1C discharge, rest, C/2 charge, at 1 s and
    25 C."""
    text = cell_file(cell_name).read_text()
    model = _core.CellModel.from_toml(text)
    q = model.capacity_ah * capacity_scale
    i = np.concatenate([np.zeros(60), np.full(900, q), np.zeros(600), np.full(1200, -0.5 * q), np.zeros(300)])
    v, z = model.simulate(0.8, i.tolist(), 1.0, 25.0, capacity_scale=capacity_scale, resistance_scale=resistance_scale)
    soc = np.asarray(z)  # the circuit's state after each sample's step, as its voltage
    return ReferenceTrace(
        name="circuit", t_s=np.arange(1.0, len(i) + 1.0), i_a=i, v_v=np.asarray(v), soc_true=soc,
        temp_c=np.full(len(i), 25.0), cell_file=cell_name, capacity_ah=q, split="tuning",
        capacity_nominal_ah=model.capacity_ah if aged else float("nan"),
        r_ratio_true=resistance_scale if aged else float("nan"))


def test_circuit_error_is_nil_on_the_circuits_own_trace_and_measures_an_offset() -> None:
    tr = _circuit_trace("lg_m50_nmc")
    r = circuit_error(tr)
    assert r.load_samples == 900 + 1200
    assert r.rms_mv < 1e-6 and r.p95_mv < 1e-6 and r.soc_path_max_pct < 1e-9
    # 10 mV under load, none at rest: measured as 10 mV, and twice that as twice the SOC
    load = np.abs(tr.i_a) >= LOAD_C * tr.capacity_ah
    r10 = circuit_error(replace(tr, v_v=tr.v_v + 0.010 * load))
    r20 = circuit_error(replace(tr, v_v=tr.v_v + 0.020 * load))
    assert r10.rms_mv == pytest.approx(10.0) and r10.p95_mv == pytest.approx(10.0)
    assert r20.rms_over_stated == pytest.approx(2 * r10.rms_over_stated)
    assert r20.soc_equivalent_median_pct == pytest.approx(2 * r10.soc_equivalent_median_pct)
    # the LG M50's OCV rises 5..15 mV per % SOC between 40 and 80 %: 10 mV is 0.6..2 %
    assert 0.5 < r10.soc_equivalent_median_pct < 2.0


def test_circuit_error_runs_an_aged_trace_with_its_capacity_and_resistance() -> None:
    tr = _circuit_trace("a123_anr26650_lfp", capacity_scale=0.85, resistance_scale=1.5, aged=True)
    r = circuit_error(tr)
    assert r.aged and r.rms_mv < 1e-6 and r.soc_path_max_pct < 1e-9
    # the same voltages read as a fresh cell's: the circuit runs on the file's resistance
    fresh = circuit_error(replace(tr, capacity_nominal_ah=float("nan"), r_ratio_true=float("nan")))
    assert not fresh.aged and fresh.rms_mv > 5.0


def test_circuit_error_refuses_an_uneven_sample_period() -> None:
    tr = _circuit_trace("lg_m50_nmc")
    t = tr.t_s.copy()
    t[100:] += 0.5
    with pytest.raises(InputError, match="fixed sample period"):
        circuit_error(replace(tr, t_s=t))


def test_the_stated_model_error_is_held_through_a_charge_and_released_over_a_rest() -> None:
    import tomllib

    text = cell_file("lg_m50_nmc").read_text()
    est = tomllib.loads(text)["estimator"]
    s0, per_c, relax_s = est["model_error_v"], est["model_error_v_per_c"], est["model_error_relax_s"]
    model = _core.CellModel.from_toml(text)
    q = model.capacity_ah
    # 1C discharge, C/2 charge tapering to C/20 (a CV phase), rest
    i = [q] * 10 + [-0.5 * q] * 10 + [-0.05 * q] * 10 + [0.0] * 600
    s = model.stated_model_error_v(i, 1.0, 0.02)
    assert s[5] == pytest.approx(np.hypot(s0, per_c * 1.0))
    assert s[15] == pytest.approx(s[5])  # the charge holds the larger discharge load
    assert s[25] == pytest.approx(s[5])  # and the taper does not release it
    assert s[-1] == pytest.approx(np.hypot(s0, per_c * np.exp(-600 / relax_s)), rel=1e-3)
    with pytest.raises(ValueError, match="dt_s"):
        model.stated_model_error_v(i, 0.0, 0.02)


def test_bench_soc_circuit_json_reports_each_trace() -> None:
    import json
    import subprocess
    import sys

    names = ["nmc_h4_drive_aged", "lfp_h1_ess"]
    out = subprocess.run([sys.executable, "-m", "mbms", "bench", "soc", "--circuit", "--json",
                          *(a for n in names for a in ("--trace", n))],
                         capture_output=True, text=True, timeout=300, check=True).stdout
    d = json.loads(out)
    assert d["bench"] == "soc-circuit" and d["load_c"] == LOAD_C
    rows = {r["trace"]: r for r in d["results"]}
    assert set(rows) == set(names)
    for n in names:
        r = circuit_error(ReferenceTrace.load(HELDOUT[n]))
        assert rows[n]["rms_mv"] == pytest.approx(r.rms_mv)
        assert rows[n]["soc_equivalent_median_pct"] == pytest.approx(r.soc_equivalent_median_pct)
    assert rows["nmc_h4_drive_aged"]["aged"] is True and rows["lfp_h1_ess"]["aged"] is False
    assert d["aggregate"]["NMC"]["rms_mv_pooled"] == pytest.approx(rows["nmc_h4_drive_aged"]["rms_mv"])


def test_bench_soc_circuit_runs_on_a_users_own_trace_folder(tmp_path) -> None:
    """`--data DIR` with a trace file written in the documented format (ReferenceTrace): the
    circuit's own trace reads 0 mV, one with 15 mV more under load reads 15 mV."""
    import json
    import subprocess
    import sys

    tr = _circuit_trace("lg_m50_nmc")
    load = np.abs(tr.i_a) >= LOAD_C * tr.capacity_ah
    for name, v in (("mine_exact", tr.v_v), ("mine_offset", tr.v_v + 0.015 * load)):
        np.savez(tmp_path / f"{name}.npz", t_s=tr.t_s, i_a=tr.i_a, v_v=v, soc_true=tr.soc_true, temp_c=tr.temp_c,
                 cell_file="lg_m50_nmc", capacity_ah=tr.capacity_ah, split="heldout",
                 capacity_nominal_ah=tr.capacity_ah, r_pulse_ohm=0.02, r_pulse_fresh_ohm=0.02)
    out = subprocess.run([sys.executable, "-m", "mbms", "bench", "soc", "--circuit", "--json", "--data", str(tmp_path)],
                         capture_output=True, text=True, timeout=300, check=True).stdout
    rows = {r["trace"]: r for r in json.loads(out)["results"]}
    assert set(rows) == {"mine_exact", "mine_offset"}
    assert rows["mine_exact"]["rms_mv"] < 1e-6
    assert rows["mine_offset"]["rms_mv"] == pytest.approx(15.0)
    assert rows["mine_offset"]["aged"] is False
