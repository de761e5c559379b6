"""Plant physics against closed forms: current sharing (brief §4), circulating current, charge
and energy conservation, precharge RC curve, inrush, thermal steady state."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mbms import _core
from mbms.plant import Plant

# A cell with flat resistance tables, so the closed forms below are exact: OCV linear
# 3.0 -> 3.7 V over SOC 0..0.5 (slope 1.4 V) and 3.7 -> 4.2 V above.
R0, R1, TAU1, Q_AH = 0.02, 0.01, 10.0, 5.0
CELL = f"""
name = "flat test cell"
chemistry = "NMC"
source = "test"
capacity_ah = {Q_AH}
v_min_v = 2.5
v_max_v = 4.2
t_ref_c = 25.0
[ocv]
soc = [0.0, 0.5, 1.0]
v = [3.0, 3.7, 4.2]
[resistance]
temp_c = [25.0]
soc = [0.0, 1.0]
r0_ohm = [[{R0}, {R0}]]
r1_ohm = [[{R1}, {R1}]]
tau1_s = [{TAU1}]
[thermal]
mass_kg = 0.07
cp_j_per_kg_k = 1100.0
"""


@pytest.fixture()
def cell_path(tmp_path: Path) -> Path:
    p = tmp_path / "flat.toml"
    p.write_text(CELL)
    return p


def ocv_cell(soc: float) -> float:
    return 3.0 + 1.4 * soc if soc <= 0.5 else 3.7 + 1.0 * (soc - 0.5)


def desc(cell: Path, socs: list[float], r_extra: list[float], series: int = 10, parallel: int = 2, **bus: Any) -> dict[str, Any]:
    return {
        "bus": {"capacitance_f": 2e-3, **bus},
        "thermal": {"g_cool_w_per_k": 1e4},  # isothermal at 25 °C unless a test says otherwise
        "strings": [
            {
                "series": series,
                "parallel": parallel,
                "cell": str(cell),
                "initial_soc": z,
                "r_extra_ohm": r,
                "contactors": {"close_time_s": 0.0, "open_time_s": 0.0, "r_precharge_ohm": 20.0},
            }
            for z, r in zip(socs, r_extra)
        ],
    }


def close_all(p: Plant) -> None:
    for k in range(p.n_strings):
        p.set_command(k, neg=True, pos=True)


def section4(ocv: np.ndarray, r: np.ndarray, i_total: float) -> tuple[float, np.ndarray]:
    g = np.sum(1.0 / r)
    v = (np.sum(ocv / r) - i_total) / g
    return v, (ocv - v) / r


@pytest.mark.parametrize("n", range(2, 9))
def test_first_step_split_matches_section_4(cell_path: Path, n: int) -> None:
    rng = np.random.default_rng(n)
    socs = list(rng.uniform(0.1, 0.9, n))
    r_extra = list(rng.uniform(0.005, 0.05, n))
    s, par, dt, i_load = 10, 2, 0.01, 60.0
    ocv = np.array([s * ocv_cell(z) for z in socs])
    # from rest, over one step of dt the RC pair adds R1·(1 − e^{−dt/τ1}) (exact ZOH)
    r_cells = s / par * (R0 + R1 * (1.0 - math.exp(-dt / TAU1)))
    r = r_cells + np.array(r_extra)
    v_expected, i_expected = section4(ocv, r, i_load)
    # start the bus capacitor at the answer so that it carries no current
    p = Plant(desc(cell_path, socs, r_extra, s, par, v_initial_v=v_expected))
    close_all(p)
    p.set_load_a(i_load)
    p.step(dt)
    i = p.string_current_a()
    assert abs(p.capacitor_current_a()) < 1e-6
    np.testing.assert_allclose(i, i_expected, rtol=1e-9, atol=1e-9)
    assert abs(p.v_bus_v() - v_expected) < 1e-9
    assert abs(i.sum() - i_load) < 1e-9


@pytest.mark.parametrize("n", [2, 5, 8])
def test_steady_split_uses_dc_resistance(cell_path: Path, n: int) -> None:
    """Under a steady load the RC pairs settle and strings share per §4 with R = R0 + R1.

    Not exact: the string currents keep drifting as the SOCs part, and the RC pairs lag that
    drift by ~τ1 (tens of mA here); with R0 alone the split would be off by ~30 %."""
    rng = np.random.default_rng(100 + n)
    socs = list(rng.uniform(0.55, 0.9, n))  # upper, linear OCV segment
    r_extra = list(rng.uniform(0.005, 0.05, n))
    s, par, i_load = 10, 2, 40.0
    p = Plant(desc(cell_path, socs, r_extra, s, par))
    close_all(p)
    p.set_load_a(i_load)
    p.run(0.1, 1500)  # 150 s = 15 τ1
    z = np.array([p.cell_soc(k).mean() for k in range(n)])
    ocv = s * (3.7 + (z - 0.5))
    r = s / par * (R0 + R1) + np.array(r_extra)
    _, i_expected = section4(ocv, r, i_load + p.capacitor_current_a())
    np.testing.assert_allclose(p.string_current_a(), i_expected, rtol=5e-3, atol=0.1)


def test_circulating_current_at_rest_follows_ocv_physics(cell_path: Path) -> None:
    s, par = 10, 2
    p = Plant(desc(cell_path, [0.1, 0.4], [0.02, 0.02], s, par))
    close_all(p)
    p.run(1.0, 60)  # polarisation settles (6 τ1)
    r_loop = 2 * (s / par * (R0 + R1) + 0.02)
    q_c = par * Q_AH * 3600.0
    # d(ΔOCV)/dt = −S·k·(2/Q)·I with I = ΔOCV / R_loop  ->  τ = R_loop·Q / (2·S·k), k = 1.4 V
    tau = r_loop * q_c / (2 * s * 1.4)
    i = p.string_current_a()
    assert i[1] > 0 > i[0], "the fuller string discharges into the emptier one"
    assert abs(i.sum()) < 1e-6
    spread0 = p.cell_soc(1).mean() - p.cell_soc(0).mean()
    i0 = i[1]
    prev = i0
    for _ in range(10):
        p.run(1.0, 100)
        i_now = p.string_current_a()[1]
        assert 0 < i_now < prev
        prev = i_now
    spread1 = p.cell_soc(1).mean() - p.cell_soc(0).mean()
    assert 0 < spread1 < spread0, "SOCs converge"
    # exponential decay with the predicted time constant
    assert prev / i0 == pytest.approx(math.exp(-1000.0 / tau), rel=0.02)
    # charge moved from one string to the other (equal capacities: mean SOC constant, but
    # for the charge the bus capacitor took at closing)
    m0 = (p.cell_soc(0).mean() + p.cell_soc(1).mean()) / 2
    assert m0 == pytest.approx(0.25 - 2e-3 * p.v_bus_v() / (2 * q_c), abs=1e-9)


def test_charge_and_energy_conservation_every_step(cell_path: Path) -> None:
    p = Plant(desc(cell_path, [0.3, 0.5, 0.7], [0.01, 0.03, 0.02], r_bleed_ohm=5000.0))
    soc0 = [p.cell_soc(k).copy() for k in range(3)]
    p.set_command(1, neg=True, pre=True)
    e_load = 0.0
    dt = 0.05
    for step in range(4000):
        # (the bus is stiff once mains are closed: V at the end of a step is its mean)
        if step == 40:
            close_all(p)
        if step == 2000:
            p.set_command(2, balance=[True, False] * 5, neg=True, pos=True)
        p.set_load_a(50.0 if (step // 300) % 2 == 0 else -20.0)
        p.step(dt)
        i = p.string_current_a()
        rhs = p.load_a() + p.capacitor_current_a() + p.bleed_current_a()
        assert i.sum() == pytest.approx(rhs, rel=1e-9, abs=1e-9)
        e = p.energy()
        assert abs(e.residual) < 1e-9 * max(1.0, e.cells_out)
        e_load += p.load_a() * p.v_bus_v() * dt
    e = p.energy()
    assert e.load == pytest.approx(e_load, rel=1e-4)
    assert e.loss_cells > 0 and e.loss_wiring > 0 and e.loss_bus_bleed > 0 and e.loss_internal > 0
    # chemical energy out of the cells, independently: Σ P·Q·∫OCV dz over each element
    zz = np.linspace(0, 1, 200001)
    cum = np.concatenate([[0.0], np.cumsum(0.5 * (np.vectorize(ocv_cell)(zz[1:]) + np.vectorize(ocv_cell)(zz[:-1])) * np.diff(zz))])
    expected = 0.0
    for k in range(3):
        z0, z1 = soc0[k], p.cell_soc(k)
        expected += 2 * Q_AH * 3600 * np.sum(np.interp(z0, zz, cum) - np.interp(z1, zz, cum))
    assert e.cells_out == pytest.approx(expected, rel=2e-4)


def test_precharge_follows_rc_curve_and_is_exact_per_step(cell_path: Path) -> None:
    c, r_pre = 2e-3, 20.0
    runs = {}
    for dt in (1e-3, 1e-2):
        p = Plant(desc(cell_path, [0.6], [0.01]))
        p.set_command(0, neg=True, pre=True)
        vs = p.string_ocv_v()[0]
        times, volts = [], []
        for _ in range(int(round(0.2 / dt))):
            p.step(dt)
            times.append(p.t_s)
            volts.append(p.v_bus_v())
        r_total = r_pre + p.string_thevenin()[1][0]
        expected = vs * (1 - np.exp(-np.array(times) / (r_total * c)))
        np.testing.assert_allclose(volts, expected, atol=2e-4 * vs)
        runs[dt] = dict(zip(np.round(times, 6), volts))
        assert p.load_a() == 0.0, "no load while only the precharge path is closed"
    common = [t for t in runs[1e-2] if t in runs[1e-3]]
    assert len(common) == 20
    for t in common:
        assert runs[1e-2][t] == pytest.approx(runs[1e-3][t], abs=2e-3)


def test_inrush_when_main_closes_at_a_voltage_difference(cell_path: Path) -> None:
    p = Plant(desc(cell_path, [0.6], [0.01]))
    p.set_command(0, neg=True, pre=True)
    # stop the precharge early, at about 1.5 τ
    p.run(1e-3, 60)
    dv = p.string_ocv_v()[0] - p.v_bus_v()
    assert dv > 5.0
    v_before = p.v_bus_v()
    p.set_command(0, neg=True, pos=True)
    p.step(1e-3)
    e, r = p.string_thevenin()
    # E is the OCV less the polarisation the precharge current left (a few mV)
    assert e[0] == pytest.approx(v_before + dv, abs=0.05 * dv)
    assert p.string_peak_current_a()[0] == pytest.approx((e[0] - v_before) / r[0], rel=1e-9)
    # then the bus capacitor charges through the string: τ = R·C ≈ 0.2 ms
    v_end = e[0] - (e[0] - v_before) * math.exp(-1e-3 / (r[0] * 2e-3))
    assert p.v_bus_v() == pytest.approx(v_end, abs=1e-9)
    assert p.string_current_a()[0] * 1e-3 == pytest.approx(2e-3 * (v_end - v_before), rel=1e-9)


def test_closing_onto_a_loaded_bus_circulates_dv_over_r(cell_path: Path) -> None:
    p = Plant(desc(cell_path, [0.3, 0.7], [0.02, 0.02]))
    p.set_command(0, neg=True, pos=True)
    p.run(0.1, 20)
    dv = p.string_ocv_v()[1] - p.v_bus_v()
    p.set_command(1, neg=True, pos=True)
    p.step(0.1)
    e, r = p.string_thevenin()
    assert p.string_peak_current_a()[1] == pytest.approx(dv / r[1], rel=1e-3)
    assert p.string_current_a()[1] == pytest.approx(dv / (r[0] + r[1]), rel=0.02)


def test_thermal_steady_state(cell_path: Path) -> None:
    d = desc(cell_path, [0.9], [0.0], series=5, parallel=1)
    d["thermal"] = {"g_cool_w_per_k": 0.3, "g_ambient_w_per_k": 0.02, "g_neighbour_w_per_k": 0.5, "coolant_c": 20.0, "ambient_c": 20.0}
    p = Plant(d)
    close_all(p)
    i = 5.0
    p.set_load_a(i)
    p.run(1.0, 3000)  # τ = m·cp/g ≈ 240 s
    q = i * i * (R0 + R1)  # steady polarisation: v1 = R1·i
    rise = q / (0.3 + 0.02)  # all elements equal: no conduction between them
    np.testing.assert_allclose(p.cell_temp_c(0), 20.0 + rise, rtol=0, atol=0.02 * rise)
    # cooling failure: the string heats towards the ambient-only steady state
    p.inject(kind="cooling_failure", string=0)
    p.run(1.0, 600)
    assert np.all(p.cell_temp_c(0) > 20.0 + 1.5 * rise)


def test_cell_model_used_by_the_plant(cell_path: Path) -> None:
    """A 1s1p string under a current step reproduces mbms._core.CellModel.simulate."""
    p = Plant(desc(cell_path, [0.8], [0.0], series=1, parallel=1, capacitance_f=1e-9))
    close_all(p)
    model = _core.CellModel.from_toml(CELL)
    currents = [5.0] * 100 + [0.0] * 100
    v_plant = []
    for i in currents:
        p.set_load_a(i)
        p.step(0.1)
        v_plant.append(p.string_voltage_v()[0])
    v_model, soc_model = model.simulate(0.8, list(p_i for p_i in currents), 0.1, 25.0)
    np.testing.assert_allclose(v_plant, v_model, atol=2e-6)
    assert p.cell_soc(0)[0] == pytest.approx(soc_model[-1], abs=1e-9)
