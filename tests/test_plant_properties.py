"""Property: whatever the strings, commands, loads and step sizes, charge and energy balance."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mbms.plant import Plant

string_st = st.fixed_dictionaries(
    {
        "series": st.integers(1, 12),
        "parallel": st.integers(1, 4),
        "cell": st.sampled_from(["lg_m50_nmc", "a123_anr26650_lfp"]),
        "initial_soc": st.floats(0.05, 0.95),
        "r_extra_ohm": st.floats(0.0, 0.1),
        "contactors": st.fixed_dictionaries(
            {"close_time_s": st.floats(0.0, 0.05), "open_time_s": st.floats(0.0, 0.05), "r_precharge_ohm": st.floats(1.0, 100.0)}
        ),
        "variation": st.fixed_dictionaries({"soc_sigma": st.floats(0.0, 0.02), "self_discharge_a": st.floats(0.0, 1e-3)}),
    }
)

event_st = st.tuples(
    st.integers(0, 7),  # string (mod n)
    st.sampled_from(["open", "pre", "main", "main+bal"]),
    st.floats(-80.0, 120.0),  # load (A)
    st.floats(1e-3, 2.0),  # dt (s)
    st.integers(1, 10),  # steps
)


@settings(max_examples=40, deadline=None)
@given(
    strings=st.lists(string_st, min_size=1, max_size=6),
    events=st.lists(event_st, min_size=1, max_size=12),
    bleed=st.one_of(st.none(), st.floats(100.0, 1e6)),
    power=st.booleans(),
)
def test_charge_and_energy_balance_hold(strings: list[dict[str, Any]], events: list[Any], bleed: float | None, power: bool) -> None:
    d: dict[str, Any] = {"strings": strings, "bus": {"capacitance_f": 1e-3}}
    if bleed is not None:
        d["bus"]["r_bleed_ohm"] = bleed
    p = Plant(d, seed=1)
    n = p.n_strings
    for k_raw, cmd, load, dt, steps in events:
        k = k_raw % n
        s = p.series(k)
        p.set_command(
            k,
            neg=cmd != "open",
            pre=cmd == "pre",
            pos=cmd.startswith("main"),
            balance=[True] * s if cmd == "main+bal" else None,
        )
        if power:
            p.set_load_w(load * 10.0)
        else:
            p.set_load_a(load)
        for _ in range(steps):
            neg_before = [p.contactor_state(kk).neg for kk in range(n)]
            p.step(dt)
            i = p.string_current_a()
            rhs = p.load_a() + p.capacitor_current_a() + p.bleed_current_a()
            assert i.sum() == pytest.approx(rhs, rel=1e-8, abs=1e-8)
            e = p.energy()
            assert abs(e.residual) <= 1e-8 * max(1.0, e.cells_out + e.load)
            for kk in range(n):
                # open from before the step to its end: no path, no current
                if not neg_before[kk] and not p.contactor_state(kk).neg:
                    assert i[kk] == 0.0
