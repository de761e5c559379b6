#!/usr/bin/env python3
"""Make the physics-based reference traces (small float32 .npz files): ``dfn_<cell>.npz`` in
python/mbms/data/traces/ (shipped: ``mbms bench soc`` reads them), ``thevenin_<cell>.npz`` in tests/data/.

    python scripts/make_reference_traces.py [--cell nmc|lfp|all] [--kind dfn|thevenin|all]

Development tool: needs the ``dev`` extra (pybamm, scipy). The tests read only the committed
``.npz`` files; nothing under ``python/mbms`` imports PyBaMM.

Two kinds of trace per cell (NMC: PyBaMM Chen2020 / python/mbms/data/cells/lg_m50_nmc.toml; LFP: Prada2013 /
python/mbms/data/cells/a123_anr26650_lfp.toml):

``dfn_<cell>.npz``: the DFN (lumped thermal for NMC, whose set has thermal data; isothermal 25 C for
  LFP, whose set has none) under a seeded drive-like current profile written here (synthetic urban
  and highway driving with regenerative braking, random pulses, rests, a CC charge; about 1.5 h),
  sampled every 1 s. Arrays: t_s, i_a (discharge positive, linear between samples as fed to the
  DFN), v_v (terminal), soc_true (initial SOC minus the exact integral of the DFN's current over the
  capacity in the TOML file; the DFN's own charge counter is checked against it), temp_c (cell).

``thevenin_<cell>.npz``: PyBaMM's equivalent-circuit model (``pybamm.equivalent_circuit.Thevenin``)
  with the parameters of the TOML file (OCV table, R0, R1 and C1 = tau1/R1, and R2/C2 when the
  file has a second pair; the tables evaluated at the fixed temperature and resampled like the
  Rust model does: onto the uniform 201-point SOC grid, clamped at the ends) under a seeded
  piecewise-constant dynamic profile. The current is held constant over each 1 s sample (the
  solver is stepped segment by segment with the current as an input), so the trace is the exact
  continuous-time response to a zero-order-hold current: sample k holds i_a[k] over
  (t_s[k] - dt, t_s[k]] and v_v[k] is the voltage at t_s[k] with that current, the convention of
  ``mbms._core.CellModel.simulate``. Arrays: t_s, i_a, v_v, soc; scalars soc0, temp_c, dt_s,
  cell_file.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import tomllib
from pathlib import Path

os.environ.setdefault("PYBAMM_DISABLE_TELEMETRY", "true")

import numpy as np  # noqa: E402

try:
    import pybamm  # noqa: E402
except ImportError as exc:  # pragma: no cover - dev tool
    sys.exit(f"make_reference_traces.py needs the dev extra (pip install -e '.[dev]'): {exc}")

ROOT = Path(__file__).resolve().parents[1]
CELLS = {
    "nmc": {"set": "Chen2020", "toml": "lg_m50_nmc.toml", "thermal": "lumped", "soc0": 0.8, "seed": 11, "thevenin_temp_c": 31.0},
    "lfp": {"set": "Prada2013", "toml": "a123_anr26650_lfp.toml", "thermal": "isothermal", "soc0": 0.8, "seed": 12, "thevenin_temp_c": 25.0},
}
SOC_GRID = np.linspace(0.0, 1.0, 201)  # cell_model.rs SOC_GRID_POINTS


# --------------------------------------------------------------------------------------------
# Profiles
# --------------------------------------------------------------------------------------------


def _speed_profile(rng: np.random.Generator, kind: str, duration_s: int) -> np.ndarray:
    """A synthetic speed trace (m/s) at 1 s: urban stop-and-go or highway cruising."""
    v = []
    while len(v) < duration_s:
        if kind == "urban":
            top = rng.uniform(8.0, 15.0)  # 30..55 km/h
            acc, dec = rng.uniform(0.8, 1.8), rng.uniform(0.8, 2.2)
            cruise, stop = int(rng.uniform(5, 40)), int(rng.uniform(5, 25))
        else:
            top = rng.uniform(22.0, 33.0)  # 80..120 km/h
            acc, dec = rng.uniform(0.4, 1.0), rng.uniform(0.3, 1.0)
            cruise, stop = int(rng.uniform(60, 240)), 0
        start = v[-1] if v else 0.0
        v += list(np.arange(start, top, acc))
        base = top
        for _ in range(cruise):  # cruising with a wandering speed
            base = float(np.clip(base + rng.normal(0, 0.4), 0.7 * top, 1.15 * top))
            v.append(base)
        if kind == "urban" or rng.uniform() < 0.3:
            v += list(np.arange(base, 0.0, -dec)) + [0.0] * stop
    return np.array(v[:duration_s])


def _power_from_speed(speed: np.ndarray) -> np.ndarray:
    """Traction power (arbitrary scale) of a car: inertia + rolling + aero; regen at 60 %."""
    acc = np.gradient(speed)
    p = speed * (1500.0 * acc + 1500.0 * 9.81 * 0.011) + 0.5 * 1.2 * 0.62 * speed**3
    return np.where(p > 0, p, 0.6 * p)


def drive_profile(capacity_ah: float, seed: int) -> np.ndarray:
    """Seeded dynamic current profile (A, discharge positive) at 1 s, ~1.9 h.

    rest 60 s | urban 1200 s | highway 1500 s | rest 300 s | random pulses 600 s | rest 300 s |
    urban 900 s | rest 600 s | CC charge at C/2 1200 s | rest 300 s
    Traction power of a car (30 kW <-> 2.5C), clipped to 3C discharge and 1C regenerative
    charge, scaled to the cell's capacity; takes a cell from 80 % to about 25 % and back to 40 %.
    """
    rng = np.random.default_rng(seed)
    c = capacity_ah

    def drive(kind: str, n: int) -> np.ndarray:
        p = _power_from_speed(_speed_profile(rng, kind, n))
        return np.clip(p / 30000.0 * 2.5 * c, -1.0 * c, 3.0 * c)

    def pulses(n: int) -> np.ndarray:
        out: list[float] = []
        while len(out) < n:
            if rng.uniform() < 0.65:
                amp = rng.uniform(0.3, 3.0) * c
            else:
                amp = -rng.uniform(0.3, 1.0) * c
            out += [amp] * int(rng.integers(2, 30)) + [0.0] * int(rng.integers(5, 60))
        return np.array(out[:n])

    rest = lambda n: np.zeros(n)  # noqa: E731
    parts = [
        rest(60),
        drive("urban", 1200),
        drive("highway", 1500),
        rest(300),
        pulses(600),
        rest(300),
        drive("urban", 900),
        rest(600),
        np.full(1200, -0.5 * c),
        rest(300),
    ]
    return np.concatenate(parts)


def zoh_profile(capacity_ah: float, seed: int, duration_s: int = 2400) -> np.ndarray:
    """Seeded piecewise-constant current (A) at 1 s for the Thevenin cross-check: segments of
    1..60 s at -1.5C..+2.5C with rests, SOC kept inside 0.1..0.9 by the caller's soc0."""
    rng = np.random.default_rng(seed)
    out: list[float] = []
    while len(out) < duration_s:
        if rng.uniform() < 0.25:
            out += [0.0] * int(rng.integers(5, 120))
        else:
            amp = rng.uniform(-1.5, 2.5) * capacity_ah
            out += [amp] * int(rng.integers(1, 60))
    return np.array(out[:duration_s])


