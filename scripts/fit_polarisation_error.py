"""Identify a cell file's ``[estimator] rc_polarisation_rel_error`` and
``rc_time_constant_rel_error`` on the TUNING split only.

    python scripts/fit_polarisation_error.py --cell a123_anr26650_lfp

Why: the SOC filter reads the voltage through the equivalent circuit, whose RC pairs stand
for every polarisation slower than the ohmic drop. Where they get a relaxation wrong (LFP near
the knee after a load: the DFN voltage recovers over minutes where the one-RC model has
relaxed), the filter takes the difference as SOC, and its own covariance does not know it.
The engine carries a consider term for it (``CellEstimator::rc_polarisation_rel_error``, see
rust_core/src/cell_model.rs): the sensitivity of the estimate to a relative error δ of the
RC polarisation, times δ's σ, and a second one for a relative error ε of the RC time
constants (``rc_time_constant_rel_error``: a cell that relaxes slower than the circuit). This
script measures both σ where they matter, in the relaxation after each load.

Over the samples of the first 10 min of every rest (|i| < 1 mA) that follows a load, on the
FRESH tuning traces of the cell's chemistry (aged cells have another resistance, which the
engine learns), the circuit's error e = v_DFN − v_circuit is fitted per rest as

    e ≈ −δ_w · p − ε_w · d,    p = OCV(z) − v_circuit,   d = ∂v_circuit/∂ε · (−1)

``v_circuit`` is the cell file's equivalent circuit run open loop on the trace's current from
its true start SOC (``CellModel.simulate``), so at rest p is the polarisation (and hysteresis)
the circuit holds; d is how that polarisation moves when τ1 and τ2 are (1 + ε) times the
file's (a central difference, the circuit run with τ scaled by 1 ± 1 %). Each rest's
(δ_w, ε_w) is a least-squares fit; the σ are their rms over the rests, weighted by how much
polarisation each rest holds (Σ δ_w²‖p_w‖² / Σ ‖p_w‖², and the same for ε with d): with ε
fixed at 0 this is rms(e) / rms(p), the one-parameter figure of the first version. Prints
the TOML lines and the per-trace figures. The held-out traces are never read.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import numpy as np

from mbms import _core
from mbms.accuracy import ReferenceTrace, family_traces
from mbms.paths import cell_file

# the relaxation window after a load (s): the rest point's own horizon (`rest_time_s`, 600 s),
# after which the rest OCV anchors the SOC and the filter's voltage updates matter little
RELAX_WINDOW_S = 600.0
# |i| below this is rest in the DFN traces (their rests are exactly 0 A)
REST_A = 1e-3


# the least rest that tells a slower relaxation from a larger one (s): over a shorter one
# both shapes are a near-constant offset (p ∝ e^(−t/τ), d ∝ (t/τ)·e^(−t/τ) for t ≪ τ), and
# their least-squares split is the noise's (on lfp_t1's 75 s drive stops, δ and ε of ±5
# that cancel); half the window, two τ1 of the LFP file at 25 °C
MIN_WINDOW_S = 300.0
# the relative step of the central difference in τ
TAU_STEP = 0.01


def scaled_time_constants(toml_text: str, factor: float) -> str:
    """The cell file with its ``tau1_s`` and ``tau2_s`` rows scaled by ``factor``."""
    def scale(m: re.Match[str]) -> str:
        vals = [float(x) * factor for x in m.group(2).split(",")]
        return f"{m.group(1)}[{', '.join(repr(v) for v in vals)}]"
    out, n = re.subn(r"(?m)^(tau[12]_s\s*=\s*)\[([^\]]*)\]", scale, toml_text)
    if n == 0:
        raise ValueError("the cell file has no tau1_s row")
    return out


def relaxation_windows(tr: ReferenceTrace, toml_text: str) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per rest after a load, on its first RELAX_WINDOW_S: (v_DFN − v_circuit, OCV − v_circuit,
    −∂v_circuit/∂ε)."""
    temp = float(tr.temp_c[0])
    current = [float(i) for i in tr.i_a]

    def run(text: str) -> np.ndarray:
        v, _ = _core.CellModel.from_toml(text).simulate(float(tr.soc_true[0]), current, tr.dt_s, temp)
        return np.asarray(v)

    cell = _core.CellModel.from_toml(toml_text)
    v_circuit = run(toml_text)
    d = -(run(scaled_time_constants(toml_text, 1.0 + TAU_STEP)) - run(scaled_time_constants(toml_text, 1.0 - TAU_STEP))) / (2 * TAU_STEP)
    ocv = np.array([cell.ocv(float(z), float(t)) for z, t in zip(tr.soc_true, tr.temp_c)])
    rest = np.abs(tr.i_a) < REST_A
    last_load = np.maximum.accumulate(np.where(rest, -np.inf, tr.t_s))
    since = tr.t_s - last_load
    sel = rest & (since > 0.0) & (since <= RELAX_WINDOW_S)
    windows = []
    for start in np.flatnonzero(sel & ~np.concatenate([[False], sel[:-1]])):
        end = start
        while end < len(sel) and sel[end]:
            end += 1
        w = slice(start, end)
        if tr.t_s[end - 1] - tr.t_s[start] >= MIN_WINDOW_S:
            windows.append(((tr.v_v - v_circuit)[w], (ocv - v_circuit)[w], d[w]))
    return windows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cell", required=True, help="cell file name (mbms/data/cells/<name>.toml)")
    args = ap.parse_args(argv)
    toml_text = cell_file(args.cell).read_text()
    sums = np.zeros(4)  # Σ δ²‖p‖², Σ ‖p‖², Σ ε²‖d‖², Σ ‖d‖²
    used = 0
    for name, path in family_traces("tuning").items():
        tr = ReferenceTrace.load(path)
        if Path(tr.cell_file).stem != Path(args.cell).stem or tr.capacity_ah < 0.95 * tr.capacity_nominal_ah:
            continue  # another cell, or an aged one
        windows = relaxation_windows(tr, toml_text)
        if not windows:
            continue
        used += 1
        mine = np.zeros(4)
        for err, pol, d in windows:
            # e ≈ −δ·p − ε·d, least squares (lstsq: a window whose d vanishes fits δ alone)
            (delta, eps), *_ = np.linalg.lstsq(np.column_stack([-pol, -d]), err, rcond=None)
            pp, dd = float(pol @ pol), float(d @ d)
            mine += [delta * delta * pp, pp, eps * eps * dd, dd]
        sums += mine
        print(f"# {name}: {len(windows)} rests after a load, {sum(len(w[0]) for w in windows)} samples; "
              f"δ {np.sqrt(mine[0] / mine[1]):.2f}, ε {np.sqrt(mine[2] / mine[3]):.2f}")
    if used == 0 or sums[1] <= 0.0 or sums[3] <= 0.0:
        print(f"no fresh tuning trace of {args.cell} with a rest after a load", file=sys.stderr)
        return 1
    print(f"rc_polarisation_rel_error = {np.sqrt(sums[0] / sums[1]):.2f}")
    print(f"rc_time_constant_rel_error = {np.sqrt(sums[2] / sums[3]):.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
