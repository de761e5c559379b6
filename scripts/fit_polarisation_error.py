"""Identify a cell file's ``[estimator] rc_polarisation_rel_error`` on the TUNING split only.

    python scripts/fit_polarisation_error.py --cell a123_anr26650_lfp

Why: the SOC filter reads the voltage through the equivalent circuit, whose RC pairs stand
for every polarisation slower than the ohmic drop. Where they get a relaxation wrong (LFP near
the knee after a load: the DFN voltage recovers over minutes where the one-RC model has
relaxed), the filter takes the difference as SOC, and its own covariance does not know it.
The engine carries a consider term for it (``CellEstimator::rc_polarisation_rel_error``, see
rust_core/src/cell_model.rs): the sensitivity of the estimate to a relative error δ of the
RC polarisation, times δ's σ. This script measures that σ where it matters, in the
relaxation after each load:

    σ_δ = rms(v_DFN − v_circuit) / rms(OCV(z) − v_circuit)

over the samples of the first 10 min of every rest (|i| < 1 mA) that follows a load, on the
FRESH tuning traces of the cell's chemistry (aged cells have another resistance, which the
engine learns), pooled. ``v_circuit`` is the cell file's equivalent circuit run open loop on
the trace's current from its true start SOC (``CellModel.simulate``), so at rest
OCV(z) − v_circuit is the polarisation (and hysteresis) the circuit holds and v_DFN − v_circuit
what it got wrong. Prints the TOML line and the per-trace figures. The held-out traces are
never read.
"""

from __future__ import annotations

import argparse
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


def relaxation_errors(tr: ReferenceTrace, cell: _core.CellModel) -> tuple[np.ndarray, np.ndarray]:
    """(v_DFN − v_circuit, OCV − v_circuit) on the samples of the first RELAX_WINDOW_S of each
    rest after a load."""
    temp = float(tr.temp_c[0])
    v_c, _ = cell.simulate(float(tr.soc_true[0]), [float(i) for i in tr.i_a], tr.dt_s, temp)
    v_circuit = np.asarray(v_c)
    ocv = np.array([cell.ocv(float(z), float(t)) for z, t in zip(tr.soc_true, tr.temp_c)])
    rest = np.abs(tr.i_a) < REST_A
    last_load = np.maximum.accumulate(np.where(rest, -np.inf, tr.t_s))
    since = tr.t_s - last_load
    sel = rest & (since > 0.0) & (since <= RELAX_WINDOW_S)
    return (tr.v_v - v_circuit)[sel], (ocv - v_circuit)[sel]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cell", required=True, help="cell file name (mbms/data/cells/<name>.toml)")
    args = ap.parse_args(argv)
    cell = _core.CellModel.from_toml(cell_file(args.cell).read_text())
    e2 = p2 = 0.0
    used = 0
    for name, path in family_traces("tuning").items():
        tr = ReferenceTrace.load(path)
        if Path(tr.cell_file).stem != Path(args.cell).stem or tr.capacity_ah < 0.95 * tr.capacity_nominal_ah:
            continue  # another cell, or an aged one
        err, pol = relaxation_errors(tr, cell)
        if len(err) == 0:
            continue
        used += 1
        e2 += float(np.sum(err**2))
        p2 += float(np.sum(pol**2))
        print(f"# {name}: {len(err)} relaxation samples, rms error {1000 * np.sqrt(np.mean(err**2)):.1f} mV, "
              f"rms polarisation {1000 * np.sqrt(np.mean(pol**2)):.1f} mV, ratio {np.sqrt(np.sum(err**2) / np.sum(pol**2)):.2f}")
    if used == 0 or p2 <= 0.0:
        print(f"no fresh tuning trace of {args.cell} with a rest after a load", file=sys.stderr)
        return 1
    print(f"rc_polarisation_rel_error = {np.sqrt(e2 / p2):.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
