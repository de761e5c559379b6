#!/usr/bin/env python3
"""Identify equivalent-circuit cell parameters (python/mbms/data/cells/*.toml) from PyBaMM's DFN.

    python scripts/identify_cells.py --cell nmc|lfp|all --out python/mbms/data/cells

Development tool: needs the ``dev`` extra (``pip install -e '.[dev]'``: pybamm, scipy).
Nothing under ``python/mbms`` imports PyBaMM; the runtime reads only the TOML files this writes.

What it does, per cell (schema: ``rust_core/src/cell_model.rs``, ``python/mbms/data/cells/README.md``):

* OCV(SOC) from the electrode open-circuit potentials and the stoichiometry limits that PyBaMM's
  electrode-SOH solver finds for the parameter set (``get_min_max_stoichiometries``):
  ``OCV(z) = U_p(y100 + (1 - z)(y0 - y100)) - U_n(x0 + z(x100 - x0))``; this is exactly the SOC
  scale PyBaMM's ``initial_soc`` uses, so the DFN starts at rest on this OCV.
* Capacity from the same stoichiometry window (``Q_n (x100 - x0)``); a C/20 DFN discharge between
  the voltage limits is run as a cross-check and printed.
* Entropic coefficient: both PyBaMM sets give ``OCP entropic change = 0``, so ``docv_dt_v_per_k``
  is written as zeros (stated in the file).
* R0, R1/tau1 and R2/tau2: an isothermal DFN at each temperature (10, 25, 40 C; the sets'
  exchange-current densities are Arrhenius in temperature) runs a seeded identification
  profile from SOC 0.95 down to ~0.1 and back to ~0.5: at every ~0.1 of SOC a pulse block
  (1C 20 s discharge and charge pulses between rests), a drive-like segment (random levels
  -1C..+2.5C) and a 600 s rest; then a C/2 charge and a rest (1 s samples). The ECM voltage
  OCV(z) - v is linear in the resistances at the SOC breakpoints (hat functions of the
  coulomb-counted SOC, the same piecewise-linear tables the Rust model uses) once the time
  constants are fixed, so the fit is a variable projection: Nelder-Mead over (tau1[, tau2]) in
  2..2000 s, non-negative least squares for all resistances on the whole run. The second RC
  pair is kept only if it lowers the RMS residual clearly (its mean over the temperatures by
  more than 15 %).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("PYBAMM_DISABLE_TELEMETRY", "true")

import numpy as np  # noqa: E402

try:
    import pybamm  # noqa: E402
    from scipy.optimize import minimize, nnls  # noqa: E402
except ImportError as exc:  # pragma: no cover - dev tool
    sys.exit(f"identify_cells.py needs the dev extra (pip install -e '.[dev]'): {exc}")

# SOC grid of the OCV table: 0.01 steps, a subset of the Rust model's uniform 201-point grid
# (cell_model.rs SOC_GRID_POINTS), so the resampled table is the same piecewise-linear curve.
OCV_SOC = np.round(np.linspace(0.0, 1.0, 101), 4)
SOC_KNOTS = [0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95]
# Bounds of the fitted time constants: below 2 s the 1 s sampled traces cannot resolve a pair;
# above 2000 s the pair is no longer a relaxation inside the 600 s rests but absorbs OCV/diffusion
# drift (the LFP fit otherwise runs tau2 to 1e10 s, i.e. an integrator).
TAU_MIN_S, TAU_MAX_S = 2.0, 2000.0


@dataclass
class CellSpec:
    key: str
    parameter_set: str
    name: str
    chemistry: str
    file_name: str
    citation: str
    mass_kg: float
    cp_j_per_kg_k: float
    thermal_note: str
    # lowest SOC the identification run discharges to (the LFP set's voltage collapses below
    # ~15 % SOC at 2.5C and 10 C)
    soc_end: float = 0.08
    # identification temperatures; the NMC reference drive (lumped thermal) heats the cell to
    # ~43 C, so the NMC set also gets a 50 C breakpoint (the LFP set's reference is isothermal).
    # Below the lowest breakpoint the tables clamp (resistance stays at its coldest row), so both
    # sets go down to -10 C, into the datasheets' ranges (LG M50: charge from 0 C, discharge
    # from -20 C; A123: -30..55 C); at -20 C the NMC identification profile's 2.5C pulses reach
    # v_min at once (the run stops at 151 s)
    temps_c: tuple[float, ...] = (-10.0, 0.0, 10.0, 25.0, 40.0)


CELLS: dict[str, CellSpec] = {
    "nmc": CellSpec(
        key="nmc",
        parameter_set="Chen2020",
        name="LG INR21700-M50",
        chemistry="NMC",
        file_name="lg_m50_nmc.toml",
        temps_c=(-10.0, 0.0, 10.0, 25.0, 40.0, 50.0),
        citation="Chen et al. 2020, J. Electrochem. Soc. 167 080534",
        # LG INR21700-M50 datasheet: 69.25 g max; cp of cylindrical NMC 21700 cells ~1.1 kJ/(kg K)
        mass_kg=0.0688,
        cp_j_per_kg_k=1100.0,
        thermal_note="mass: LG INR21700-M50 datasheet (68.8 g typical, 69.25 g max); "
        "cp: typical 21700 NMC cell value (~1.1 kJ/kg/K), not part of Chen2020",
    ),
    "lfp": CellSpec(
        key="lfp",
        parameter_set="Prada2013",
        name="A123 ANR26650",
        chemistry="LFP",
        file_name="a123_anr26650_lfp.toml",
        citation="Prada et al. 2013, J. Electrochem. Soc. 160 A616",
        mass_kg=0.076,
        cp_j_per_kg_k=1000.0,
        soc_end=0.15,
        thermal_note="mass: A123 ANR26650M1-B datasheet (76 g); "
        "cp: typical LFP 26650 value (~1.0 kJ/kg/K), Prada2013 has no thermal data",
    ),
}


# --------------------------------------------------------------------------------------------
# OCV and capacity
# --------------------------------------------------------------------------------------------


def _eval(expr) -> float:
    return float(np.asarray(expr.evaluate()).ravel()[0]) if isinstance(expr, pybamm.Symbol) else float(expr)


def ocv_and_capacity(pv: pybamm.ParameterValues) -> tuple[np.ndarray, float, dict[str, float]]:
    x0, x100, y100, y0 = (float(v) for v in pybamm.lithium_ion.get_min_max_stoichiometries(pv))
    u_p, u_n = pv["Positive electrode OCP [V]"], pv["Negative electrode OCP [V]"]
    v = []
    for z in OCV_SOC:
        x = x0 + z * (x100 - x0)
        y = y100 + (1.0 - z) * (y0 - y100)
        v.append(_eval(u_p(pybamm.Scalar(y))) - _eval(u_n(pybamm.Scalar(x))))
    v = np.array(v)
    area = pv["Electrode height [m]"] * pv["Electrode width [m]"]
    q_n = (
        pv["Maximum concentration in negative electrode [mol.m-3]"]
        * pv["Negative electrode active material volume fraction"]
        * pv["Negative electrode thickness [m]"]
        * area
        * 96485.33212
        / 3600.0
    )
    n_par = pv["Number of electrodes connected in parallel to make a cell"]
    cap = float(q_n * (x100 - x0) * n_par)
    return v, cap, {"x0": x0, "x100": x100, "y0": y0, "y100": y100}


def c20_capacity(pv: pybamm.ParameterValues) -> float:
    v_min = pv["Lower voltage cut-off [V]"]
    exp = pybamm.Experiment([f"Discharge at C/20 until {v_min} V"])
    sim = pybamm.Simulation(
        pybamm.lithium_ion.DFN(), parameter_values=pv.copy(), experiment=exp, solver=pybamm.IDAKLUSolver()
    )
    sol = sim.solve(initial_soc=1.0)
    return float(sol["Discharge capacity [A.h]"].entries[-1])


# --------------------------------------------------------------------------------------------
# Pulse tests and the ECM fit
# --------------------------------------------------------------------------------------------

def identification_profile(nominal_a: float, seed: int, soc_start: float, soc_end: float, cap_ah: float):
    """Seeded identification current (A, discharge positive) at 1 s, from ``soc_start`` down to
    ``soc_end`` and back up: at every ~0.1 of SOC a pulse block (rest, 1C 20 s discharge, rest,
    1C 20 s charge, rest), then a drive-like segment (random 2..40 s levels between -1C and
    +2.5C, mean ~1C) removing ~0.1 of SOC, then a 600 s rest; finally a C/2 charge of ~0.4 and
    a 900 s rest. Linear between the 1 s samples (as fed to the DFN)."""
    rng = np.random.default_rng(seed)
    c = nominal_a
    out: list[float] = []

    def hold(i: float, n: int) -> None:
        out.extend([i] * n)

    z = soc_start
    while z > soc_end + 0.05:
        hold(0.0, 60)
        hold(c, 20)
        hold(0.0, 60)
        hold(-c, 20)
        hold(0.0, 60)
        target = min(0.1, z - soc_end) * cap_ah * 3600.0
        q = 0.0
        while q < target:
            level = float(rng.uniform(-1.0, 2.5)) * c
            n = int(rng.integers(2, 40))
            hold(level, n)
            q += level * n
        z -= q / (cap_ah * 3600.0)
        hold(0.0, 600)
    n_charge = int(0.4 * cap_ah * 3600.0 / (0.5 * c))
    hold(-0.5 * c, n_charge)
    hold(0.0, 900)
    return np.array(out)


@dataclass
class IdRun:
    temp_c: float
    t: np.ndarray
    i: np.ndarray
    v: np.ndarray
    soc: np.ndarray


def run_identification(
    pv: pybamm.ParameterValues, cap_ah: float, temp_c: float, seed: int, soc_end: float
) -> IdRun:
    p = pv.copy()
    t_k = temp_c + 273.15
    nominal = p["Nominal cell capacity [A.h]"]
    current = identification_profile(nominal, seed, 0.95, soc_end, cap_ah)
    t = np.arange(len(current), dtype=float)
    p.update(
        {
            "Ambient temperature [K]": t_k,
            "Initial temperature [K]": t_k,
            "Current function [A]": pybamm.Interpolant(t, current, pybamm.t, interpolator="linear"),
            # the profile reaches the low-SOC end with 2.5C levels: keep the run going below the
            # cut-off rather than stop it (the fit weights every sample alike)
            "Lower voltage cut-off [V]": p["Lower voltage cut-off [V]"] - 0.5,
            "Upper voltage cut-off [V]": p["Upper voltage cut-off [V]"] + 0.2,
        }
    )
    sim = pybamm.Simulation(
        pybamm.lithium_ion.DFN(), parameter_values=p, solver=pybamm.IDAKLUSolver(rtol=1e-5, atol=1e-7)
    )
    # every 1 s sample is a solver stop: the current has a kink there, and an adaptive step
    # grown during a rest would otherwise step over a short pulse altogether
    sol = sim.solve(t_eval=t, t_interp=t, initial_soc=0.95)
    tt = sol["Time [s]"].entries
    if abs(tt[-1] - t[-1]) > 1e-6:
        raise RuntimeError(f"identification run at {temp_c} C stopped at {tt[-1]:.0f} s of {t[-1]:.0f} s")
    q = sol["Discharge capacity [A.h]"].entries
    return IdRun(temp_c, tt, sol["Current [A]"].entries, sol["Voltage [V]"].entries, 0.95 - q / cap_ah)


def hat_basis(z: np.ndarray, knots: np.ndarray) -> np.ndarray:
    """Piecewise-linear interpolation weights of ``z`` on ``knots`` (clamped at the ends): the
    model's tables are linear between SOC breakpoints and constant outside them."""
    zc = np.clip(z, knots[0], knots[-1])
    out = np.zeros((len(z), len(knots)))
    k = np.clip(np.searchsorted(knots, zc, side="right") - 1, 0, len(knots) - 2)
    w = (zc - knots[k]) / (knots[k + 1] - knots[k])
    out[np.arange(len(z)), k] = 1.0 - w
    out[np.arange(len(z)), k + 1] = w
    return out