def soc_from_current(soc0: float, t_s: np.ndarray, i_a: np.ndarray, capacity_ah: float) -> np.ndarray:
    """True SOC: coulomb counting of the current fed to the DFN. That current is linear between
    the samples, so the trapezoid rule is its exact integral (the DFN's "Discharge capacity"
    variable is the same integral, but only to the solver's tolerance)."""
    q = np.concatenate([[0.0], np.cumsum(0.5 * (i_a[1:] + i_a[:-1]) * np.diff(t_s))])
    return soc0 - q / (3600.0 * capacity_ah)


# --------------------------------------------------------------------------------------------
# DFN reference
# --------------------------------------------------------------------------------------------


def make_dfn(key: str, out_dir: Path) -> Path:
    spec = CELLS[key]
    cell = tomllib.loads((ROOT / "python" / "mbms" / "data" / "cells" / spec["toml"]).read_text())
    cap = float(cell["capacity_ah"])
    current = drive_profile(cap, spec["seed"])
    t = np.arange(len(current), dtype=float)
    pv = pybamm.ParameterValues(spec["set"])
    pv.update({"Current function [A]": pybamm.Interpolant(t, current, pybamm.t, interpolator="linear")})
    t_k = 298.15
    pv.update({"Ambient temperature [K]": t_k, "Initial temperature [K]": t_k})
    # Short regenerative pulses near full charge may overshoot the cell's upper cut-off by a few
    # tens of mV; the cut-off events would end the run, so they are widened by 0.2 V here (the
    # voltage range reached is printed and stored).
    pv.update(
        {
            "Upper voltage cut-off [V]": pv["Upper voltage cut-off [V]"] + 0.2,
            "Lower voltage cut-off [V]": pv["Lower voltage cut-off [V]"] - 0.2,
        }
    )
    options = {"thermal": spec["thermal"]}
    model = pybamm.lithium_ion.DFN(options=options)
    solver = pybamm.IDAKLUSolver(rtol=1e-5, atol=1e-7)
    sim = pybamm.Simulation(model, parameter_values=pv, solver=solver)
    t0 = time.time()
    # every 1 s sample is a solver stop: the current has a kink there, and an adaptive step
    # grown during a rest would otherwise step over a short pulse altogether
    sol = sim.solve(t_eval=t, t_interp=t, initial_soc=spec["soc0"])
    t_s = sol["Time [s]"].entries
    if len(t_s) != len(t) or abs(t_s[-1] - t[-1]) > 1e-6:
        raise RuntimeError(f"DFN for {key} stopped at t = {t_s[-1]:.0f} s (voltage limit?)")
    i_a = sol["Current [A]"].entries
    v_v = sol["Voltage [V]"].entries
    q_ah = sol["Discharge capacity [A.h]"].entries
    temp_c = sol["Volume-averaged cell temperature [K]"].entries - 273.15
    soc_true = soc_from_current(spec["soc0"], t_s, i_a, cap)
    # the DFN's own charge counter agrees to the solver tolerance
    if np.max(np.abs(q_ah - (spec["soc0"] - soc_true) * cap)) > 1e-3 * cap:
        raise RuntimeError("DFN discharge capacity disagrees with the integral of its current")
    path = out_dir / f"dfn_{key}.npz"
    np.savez_compressed(
        path,
        t_s=t_s.astype(np.float32),
        i_a=i_a.astype(np.float32),
        v_v=v_v.astype(np.float32),
        soc_true=soc_true.astype(np.float32),
        temp_c=temp_c.astype(np.float32),
        soc0=np.float64(spec["soc0"]),
        capacity_ah=np.float64(cap),
        cell_file=np.str_(spec["toml"]),
        model=np.str_(f"PyBaMM {pybamm.__version__} DFN, {spec['set']}, thermal {spec['thermal']}"),
    )
    print(
        f"[dfn {key}] {len(t_s)} s in {time.time() - t0:.0f} s: V {v_v.min():.3f}..{v_v.max():.3f}, "
        f"SOC {soc_true.min():.3f}..{soc_true.max():.3f}, T {temp_c.min():.1f}..{temp_c.max():.1f} C, "
        f"{path.stat().st_size / 1024:.0f} KiB"
    )
    return path


