"""Balancing decisions at `decision_period_s`: held in between, but a cell that may no longer
bleed stops in the same step."""

from __future__ import annotations

import copy

import numpy as np

import tomllib

from mbms.engine import Engine, PackConfig
from mbms.paths import data_dir


def test_bleed_set_is_redecided_once_per_period_and_stops_at_once() -> None:
    d = copy.deepcopy(tomllib.loads((data_dir() / "packs" / "example_pack.toml").read_text()))
    d["pack"].update(series=8, temp_sensors=2)
    d["balancing"].update(mode="voltage", threshold=0.01, hysteresis=0.005, max_cells=0,
                          decision_period_s=1.0)
    eng = Engine(PackConfig.from_dict(d))
    rng = np.random.default_rng(5)
    dt = 0.1
    started_5 = None
    for k in range(30):
        t = k * dt
        v = 3.70 + 0.0002 * rng.standard_normal(8)
        v[3] += 0.03  # high from the start
        if t >= 0.25:
            v[5] += 0.03  # high from 0.3 s: may only start at the next decision (1.0 s)
        if t >= 1.45:
            v[3] = np.nan  # sense line lost: cell 3 must stop bleeding in this very step
        r = eng.step(t, v, np.array([25.0, 25.0]), 0.0)
        if k == 0:
            assert r.balance[3] and not r.balance[5]
        if r.balance[5] and started_5 is None:
            started_5 = t
        if t >= 1.45:
            assert not r.balance[3], t
        elif t > 0:
            assert r.balance[3], t
    assert started_5 is not None and abs(started_5 - 1.0) < 1e-9, started_5