def _rc_columns(run: IdRun, phi_i: np.ndarray, tau: float) -> np.ndarray:
    """v_j of an RC pair with R = 1 at knot j: v' = -v/tau + phi_j(z) i / tau, the input held
    at its interval mean (trapezoid; exact for the linear-interpolated current)."""
    from scipy.signal import lfilter

    dt = np.diff(run.t)
    a = float(np.exp(-dt[0] / tau))  # uniform 1 s grid
    u = 0.5 * (phi_i[1:] + phi_i[:-1])
    x = lfilter([0.0, 1.0 - a], [1.0, -a], np.vstack([u, np.zeros((1, u.shape[1]))]), axis=0)
    return x  # x[k] is the value at run.t[k]


def fit_temperature(run: IdRun, ocv_v: np.ndarray, knots: np.ndarray, n_rc: int):
    """Shared taus; (R0, R1[, R2]) at each SOC knot by NNLS on the whole run."""
    y = np.interp(run.soc, OCV_SOC, ocv_v) - run.v  # = R0(z) i + v1 + v2
    phi_i = hat_basis(run.soc, knots) * run.i[:, None]

    def solve(log_taus: np.ndarray):
        cols = [phi_i] + [_rc_columns(run, phi_i, float(np.exp(lt))) for lt in log_taus]
        a = np.hstack(cols)
        coef, res = nnls(a, y, maxiter=50 * a.shape[1])
        return coef.reshape(len(cols), len(idx)), float(res / np.sqrt(len(y)))

    # knots the run never comes near carry no information: fit only the informed ones and give
    # the others the value of the nearest informed knot (tables are flat beyond their ends anyway)
    informed = np.abs(phi_i).sum(axis=0) > 1e-3 * np.abs(phi_i).sum()
    idx = np.flatnonzero(informed)
    phi_i = phi_i[:, idx]
    nearest = idx[np.abs(knots[idx][None, :] - knots[:, None]).argmin(axis=1)]

    best = None
    starts = [[np.log(40.0)]] if n_rc == 1 else [[np.log(20.0), np.log(400.0)], [np.log(50.0), np.log(1500.0)]]
    for x0 in starts:
        res = minimize(
            lambda x: solve(x)[1],
            np.array(x0),
            method="Nelder-Mead",
            bounds=[(np.log(TAU_MIN_S), np.log(TAU_MAX_S))] * len(x0),
            options={"xatol": 2e-3, "fatol": 1e-7, "maxfev": 200},
        )
        if best is None or res.fun < best.fun:
            best = res
    taus = np.sort(np.exp(best.x))
    rs, rms = solve(np.log(taus))
    full = np.zeros((rs.shape[0], len(knots)))
    full[:, idx] = rs
    for j in range(len(knots)):
        full[:, j] = rs[:, np.flatnonzero(idx == nearest[j])[0]]
    return taus, full, rms