# --------------------------------------------------------------------------------------------
# PyBaMM Thevenin with the TOML parameters
# --------------------------------------------------------------------------------------------


def _row_at_temp(temp_c: list[float], rows: list[list[float]], t: float) -> np.ndarray:
    """The Rust model's temperature interpolation (linear, clamped) of one table row set."""
    rows = np.array(rows, dtype=float)
    return np.array([np.interp(t, temp_c, rows[:, j]) for j in range(rows.shape[1])])


def thevenin_parameters(cell: dict, temp_c: float, soc0: float) -> tuple[pybamm.ParameterValues, int]:
    grid = SOC_GRID

    def resample(soc, vals):  # np.interp clamps at the ends, as SocTable::from_points does
        return np.interp(grid, np.asarray(soc, float), np.asarray(vals, float))

    ocv = resample(cell["ocv"]["soc"], cell["ocv"]["v"])
    res = cell["resistance"]
    r0 = resample(res["soc"], _row_at_temp(res["temp_c"], res["r0_ohm"], temp_c))
    r1 = resample(res["soc"], _row_at_temp(res["temp_c"], res["r1_ohm"], temp_c))
    tau1 = float(np.interp(temp_c, res["temp_c"], res["tau1_s"]))
    n_rc = 2 if "r2_ohm" in res else 1

    def table(name, values):
        def f(*args):
            soc = args[-1]
            return pybamm.Interpolant(grid, values, soc, name=name, interpolator="linear")

        return f

    def c_table(name, r_values, tau):
        c_values = tau / np.maximum(r_values, 1e-12)

        def f(T_cell, current, soc):
            return pybamm.Interpolant(grid, c_values, soc, name=name, interpolator="linear")

        return f

    t_k = temp_c + 273.15
    values = {
        "chemistry": "ecm",
        "Initial SoC": soc0,
        "Initial temperature [K]": t_k,
        "Ambient temperature [K]": t_k,
        "Cell capacity [A.h]": float(cell["capacity_ah"]),
        "Nominal cell capacity [A.h]": float(cell["capacity_ah"]),
        "Current function [A]": pybamm.InputParameter("Current [A]"),
        "Upper voltage cut-off [V]": 10.0,  # no cut-off events: the comparison is of the model
        "Lower voltage cut-off [V]": 0.0,
        # Thermal state of PyBaMM's ECM: nothing in the voltage depends on it (the tables are taken
        # at the fixed temperature and the entropic term enters only the heat balance).
        "Cell thermal mass [J/K]": 1e6,
        "Cell-jig heat transfer coefficient [W/K]": 10.0,
        "Jig thermal mass [J/K]": 1e6,
        "Jig-air heat transfer coefficient [W/K]": 10.0,
        "Entropic change [V/K]": 0.0,
        "Open-circuit voltage [V]": lambda soc: pybamm.Interpolant(grid, ocv, soc, name="ocv", interpolator="linear"),
        "R0 [Ohm]": table("r0", r0),
        "R1 [Ohm]": table("r1", r1),
        "C1 [F]": c_table("c1", r1, tau1),
        "Element-1 initial overpotential [V]": 0.0,
        "RCR lookup limit [A]": 1e6,
    }
    if n_rc == 2:
        r2 = resample(res["soc"], _row_at_temp(res["temp_c"], res["r2_ohm"], temp_c))
        tau2 = float(np.interp(temp_c, res["temp_c"], res["tau2_s"]))
        values.update(
            {
                "R2 [Ohm]": table("r2", r2),
                "C2 [F]": c_table("c2", r2, tau2),
                "Element-2 initial overpotential [V]": 0.0,
            }
        )
    return pybamm.ParameterValues(values), n_rc


