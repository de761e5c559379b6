"""Plant sensors (seeded noise, offset, gain, quantisation, sampling) and injected faults."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from mbms.errors import ConfigError
from mbms.plant import Plant


def desc(n: int = 2, series: int = 12, sensors: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    return {
        "strings": [
            {
                "series": series,
                "parallel": 2,
                "cell": "lg_m50_nmc",
                "initial_soc": 0.6,
                "contactors": {"close_time_s": 0.03, "open_time_s": 0.01},
                "sensors": sensors or {},
            }
            for _ in range(n)
        ],
        **extra,
    }


NOISY = {
    "cell_voltage": {"noise": 0.002, "lsb": 0.0001},
    "cell_temp": {"noise": 0.3, "lsb": 0.1},
    "current": {"noise": 0.1, "offset": 0.5, "gain_error": 0.01},
    "string_voltage": {"noise": 0.05},
    "bus_voltage": {"noise": 0.05},
}


def readings(seed: int) -> list[np.ndarray]:
    p = Plant(desc(sensors=NOISY), seed=seed)
    out = []
    for _ in range(5):
        p.step(0.1)
        m = p.measure(1)
        out.append(np.concatenate([m.v_cell_v, m.t_cell_c, [m.i_a, m.v_string_v, m.v_bus_v]]))
    return out


def test_seeded_noise_is_reproducible() -> None:
    a, b, c = readings(11), readings(11), readings(12)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert any(not np.array_equal(x, z) for x, z in zip(a, c))


def test_noise_offset_gain_and_lsb_statistics() -> None:
    p = Plant(desc(n=1, series=4, sensors=NOISY), seed=3)
    p.set_command(0, neg=True, pos=True)
    p.set_load_a(20.0)
    p.run(0.1, 2)
    v_true = p.string_voltage_v()[0] / 4  # cells are alike (no variation)
    i_true = p.string_current_a()[0]
    p.set_load_a(20.0)
    cells, currents = [], []
    for _ in range(3000):
        m = p.measure(0)  # period 0: a fresh sample at every call
        cells.append(m.v_cell_v)
        currents.append(m.i_a)
    cells_a = np.array(cells)
    assert cells_a.std() == pytest.approx(0.002, rel=0.05)
    assert cells_a.mean() == pytest.approx(v_true, abs=2e-4)
    steps = cells_a / 1e-4
    np.testing.assert_allclose(steps, np.round(steps), atol=1e-6)
    cur = np.array(currents)
    assert cur.std() == pytest.approx(0.1, rel=0.05)
    assert cur.mean() == pytest.approx(i_true * 1.01 + 0.5, abs=0.01)


def test_sampling_period_holds_readings() -> None:
    p = Plant(desc(n=1, sensors={"cell_voltage": {"noise": 0.01, "period_s": 1.0}}), seed=1)
    p.step(0.1)
    first = p.measure(0).v_cell_v.copy()  # sampled at t = 0.1
    for _ in range(9):
        p.step(0.1)
        np.testing.assert_array_equal(p.measure(0).v_cell_v, first)
    p.step(0.1)  # t = 1.1: next sample due
    assert not np.array_equal(p.measure(0).v_cell_v, first)


def test_sensor_faults_stuck_offset_open_wire() -> None:
    p = Plant(desc(n=1), seed=0)
    p.set_command(0, neg=True, pos=True)
    p.run(0.1, 2)
    p.inject(kind="sensor_stuck", string=0, sensor="cell_voltage", channel=0)
    p.inject(kind="sensor_offset", string=0, sensor="cell_voltage", channel=1, offset=0.1)
    p.inject(kind="sensor_open_wire", string=0, sensor="cell_voltage", channel=5)
    p.inject(kind="sensor_open_wire", string=0, sensor="cell_temp", channel=2)
    p.inject(kind="sensor_offset", string=0, sensor="current", offset=3.0)
    m = p.measure(0)
    i_true = p.string_current_a()[0]  # the bus capacitor charging
    stuck = m.v_cell_v[0]
    assert m.v_cell_v[1] == pytest.approx(m.v_cell_v[2] + 0.1, abs=1e-9)
    assert m.v_cell_v[5] == 0.0
    assert m.v_cell_v[4] == pytest.approx(2 * m.v_cell_v[3], abs=1e-9)
    assert m.t_cell_c[2] == -40.0
    assert m.i_a == pytest.approx(i_true + 3.0, abs=1e-9)
    p.set_load_a(40.0)
    p.run(0.1, 10)
    m = p.measure(0)
    assert m.v_cell_v[0] == stuck
    assert m.v_cell_v[2] < stuck - 0.02, "the healthy channels see the load"
    assert m.i_a == pytest.approx(p.string_current_a()[0] + 3.0, abs=1e-9)
    assert p.string_current_a()[0] == pytest.approx(40.0, abs=0.01)


def test_sensors_lost() -> None:
    p = Plant(desc(), seed=0)
    p.step(0.1)
    p.inject({"kind": "sensors_lost", "string": 1})
    m = p.measure(1)
    assert not m.valid and np.isnan(m.v_cell_v).all() and np.isnan(m.i_a)
    assert p.measure(0).valid


def test_contactor_timing_and_faults() -> None:
    p = Plant(desc(n=3), seed=0)
    for k in range(3):
        p.set_command(k, neg=True, pre=True)
    p.step(0.02)
    assert p.measure(0).feedback.neg is False, "not closed before close_time_s"
    p.step(0.02)
    assert p.contactor_state(0).neg and p.measure(0).feedback.pre
    p.inject(kind="contactor_welded", string=0, contactor="pre")
    p.inject(kind="contactor_fails_to_close", string=1, contactor="pos")
    p.inject(kind="contactor_feedback_wrong", string=2, contactor="pos")
    for k in range(3):
        p.set_command(k, neg=True, pos=True)
    p.run(0.1, 3)
    s0, s1, s2 = (p.contactor_state(k) for k in range(3))
    assert s0.pre and s0.pos, "welded precharge relay stays closed"
    assert not s1.pos and not p.measure(1).feedback.pos
    assert s2.pos and p.measure(2).feedback.pos is False, "feedback reports the opposite"
    assert p.string_current_a()[1] == 0.0, "string 1 has no path to the bus"


def test_internal_short_and_capacity_fade() -> None:
    p = Plant(desc(n=1, series=6), seed=0)
    p.inject(kind="internal_short", string=0, element=2, r_short_ohm=10.0)
    p.inject(kind="capacity_fade", string=0, element=4, factor=0.5)
    assert p.cell_capacity_scale(0)[4] == pytest.approx(0.5)
    p.run(1.0, 3600)
    z = p.cell_soc(0)
    # ~0.37 A per cell for an hour out of 5 Ah: ~7.4 % SOC
    assert 0.06 < z[0] - z[2] < 0.09
    assert z[0] == pytest.approx(0.6, abs=1e-9)
    assert p.cell_temp_c(0)[2] > p.cell_temp_c(0)[0] + 1.0, "the short heats its element"
    assert p.energy().loss_internal > 0


def test_scheduled_faults_apply_at_their_time() -> None:
    d = desc(n=2, faults=[{"at_s": 1.0, "fault": {"kind": "sensors_lost", "string": 1}}])
    p = Plant(d, seed=0)
    p.run(0.1, 9)
    assert p.measure(1).valid
    p.run(0.1, 2)
    assert not p.measure(1).valid


def test_bad_faults_are_rejected_naming_the_field() -> None:
    p = Plant(desc(n=2), seed=0)
    with pytest.raises(ConfigError) as e:
        p.inject(kind="sensor_stuck", string=0, sensor="cell_voltage", channel=99)
    assert e.value.field == "fault.channel"
    with pytest.raises(ConfigError) as e:
        p.inject(kind="sensor_stuck", string=5, sensor="cell_voltage")
    assert e.value.field == "fault.string"
    with pytest.raises(ConfigError) as e:
        p.inject(kind="melt_down", string=0)
    assert "melt_down" in str(e.value)


def test_balancing_bleeds_the_selected_elements() -> None:
    p = Plant(desc(n=1, series=4), seed=0)
    p.set_command(0, balance=[True, False, False, True])
    p.run(10.0, 360)
    z = p.cell_soc(0)
    # ~3.9 V / 33 Ω / 2 cells ≈ 59 mA per cell for an hour out of 5 Ah: ~1.2 % SOC
    assert z[0] == pytest.approx(z[3]) and z[1] == pytest.approx(z[2])
    assert 0.010 < z[1] - z[0] < 0.014


def test_measurement_before_the_first_step_reads_the_cells_at_rest() -> None:
    """A BMU that samples at power-up (before any plant step) must see its cells' OCV, not zeros:
    the engine takes its start-up SOC from that first sample."""
    from mbms import _core
    from mbms.paths import cell_file
    from mbms.plant import Plant

    p = Plant({"strings": [{"series": 8, "parallel": 2, "cell": "lg_m50_nmc", "initial_soc": 0.6}]}, seed=3)
    m = p.measure(0)
    cell = _core.CellModel.from_toml(cell_file("lg_m50_nmc").read_text())
    assert m.valid and m.t_s == 0.0
    assert abs(float(m.v_cell_v.mean()) - cell.ocv(0.6, 25.0)) < 0.01