# --------------------------------------------------------------------------------------------
# TOML writing
# --------------------------------------------------------------------------------------------


def _fmt_list(xs, fmt="{:.6g}") -> str:
    return "[" + ", ".join(fmt.format(float(x)) for x in xs) + "]"


def _fmt_rows(rows, fmt="{:.6g}") -> str:
    return "[\n" + "".join(f"    {_fmt_list(r, fmt)},\n" for r in rows) + "]"


def write_toml(path: Path, header: list[str], fields: dict) -> None:
    lines = [f"# {h}" if h else "#" for h in header]
    lines += [
        f'name = "{fields["name"]}"',
        f'chemistry = "{fields["chemistry"]}"',
        f'source = "{fields["source"]}"',
        f'capacity_ah = {fields["capacity_ah"]:.5g}',
        f'v_min_v = {fields["v_min_v"]:.4g}',
        f'v_max_v = {fields["v_max_v"]:.4g}',
        f't_ref_c = {fields["t_ref_c"]:.4g}',
        f'coulombic_efficiency = {fields["coulombic_efficiency"]:.4g}',
        "",
        "[ocv]",
        f"# {fields.get('ocv_note', '')}",
        f"soc = {_fmt_list(fields['ocv_soc'], '{:.4g}')}",
        f"v = {_fmt_list(fields['ocv_v'], '{:.6f}')}",
        f"docv_dt_v_per_k = {_fmt_list(fields['docv_dt'], '{:.3g}')}",
        "",
        "[resistance]",
        f"# {fields.get('resistance_note', '')}",
        f"temp_c = {_fmt_list(fields['temp_c'], '{:.4g}')}",
        f"soc = {_fmt_list(fields['r_soc'], '{:.4g}')}",
        f"r0_ohm = {_fmt_rows(fields['r0'])}",
        f"r1_ohm = {_fmt_rows(fields['r1'])}",
        f"tau1_s = {_fmt_list(fields['tau1'], '{:.5g}')}",
    ]
    if fields.get("r2") is not None:
        lines += [f"r2_ohm = {_fmt_rows(fields['r2'])}", f"tau2_s = {_fmt_list(fields['tau2'], '{:.5g}')}"]
    lines += [
        "",
        "[thermal]",
        f"# {fields.get('thermal_note', '')}",
        f"mass_kg = {fields['mass_kg']:.5g}",
        f"cp_j_per_kg_k = {fields['cp_j_per_kg_k']:.5g}",
        "",
    ]
    text = "\n".join(lines)
    # The [temperature] table (the datasheet's operating windows) and the [estimator] table (model
    # error, full-charge point, chosen by hand on the tuning split of scripts/make_trace_family.py)
    # are not identified here: keep them (they follow [thermal]) across regenerations.
    if path.exists():
        old = path.read_text()
        kept = [old.index(t) for t in ("\n[temperature]", "\n[estimator]") if t in old]
        if kept:
            text += old[min(kept):]
    path.write_text(text)