def make_thevenin(key: str, out_dir: Path, temp_c: float = 25.0, soc0: float = 0.7) -> Path:
    spec = CELLS[key]
    cell = tomllib.loads((ROOT / "python" / "mbms" / "data" / "cells" / spec["toml"]).read_text())
    cap = float(cell["capacity_ah"])
    current = zoh_profile(cap, spec["seed"] + 100)
    pv, n_rc = thevenin_parameters(cell, temp_c, soc0)
    model = pybamm.equivalent_circuit.Thevenin(options={"number of rc elements": n_rc})
    solver = pybamm.IDAKLUSolver(rtol=1e-9, atol=1e-11)
    sim = pybamm.Simulation(model, parameter_values=pv, solver=solver)
    # Segments of constant current; step the solver over each, reading the voltage at every whole
    # second inside it (the last one with the segment's own current, as a ZOH sample).
    edges = np.flatnonzero(np.diff(current)) + 1
    starts = np.concatenate([[0], edges])
    ends = np.concatenate([edges, [len(current)]])
    sol = None
    t0 = time.time()
    for a, b in zip(starts, ends):
        n = int(b - a)
        sol = sim.step(
            float(n), t_eval=np.linspace(0.0, float(n), n + 1), inputs={"Current [A]": float(current[a])}, save=True
        )
    # The stepped solution holds the requested whole seconds plus the solver's own points, and
    # at each segment boundary two points at the same time (end of one segment, start of the
    # next): sample k is the point at t = k carrying the current of sample k.
    t_all = sol["Time [s]"].entries
    i_all = sol["Current [A]"].entries
    v_all = sol["Voltage [V]"].entries
    z_all = sol["SoC"].entries
    v_out, soc_out = [], []
    for k, cur in enumerate(current):
        m = np.flatnonzero((np.abs(t_all - (k + 1)) < 1e-6) & (np.abs(i_all - cur) < 1e-9 * max(1.0, abs(cur))))
        if len(m) == 0:
            raise RuntimeError(f"no Thevenin output at t = {k + 1} s with current {cur}")
        v_out.append(v_all[m[-1]])
        soc_out.append(z_all[m[-1]])
    v_v = np.array(v_out)
    soc = np.array(soc_out)
    if len(v_v) != len(current):
        raise RuntimeError(f"Thevenin run gave {len(v_v)} samples for {len(current)}")
    dt = 1.0
    path = out_dir / f"thevenin_{key}.npz"
    np.savez_compressed(
        path,
        t_s=(np.arange(1, len(current) + 1) * dt).astype(np.float32),
        i_a=current.astype(np.float32),
        v_v=v_v.astype(np.float32),
        soc=soc.astype(np.float32),
        soc0=np.float64(soc0),
        temp_c=np.float64(temp_c),
        dt_s=np.float64(dt),
        cell_file=np.str_(spec["toml"]),
        model=np.str_(f"PyBaMM {pybamm.__version__} equivalent_circuit.Thevenin, {n_rc} RC"),
    )
    print(
        f"[thevenin {key}] {len(current)} s in {time.time() - t0:.0f} s: V {v_v.min():.3f}..{v_v.max():.3f}, "
        f"SOC {soc.min():.3f}..{soc.max():.3f}, {path.stat().st_size / 1024:.0f} KiB"
    )
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cell", choices=["nmc", "lfp", "all"], default="all")
    ap.add_argument("--kind", choices=["dfn", "thevenin", "all"], default="all")
    ap.add_argument("--out", type=Path, default=None,
                    help="folder for all traces (default: dfn -> python/mbms/data/traces, thevenin -> tests/data)")
    args = ap.parse_args(argv)
    dfn_out = args.out or ROOT / "python" / "mbms" / "data" / "traces"
    thevenin_out = args.out or ROOT / "tests" / "data"
    for d in (dfn_out, thevenin_out):
        d.mkdir(parents=True, exist_ok=True)
    keys = ["nmc", "lfp"] if args.cell == "all" else [args.cell]
    for key in keys:
        if args.kind in ("thevenin", "all"):
            # NMC at 31 C: between the 25 and 40 C breakpoints, so the temperature
            # interpolation of the tables is compared too.
            make_thevenin(key, thevenin_out, temp_c=CELLS[key]["thevenin_temp_c"])
        if args.kind in ("dfn", "all"):
            make_dfn(key, dfn_out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
