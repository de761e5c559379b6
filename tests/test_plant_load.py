"""Plant load: built-in profiles, power loads, overrides, per-string DC/DC converters."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from mbms.plant import Plant


def desc(load: dict[str, Any] | None = None, dcdc: bool = False, n: int = 2) -> dict[str, Any]:
    s: dict[str, Any] = {
        "series": 20,
        "parallel": 2,
        "cell": "lg_m50_nmc",
        "contactors": {"close_time_s": 0.0, "open_time_s": 0.0},
    }
    if dcdc:
        s["dcdc"] = {"max_a": 30.0, "efficiency": 0.95}
    d: dict[str, Any] = {"strings": [dict(s, initial_soc=0.5 + 0.1 * k) for k in range(n)]}
    if load:
        d["load"] = load
    return d


def closed(d: dict[str, Any]) -> Plant:
    p = Plant(d)
    for k in range(p.n_strings):
        p.set_command(k, neg=True, pos=True)
    p.step(0.01)
    return p


def test_drive_profile_is_periodic_with_traction_and_regen() -> None:
    p = closed(desc({"kind": "drive", "peak": 50.0, "period_s": 120.0, "regen_fraction": 0.3}))
    loads = []
    for _ in range(2400):
        p.step(0.1)
        loads.append(p.load_a())
    a = np.array(loads)
    assert a.max() == pytest.approx(50.0, rel=0.06) and a.min() == pytest.approx(-15.0, rel=0.01)
    assert (a > 5).mean() > 0.3 and (a < -1).mean() > 0.02
    # the profile repeats every period (the ripple is a function of absolute time, so compare
    # only its envelope: idle phases line up)
    idle = np.abs(a) < 1e-12
    np.testing.assert_array_equal(idle[:1200], idle[1200:])


def test_steps_profile_and_override() -> None:
    p = closed(desc({"kind": "steps", "t_s": [0.0, 1.0, 2.0], "value": [5.0, -5.0, 0.0]}))
    seen = []
    for _ in range(30):
        p.step(0.1)
        seen.append(round(p.load_a(), 9))
    assert seen[0] == 5.0 and seen[10] == -5.0 and seen[25] == 0.0
    p.set_load_a(12.0)
    p.step(0.1)
    assert p.load_a() == 12.0
    p.clear_load_override()
    p.step(0.1)
    assert p.load_a() == 0.0


def test_power_load_draws_p_over_v() -> None:
    p = closed(desc())
    p.set_load_w(5000.0)
    p.run(0.1, 20)
    assert p.load_a() * p.v_bus_v() == pytest.approx(5000.0, rel=1e-6)
    assert not p.load_limited()
    p.set_load_w(1e9)  # far beyond the maximum power point
    p.step(0.1)
    assert p.load_limited()


def test_no_load_without_a_closed_main() -> None:
    p = Plant(desc({"kind": "constant", "value": 30.0}))
    p.set_command(0, neg=True, pre=True)
    p.run(0.1, 5)
    assert p.load_a() == 0.0


def test_dcdc_setpoint_drives_the_string_current() -> None:
    p = closed(desc(dcdc=True))
    p.set_load_a(25.0)
    p.run(0.1, 5)
    p.set_command(0, neg=True, pos=True, dcdc_setpoint_a=12.0)
    p.set_command(1, neg=True, pos=True)  # passes through: holds the bus voltage
    for _ in range(50):
        p.step(0.1)
        i = p.string_current_a()
        assert i[0] == pytest.approx(12.0, abs=1e-12)
        e = p.energy()
        assert abs(e.residual) < 1e-9 * e.cells_out
    assert p.energy().loss_dcdc > 0
    # the converter delivers 12 A worth of power at 95 %: the passive string makes up the rest
    v_str = p.string_thevenin()[0][0] - p.string_thevenin()[1][0] * 12.0
    inj = 12.0 * v_str * 0.95 / p.v_bus_v()
    assert i[1] == pytest.approx(25.0 - inj, rel=2e-3)
    p.set_command(0, neg=True, pos=True, dcdc_setpoint_a=500.0)
    p.step(0.1)
    assert p.string_current_a()[0] == pytest.approx(30.0), "clamped to max_a"