# --------------------------------------------------------------------------------------------


def identify(spec: CellSpec, out_dir: Path, temps: list[float], socs: list[float]) -> dict:
    t_start = time.time()
    pv = pybamm.ParameterValues(spec.parameter_set)
    ocv_v, cap, sto = ocv_and_capacity(pv)
    cap_c20 = c20_capacity(pv)
    print(f"[{spec.key}] capacity from stoichiometry {cap:.4f} Ah, C/20 DFN discharge {cap_c20:.4f} Ah; {sto}")
    ent_p = pv["Positive electrode OCP entropic change [V.K-1]"]
    ent_n = pv["Negative electrode OCP entropic change [V.K-1]"]
    has_entropic = callable(ent_p) or callable(ent_n) or float(ent_p) != 0.0 or float(ent_n) != 0.0
    if has_entropic:
        raise NotImplementedError("entropic OCP terms as functions are not handled; both sets in use give 0")

    knots = np.array(socs)
    fits: dict[int, list] = {1: [], 2: []}
    for temp in temps:
        t0 = time.time()
        run = run_identification(pv, cap, temp, seed=100, soc_end=spec.soc_end)
        print(f"[{spec.key}]   {temp:5.1f} C: DFN identification run {run.t[-1]:.0f} s in {time.time() - t0:.0f} s")
        for n_rc in (1, 2):
            taus, rs, rms = fit_temperature(run, ocv_v, knots, n_rc)
            fits[n_rc].append((temp, taus, rs, rms))
            print(f"[{spec.key}]   {temp:5.1f} C, {n_rc} RC: taus {np.round(taus, 1)}, rms {rms * 1e3:.3f} mV")

    rms1 = np.array([f[3] for f in fits[1]])
    rms2 = np.array([f[3] for f in fits[2]])
    use_rc2 = bool(np.mean(rms2) < 0.85 * np.mean(rms1))
    chosen = fits[2] if use_rc2 else fits[1]
    common = list(knots)

    def table(col: int):
        return [list(f[2][col]) for f in chosen]

    r0, r1 = table(0), table(1)
    r2 = table(2) if use_rc2 else None
    # The model requires R0 > 0; the NNLS can return 0 only for a degenerate trace.
    if np.min(r0) <= 0:
        raise RuntimeError("identified R0 <= 0")
    version = pybamm.__version__
    fields = {
        "name": spec.name,
        "chemistry": spec.chemistry,
        "source": f"{spec.citation}; identified by scripts/identify_cells.py from PyBaMM {version} DFN "
        f"(parameter set {spec.parameter_set})",
        "capacity_ah": cap,
        "v_min_v": float(pv["Lower voltage cut-off [V]"]),
        "v_max_v": float(pv["Upper voltage cut-off [V]"]),
        "t_ref_c": 25.0,
        "coulombic_efficiency": 1.0,
        "ocv_soc": OCV_SOC,
        "ocv_v": ocv_v,
        "docv_dt": np.zeros_like(OCV_SOC),
        "ocv_note": f"electrode OCPs over the stoichiometry window x {sto['x0']:.4f}..{sto['x100']:.4f}, "
        f"y {sto['y100']:.4f}..{sto['y0']:.4f}; entropic change is 0 in {spec.parameter_set}",
        "resistance_note": f"fitted to isothermal DFN identification runs (pulse blocks + drive segments, "
        f"SOC 0.95..{spec.soc_end:g}..back up by 0.4); RMS residual per temperature "
        f"{', '.join(f'{x * 1e3:.2f}' for x in (rms2 if use_rc2 else rms1))} mV "
        f"({'2 RC' if use_rc2 else '1 RC'}; 1 RC gave {', '.join(f'{x * 1e3:.2f}' for x in rms1)} mV)",
        "temp_c": [f[0] for f in chosen],
        "r_soc": common,
        "r0": r0,
        "r1": r1,
        "tau1": [f[1][0] for f in chosen],
        "r2": r2,
        "tau2": [f[1][1] for f in chosen] if use_rc2 else None,
        "thermal_note": spec.thermal_note,
        "mass_kg": spec.mass_kg,
        "cp_j_per_kg_k": spec.cp_j_per_kg_k,
    }
    header = [
        f"{spec.name} ({spec.chemistry}): equivalent-circuit parameters identified from PyBaMM's DFN",
        f"with the {spec.parameter_set} parameter set ({spec.citation}).",
        "Generated by: python scripts/identify_cells.py --cell " + spec.key + " --out python/mbms/data/cells",
        f"Capacity: stoichiometry window {cap:.4f} Ah (C/20 DFN discharge between the voltage limits: {cap_c20:.4f} Ah).",
        "Do not edit by hand; regenerate. Schema: python/mbms/data/cells/README.md.",
    ]
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / spec.file_name
    write_toml(path, header, fields)
    print(f"[{spec.key}] wrote {path} in {time.time() - t_start:.0f} s")
    return fields


