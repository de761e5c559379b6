#!/usr/bin/env python3
"""Make the SOC/SOH evaluation family: DFN reference traces split into a tuning set and a held-out
set (issue 16), written to python/mbms/data/traces/family/<name>.npz plus index.json.

    PYBAMM_DISABLE_TELEMETRY=true python scripts/make_trace_family.py [--only NAME ...]

Development tool: needs the ``dev`` extra (pybamm, scipy). Nothing under python/mbms imports
PyBaMM; ``mbms bench soc`` and the tests read only the committed .npz files.

Each trace is one PyBaMM DFN cell (NMC: Chen2020, LFP: Prada2013) run through a
``pybamm.Experiment`` of current-driven profiles written here (seeded), rests and CC-CV full
charges (constant current to the cell's upper voltage, then constant voltage until the current
tapers below C/20: the synchronisation point a real charger gives). Profiles:

* ``drive``: synthetic urban/highway traction current with regenerative pulses (as in
  make_reference_traces.py), rests, a full charge, more driving;
* ``pulse``: random discharge/charge pulses 0.3..3C with short rests, long rest, full charge;
* ``ess``: energy-storage slow cycles (C/5..C/2 discharge, long rests, full charge, partial
  discharge), the duty of a stationary parallel-string battery;
* ``ess_full``: an energy-storage full cycle: a CC-CV full charge, a rest, a C/5 discharge down
  to the knee (2.8 V per cell, a usual LFP storage cut-off), a rest and a partial recharge: the
  full-to-empty cycle on which an LFP system learns its capacity (issue 16's synchronisation
  points).

Start SOCs span 5..100 % (a start below 40 % charges first), temperatures 0, 10, 25, 40 C
(isothermal, or lumped thermal for NMC, whose set has thermal data). Aged cells: both electrodes'
active-material volume fractions scaled by ``cap`` (capacity scales with them, the stoichiometry
window is unchanged) and a contact resistance added (PyBaMM option "contact resistance") of
(``res`` - 1) x the fresh cell's 1 s pulse resistance. The true capacity is ``cap`` x the TOML
capacity; the true resistance ratio is measured: a 1 s, 1C pulse at 50 % SOC on the aged and on the
fresh cell at the trace temperature (``r_pulse_ohm``, ``r_pulse_fresh_ohm``).

Arrays (float32, 1 s): t_s, i_a (discharge positive), v_v, soc_true (coulomb count of the DFN's
current over the true capacity), temp_c. Scalars: capacity_ah (true), capacity_nominal_ah,
cell_file, split, r_pulse_ohm, r_pulse_fresh_ohm, model.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import tomllib
from dataclasses import asdict, dataclass
from pathlib import Path

os.environ.setdefault("PYBAMM_DISABLE_TELEMETRY", "true")

import numpy as np  # noqa: E402

try:
    import pybamm  # noqa: E402
except ImportError as exc:  # pragma: no cover - dev tool
    sys.exit(f"make_trace_family.py needs the dev extra (pip install -e '.[dev]'): {exc}")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
from make_reference_traces import _power_from_speed, _speed_profile  # noqa: E402

OUT = ROOT / "python" / "mbms" / "data" / "traces" / "family"
CHEM = {
    "nmc": {"set": "Chen2020", "toml": "lg_m50_nmc.toml"},
    "lfp": {"set": "Prada2013", "toml": "a123_anr26650_lfp.toml"},
}


@dataclass(frozen=True)
class Spec:
    name: str
    chem: str
    profile: str
    soc0: float
    temp_c: float
    thermal: str  # isothermal | lumped
    split: str  # tuning | heldout
    seed: int
    cap: float = 1.0  # capacity ratio of an aged cell
    res: float = 1.0  # resistance ratio of an aged cell (contact resistance added)
    # in-service cycles before the scored profile (see `steps_for`); the trace is scored
    # from the end of the last one (`score_from_s`)
    history: int = 0


# The family. Tuning and held-out sets cover the same kinds of condition with different seeds,
# start SOCs and temperatures; no held-out trace shares a (profile, soc0, temp) with a tuning one.
FAMILY = [
    # NMC tuning
    Spec("nmc_t1_drive", "nmc", "drive", 0.80, 25, "lumped", "tuning", 101),
    Spec("nmc_t2_ess", "nmc", "ess", 0.30, 10, "isothermal", "tuning", 102),
    Spec("nmc_t3_pulse_aged", "nmc", "pulse", 0.60, 40, "isothermal", "tuning", 103, 0.85, 1.4),
    Spec("nmc_t4_pulse_cold", "nmc", "pulse", 0.80, 0, "isothermal", "tuning", 104),
    # NMC held-out
    Spec("nmc_h1_drive", "nmc", "drive", 0.95, 25, "isothermal", "heldout", 201),
    Spec("nmc_h2_pulse", "nmc", "pulse", 0.05, 10, "isothermal", "heldout", 202),
    Spec("nmc_h3_ess_aged", "nmc", "ess", 1.00, 25, "lumped", "heldout", 203, 0.82, 1.5),
    Spec("nmc_h4_drive_aged", "nmc", "drive", 0.50, 40, "isothermal", "heldout", 204, 0.90, 1.3),
    Spec("nmc_h5_ess_cold", "nmc", "ess", 0.70, 0, "isothermal", "heldout", 205),
    # LFP tuning
    Spec("lfp_t1_drive", "lfp", "drive", 0.80, 25, "isothermal", "tuning", 301),
    Spec("lfp_t2_ess", "lfp", "ess", 0.30, 10, "isothermal", "tuning", 302),
    Spec("lfp_t3_pulse_aged", "lfp", "pulse", 0.60, 40, "isothermal", "tuning", 303, 0.85, 1.4),
    Spec("lfp_t4_ess_full", "lfp", "ess_full", 0.40, 10, "isothermal", "tuning", 304),
    Spec("lfp_t5_ess_cold", "lfp", "ess", 0.75, 0, "isothermal", "tuning", 305),
    # LFP held-out
    Spec("lfp_h1_ess", "lfp", "ess", 0.85, 25, "isothermal", "heldout", 401),
    Spec("lfp_h2_drive", "lfp", "drive", 0.50, 10, "isothermal", "heldout", 402),
    Spec("lfp_h3_pulse", "lfp", "pulse", 0.15, 25, "isothermal", "heldout", 403),
    Spec("lfp_h4_ess_aged", "lfp", "ess", 1.00, 40, "isothermal", "heldout", 404, 0.82, 1.5),
    Spec("lfp_h5_drive_aged", "lfp", "drive", 0.65, 25, "isothermal", "heldout", 405, 0.88, 1.35),
    Spec("lfp_h6_ess_full_aged", "lfp", "ess_full", 0.70, 25, "isothermal", "heldout", 406, 0.85, 1.3),
    # Held-out, aged cells in service: the same ageing range, reached after `history` partial
    # cycles the BMS has seen (issue 16: "SOH on the aged held-out cells: capacity and
    # resistance after a few partial cycles"); scored after them. Nothing is tuned on these.
    Spec("nmc_h6_drive_aged_service", "nmc", "drive", 0.70, 25, "isothermal", "heldout", 206, 0.88, 1.35, 3),
    Spec("nmc_h7_ess_aged_service", "nmc", "ess", 0.60, 25, "lumped", "heldout", 207, 0.84, 1.45, 3),
    Spec("lfp_h7_drive_aged_service", "lfp", "drive", 0.60, 25, "isothermal", "heldout", 407, 0.86, 1.4, 3),
    Spec("lfp_h8_ess_aged_service", "lfp", "ess", 0.50, 40, "isothermal", "heldout", 408, 0.80, 1.5, 3),
]


# --------------------------------------------------------------------------------------------
# Profiles (lists of Experiment steps)
# --------------------------------------------------------------------------------------------


def _drive(rng: np.random.Generator, kind: str, n: int, c: float, scale: float) -> np.ndarray:
    p = _power_from_speed(_speed_profile(rng, kind, n))
    return np.clip(p / 30000.0 * 2.5 * c * scale, -1.0 * c, 3.0 * c)


def _pulses(rng: np.random.Generator, n: int, c: float, scale: float) -> np.ndarray:
    out: list[float] = []
    while len(out) < n:
        amp = rng.uniform(0.3, 3.0) * c * scale if rng.uniform() < 0.65 else -rng.uniform(0.3, 1.0) * c
        out += [amp] * int(rng.integers(2, 30)) + [0.0] * int(rng.integers(5, 60))
    return np.array(out[:n])


def _ess(rng: np.random.Generator, n: int, c: float, scale: float) -> np.ndarray:
    """Slow stationary-storage duty: steps of C/5..C/2 lasting minutes with short pauses."""
    out: list[float] = []
    while len(out) < n:
        out += [rng.uniform(0.2, 0.5) * c * scale] * int(rng.integers(120, 900)) + [0.0] * int(rng.integers(0, 120))
    return np.array(out[:n])


def _cycle(arr: np.ndarray) -> object:
    t = np.arange(len(arr) + 1, dtype=float)
    return pybamm.step.current(np.column_stack([t, np.append(arr, arr[-1])]))


# SOC planned at the end of the in-service history: a full charge, then a discharge of at most
# `HISTORY_DOD` (the load's net, capped)
HISTORY_DOD = 0.55


def steps_for(spec: Spec, c: float, v_max: float) -> tuple[list, int]:
    """Experiment steps and how many of them are the in-service history: start at rest; charge
    first from a low start; a CC-CV full charge in every trace; the load amplitude scaled so the
    planned SOC stays above 8 %.

    History (``spec.history`` cycles): each a CC-CV full charge, a 20-minute rest, a partial
    discharge of the profile's own load (at most ``HISTORY_DOD`` of the capacity) and a
    20-minute rest: a parked car or a storage system between its daily charge and its evening
    discharge. The rests are rest points and the full charges synchronisation points, the
    anchors a BMS in service learns its capacity between."""
    rng = np.random.default_rng(spec.seed)
    if spec.profile == "ess_full":
        return [
            "Rest for 600 seconds",
            "Charge at C/3 until " + f"{v_max} V",
            f"Hold at {v_max} V until C/20",
            "Rest for 1800 seconds",
            "Discharge at C/5 until 2.8 V",
            "Rest for 1200 seconds",
            "Charge at C/3 for 3600 seconds",
            "Rest for 1200 seconds",
        ], 0
    gen = {"drive": None, "pulse": _pulses, "ess": _ess}[spec.profile]

    def load(n: int, budget: float) -> np.ndarray:
        """A load block whose net discharge is at most `budget` (fraction of capacity)."""
        if spec.profile == "drive":
            kinds = ["urban", "highway"]
            arr = np.concatenate([_drive(rng, kinds[k % 2], n // 2, c, 1.0) for k in range(2)])
        else:
            arr = gen(rng, n, c, 1.0)
        net = float(np.sum(arr)) / 3600.0 / c
        if net > budget:
            pos = arr > 0
            arr = np.where(pos, arr * (budget / net) ** 1.0, arr)  # scale discharge only
            net2 = float(np.sum(arr)) / 3600.0 / c
            if net2 > budget:  # regen part was large: scale once more
                arr = np.where(pos, arr * budget / max(net2, 1e-9), arr)
        return arr

    cc_rate = {"drive": "C/2", "pulse": "C/2", "ess": "C/3"}[spec.profile]
    full = [f"Charge at {cc_rate} until {v_max} V", f"Hold at {v_max} V until C/20"]
    rest = lambda s: f"Rest for {s} seconds"  # noqa: E731
    steps: list = [rest(60)]
    soc = spec.soc0
    if spec.history:
        n_load = 3600 if spec.profile == "drive" else 6000
        for _ in range(spec.history):
            steps += full + [rest(1200), _cycle(load(n_load, HISTORY_DOD)), rest(1200)]
        soc = 1.0 - HISTORY_DOD
    n_history = len(steps) if spec.history else 0
    if soc < 0.4:
        steps += [_cycle(load(900, max(soc - 0.08, 0.0) * 0.8)), rest(600)]
        steps += full + [rest(900)]
        steps += [_cycle(load(1800, 0.5)), rest(900)]
    else:
        n1 = 1800 if spec.profile != "ess" else 2400
        steps += [_cycle(load(n1, soc - 0.12)), rest(1200 if spec.profile == "ess" else 600)]
        steps += full + [rest(600)]
        steps += [_cycle(load(900, 0.3)), rest(600)]
    return steps, n_history


# --------------------------------------------------------------------------------------------
# DFN
# --------------------------------------------------------------------------------------------


def _params(spec: Spec, fresh: bool) -> tuple[pybamm.ParameterValues, dict]:
    pv = pybamm.ParameterValues(CHEM[spec.chem]["set"])
    t_k = spec.temp_c + 273.15
    pv.update({"Ambient temperature [K]": t_k, "Initial temperature [K]": t_k})
    pv.update(
        {
            "Upper voltage cut-off [V]": pv["Upper voltage cut-off [V]"] + 0.2,
            "Lower voltage cut-off [V]": pv["Lower voltage cut-off [V]"] - 0.2,
        }
    )
    options: dict = {"thermal": spec.thermal if not fresh else "isothermal"}
    if not fresh and (spec.cap != 1.0 or spec.res != 1.0):
        for side in ("Negative", "Positive"):
            key = f"{side} electrode active material volume fraction"
            pv.update({key: pv[key] * spec.cap})
    return pv, options


def pulse_resistance(spec: Spec, c: float, fresh: bool, contact_ohm: float = 0.0) -> float:
    """1 s, 1C discharge pulse from rest at 50 % SOC: (V_rest - V_1s) / I."""
    pv, options = _params(spec, fresh)
    if contact_ohm > 0:
        options = {**options, "contact resistance": "true"}
        pv.update({"Contact resistance [Ohm]": contact_ohm}, check_already_exists=False)
    options["thermal"] = "isothermal"
    model = pybamm.lithium_ion.DFN(options=options)
    exp = pybamm.Experiment(["Rest for 10 seconds", f"Discharge at {c} A for 1 second"], period="0.1 second")
    sim = pybamm.Simulation(model, parameter_values=pv, experiment=exp, solver=pybamm.IDAKLUSolver(rtol=1e-6, atol=1e-8))
    sol = sim.solve(initial_soc=0.5)
    v = sol["Voltage [V]"].entries
    i = sol["Current [A]"].entries
    return float((v[np.flatnonzero(i < 1e-9)[-1]] - v[-1]) / c)


def make(spec: Spec) -> Path:
    info = CHEM[spec.chem]
    cell = tomllib.loads((ROOT / "python" / "mbms" / "data" / "cells" / info["toml"]).read_text())
    cap_nom = float(cell["capacity_ah"])
    cap = cap_nom * spec.cap
    v_max = float(cell["v_max_v"])
    t0 = time.time()
    r_fresh = pulse_resistance(spec, cap_nom, fresh=True)
    contact = (spec.res - 1.0) * r_fresh if spec.res != 1.0 else 0.0
    pv, options = _params(spec, fresh=False)
    if contact > 0:
        options["contact resistance"] = "true"
        pv.update({"Contact resistance [Ohm]": contact}, check_already_exists=False)
    r_aged = pulse_resistance(spec, cap, fresh=False, contact_ohm=contact) if (spec.cap, spec.res) != (1.0, 1.0) else r_fresh
    model = pybamm.lithium_ion.DFN(options=options)
    steps, n_history = steps_for(spec, cap, v_max)
    exp = pybamm.Experiment(steps, period="1 second")
    sim = pybamm.Simulation(model, parameter_values=pv, experiment=exp, solver=pybamm.IDAKLUSolver(rtol=1e-5, atol=1e-7))
    sol = sim.solve(initial_soc=spec.soc0)
    # the scored part starts where the history's last step ends (0: the whole trace is scored
    # after the harness's settle time)
    score_from_s = float(sol.cycles[n_history - 1]["Time [s]"].entries[-1]) if n_history else 0.0
    t_raw = sol["Time [s]"].entries
    i_raw = sol["Current [A]"].entries
    v_raw = sol["Voltage [V]"].entries
    temp_raw = sol["Volume-averaged cell temperature [K]"].entries - 273.15
    # true SOC: the solver's points carry the current piecewise (steps join at equal times), so
    # the trapezoid integral over the raw points is the charge moved
    q_as = np.concatenate([[0.0], np.cumsum(0.5 * (i_raw[1:] + i_raw[:-1]) * np.diff(t_raw))])
    soc_raw = spec.soc0 - q_as / (3600.0 * cap)
    # one sample per whole second; where two points share a time (a step boundary) the later
    # one (the new step's current) is taken
    keep = np.append(np.diff(t_raw) > 1e-9, True)
    t_u, i_u, v_u, s_u, T_u = (a[keep] for a in (t_raw, i_raw, v_raw, soc_raw, temp_raw))
    t_s = np.arange(1.0, np.floor(t_u[-1]) + 1.0)
    idx = np.searchsorted(t_u, t_s - 1e-6)
    i_a, v_v, soc, temp = i_u[idx], v_u[idx], s_u[idx], T_u[idx]
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"{spec.name}.npz"
    np.savez_compressed(
        path,
        t_s=t_s.astype(np.float32),
        i_a=i_a.astype(np.float32),
        v_v=v_v.astype(np.float32),
        soc_true=soc.astype(np.float32),
        temp_c=temp.astype(np.float32),
        capacity_ah=np.float64(cap),
        capacity_nominal_ah=np.float64(cap_nom),
        cell_file=np.str_(info["toml"]),
        split=np.str_(spec.split),
        r_pulse_ohm=np.float64(r_aged),
        r_pulse_fresh_ohm=np.float64(r_fresh),
        score_from_s=np.float64(score_from_s),
        model=np.str_(f"PyBaMM {pybamm.__version__} DFN, {info['set']}, thermal {spec.thermal}; {json.dumps(asdict(spec))}"),
    )
    print(
        f"[{spec.name}] {len(t_s)} s in {time.time() - t0:.0f} s: V {v_v.min():.3f}..{v_v.max():.3f}, "
        f"SOC {soc.min():.3f}..{soc.max():.3f}, T {temp.min():.1f}..{temp.max():.1f} C, R ratio {r_aged / r_fresh:.3f}, "
        f"{path.stat().st_size / 1024:.0f} KiB",
        flush=True,
    )
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="*", help="names of the traces to (re)make; default: all")
    args = ap.parse_args(argv)
    specs = [s for s in FAMILY if not args.only or s.name in args.only]
    for s in specs:
        try:
            make(s)
        except Exception as exc:  # one failed trace must not lose the others
            print(f"[{s.name}] FAILED: {exc!r}", flush=True)
    index = {s.name: asdict(s) for s in FAMILY if (OUT / f"{s.name}.npz").exists()}
    (OUT / "index.json").write_text(json.dumps(index, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
