"""``mbms bench soc``: SOC accuracy of the pack engine against the DFN reference traces.

For each committed reference trace (mbms/data/traces/dfn_<cell>.npz, shipped with the package) the measurements are corrupted
(±2 mV voltage noise, current gain and offset error, 20 % initial SOC error; see
``mbms.accuracy``) and the engine's SOC on a one-cell pack is compared with the true SOC. Prints
the RMSE over the whole trace and the max |error| after the first 10 min beside the brief's
targets (NMC: 0.5 % / 1.5 %, LFP: 2 % / 5 %).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mbms.accuracy import DATA_DIR, Corruption, ReferenceTrace, reference_traces, soc_accuracy
from mbms.errors import InputError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cell", action="append", help="trace short name (nmc, lfp); default: all")
    p.add_argument("--seed", type=int, default=1, help="seed of the measurement corruption")
    p.add_argument("--data", type=Path, default=DATA_DIR, help="folder with dfn_<cell>.npz traces")


def run(args: argparse.Namespace) -> int:
    traces = reference_traces(args.data)
    names = args.cell or sorted(traces)
    unknown = [n for n in names if n not in traces]
    if unknown or not traces:
        raise InputError(f"no reference trace for {unknown or 'any cell'} in {args.data} (dfn_<cell>.npz); "
                         f"expected one of {sorted(traces)}")
    rows = []
    for name in names:
        r = soc_accuracy(ReferenceTrace.load(traces[name]), corruption=Corruption(seed=args.seed))
        rmse_t, max_t = r.targets
        rows.append(
            {
                "trace": name,
                "cell": r.cell,
                "chemistry": r.chemistry,
                "rmse_pct": 100 * r.rmse,
                "rmse_target_pct": 100 * rmse_t,
                "max_after_10min_pct": 100 * r.max_abs_after_settle,
                "max_target_pct": 100 * max_t,
                "rmse_after_10min_pct": 100 * r.rmse_after_settle,
                "final_error_pct": 100 * r.final_error,
                "meets_targets": r.meets_targets,
            }
        )
    if args.json:
        print(json.dumps({"bench": "soc", "seed": args.seed, "results": rows}))
        return 0
    print(f"SOC accuracy vs DFN reference (seed {args.seed}; ±2 mV, +1 % gain, offset, 20 % initial error)")
    hdr = f"{'trace':6} {'cell':18} {'RMSE %':>8} {'target':>7} {'max>10min %':>12} {'target':>7} {'RMSE>10min %':>13}  ok"
    print(hdr)
    for r in rows:
        print(
            f"{r['trace']:6} {r['cell'][:18]:18} {r['rmse_pct']:8.3f} {r['rmse_target_pct']:7.2f} "
            f"{r['max_after_10min_pct']:12.3f} {r['max_target_pct']:7.2f} {r['rmse_after_10min_pct']:13.3f}  "
            f"{'yes' if r['meets_targets'] else 'NO'}"
        )
    return 0