# --------------------------------------------------------------------------------------------
# 280 Ah prismatic LFP: the identified A123 OCV shape, resistances scaled to a datasheet class
# --------------------------------------------------------------------------------------------

# EVE LF280K product specification (figures as published by the maker for the 280 Ah class
# prismatic LFP cell used in storage racks): nominal capacity 280 Ah, 3.2 V nominal, voltage
# window 2.5 V .. 3.65 V, AC internal resistance <= 0.25 mOhm (1 kHz), mass 5.49 kg +/- 0.3 kg.
LFP280 = {
    "name": "LFP 280 Ah prismatic (EVE LF280K class)",
    "capacity_ah": 280.0,
    "v_min_v": 2.5,
    "v_max_v": 3.65,
    "r_ac_1khz_ohm": 0.25e-3,
    "mass_kg": 5.49,
    # cp of large prismatic LFP cells, measured ~1.0-1.1 kJ/(kg K) (e.g. Forgez et al. 2010,
    # J. Power Sources 195 2961, for an A123 LFP cell: 1.1 kJ/(kg K))
    "cp_j_per_kg_k": 1050.0,
}


def make_lfp280(lfp_toml: Path, out_dir: Path) -> None:
    import tomllib

    src = tomllib.loads(lfp_toml.read_text())
    res = src["resistance"]
    z = np.array(res["soc"])
    r0 = np.array(res["r0_ohm"])
    t_ref_row = list(res["temp_c"]).index(25.0) if 25.0 in res["temp_c"] else 0
    # R0 of the ECM is the instantaneous (ohmic + charge-transfer) part, the closest to a 1 kHz AC
    # resistance: scale so that R0(50 % SOC, 25 C) equals the datasheet AC figure, and scale the RC
    # resistances by the same factor (same shape, a cell of ~122 x the A123's capacity).
    r0_mid = float(np.interp(0.5, z, r0[t_ref_row]))
    k = LFP280["r_ac_1khz_ohm"] / r0_mid
    # The OCV shape keeps the A123 curve on the SOC axis. Its empty end reaches the small cell's
    # 2.0 V cut-off, below the 280 Ah cell's 2.5 V minimum: the part below 3.0 V (SOC < ~10 %) is
    # compressed linearly from 2.0..3.0 V onto 2.5..3.0 V (monotone, continuous at 3.0 V), so that
    # OCV(0) = v_min as in the small cell. The full end (3.6 V) already lies inside 3.65 V.
    ocv_v = np.array(src["ocv"]["v"])
    knee, v0_src = 3.0, ocv_v[0]
    low = ocv_v < knee
    ocv_v[low] = LFP280["v_min_v"] + (ocv_v[low] - v0_src) * (knee - LFP280["v_min_v"]) / (knee - v0_src)
    fields = {
        "name": LFP280["name"],
        "chemistry": "LFP",
        "source": "OCV shape and resistance shape: A123 ANR26650 file (Prada et al. 2013, J. Electrochem. Soc. "
        "160 A616; identified by scripts/identify_cells.py from PyBaMM DFN); scaled to EVE LF280K "
        "specification figures (280 Ah, 2.5-3.65 V, AC IR 0.25 mOhm, 5.49 kg)",
        "capacity_ah": LFP280["capacity_ah"],
        "v_min_v": LFP280["v_min_v"],
        "v_max_v": LFP280["v_max_v"],
        "t_ref_c": src["t_ref_c"],
        "coulombic_efficiency": src.get("coulombic_efficiency", 1.0),
        "ocv_soc": np.array(src["ocv"]["soc"]),
        "ocv_v": ocv_v,
        "docv_dt": np.array(src["ocv"].get("docv_dt_v_per_k", np.zeros_like(ocv_v))),
        "ocv_note": "A123 ANR26650 OCV shape (PyBaMM Prada2013 electrode OCPs); values below 3.0 V mapped from 2.0..3.0 V onto 2.5..3.0 V",
        "resistance_note": f"A123 ANR26650 tables x {k:.5f}: R0(50 %, 25 C) = datasheet AC IR 0.25 mOhm",
        "temp_c": res["temp_c"],
        "r_soc": res["soc"],
        "r0": (r0 * k).tolist(),
        "r1": (np.array(res["r1_ohm"]) * k).tolist(),
        "tau1": res["tau1_s"],
        "r2": (np.array(res["r2_ohm"]) * k).tolist() if "r2_ohm" in res else None,
        "tau2": res.get("tau2_s"),
        "thermal_note": "mass: EVE LF280K specification (5.49 kg); cp ~1.05 kJ/kg/K typical of prismatic LFP",
        "mass_kg": LFP280["mass_kg"],
        "cp_j_per_kg_k": LFP280["cp_j_per_kg_k"],
    }
    header = [
        "Large prismatic LFP storage cell, 280 Ah class (EVE LF280K specification figures).",
        "Not identified from a physics model of this cell: the A123 ANR26650 (PyBaMM Prada2013) OCV shape",
        "and resistance maps, the resistances scaled so that R0 at 50 % SOC / 25 C equals the datasheet",
        "AC internal resistance (0.25 mOhm); time constants kept. Datasheet figures used: 280 Ah, 3.2 V",
        "nominal, 2.5-3.65 V window, AC IR <= 0.25 mOhm at 1 kHz, mass 5.49 kg.",
        "Generated by: python scripts/identify_cells.py --cell lfp280 --out python/mbms/data/cells (after --cell lfp).",
    ]
    path = out_dir / "lfp_280ah_prismatic.toml"
    write_toml(path, header, fields)
    print(f"[lfp280] wrote {path} (resistance scale {k:.5f})")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cell", choices=["nmc", "lfp", "lfp280", "all"], default="all")
    ap.add_argument("--out", type=Path, default=Path("python/mbms/data/cells"))
    ap.add_argument("--temps", type=float, nargs="+", help="default: the cell's own (NMC -10 0 10 25 40 50, LFP -10 0 10 25 40)")
    ap.add_argument("--socs", type=float, nargs="+", default=SOC_KNOTS)
    args = ap.parse_args(argv)
    keys = ["nmc", "lfp"] if args.cell == "all" else [args.cell] if args.cell != "lfp280" else []
    for key in keys:
        identify(CELLS[key], args.out, args.temps or list(CELLS[key].temps_c), args.socs)
    if args.cell in ("lfp", "lfp280", "all"):
        make_lfp280(args.out / CELLS["lfp"].file_name, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
