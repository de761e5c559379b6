"""``mbms bench sharing``: does any string carry more than its own limit (brief §4/§5: max
over-current <= 0 A in the default story)?

Runs the embedded default story (fast mode) for several seeds twice, side by side: with the bare
brief §4 formula (the protocol's uncertainty terms set to 0) and with the limits accounting for
their own uncertainty (the protocol defaults: consensus ``PeerConfig`` share_*_uncertainty, see
consensus/src/sharing.rs ``Uncertainty``). Prints the max over-current and what the margin
costs in energy.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

BARE = {"share_ocv_uncertainty_v": 0.0, "share_r_uncertainty": 0.0, "share_i_uncertainty": 0.0, "share_ocv_hold_v": 0.0, "share_r_hold": 0.0}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seeds", type=int, default=3, help="seeds 1..N of the default story")


def measure(seeds: int) -> dict[str, Any]:
    from mbms.sim import fast
    from mbms.sim.scenario import Scenario

    rows = []
    for seed in range(1, seeds + 1):
        row: dict[str, Any] = {"seed": seed}
        for name, override in (("bare", BARE), ("with_uncertainty", {})):
            sc = Scenario.default().with_overrides(seed=seed)
            sc.system.update(override)
            rep = fast.run(sc).report
            row[name] = {
                "max_string_overcurrent_a": round(float(rep["max_string_overcurrent_a"]), 3),
                "energy_discharged_kwh": round(rep["energy_discharged_j"] / 3.6e6, 3),
                "energy_charged_kwh": round(rep["energy_charged_j"] / 3.6e6, 3),
                "violations": len(rep["violations"]),
            }
        rows.append(row)
    return {"runs": rows, "target_max_overcurrent_a": 0.0}


def run(args: argparse.Namespace) -> int:
    res = measure(args.seeds)
    if args.json:
        print(json.dumps(res))
        return 0
    print("default story (fast mode): max string over-current, bare brief §4 formula vs limits with their uncertainty")
    print(f"  {'seed':>4}  {'bare A':>8}  {'with unc. A':>11}  {'kWh out bare/unc':>18}  {'kWh in bare/unc':>17}")
    for r in res["runs"]:
        b, u = r["bare"], r["with_uncertainty"]
        print(f"  {r['seed']:>4}  {b['max_string_overcurrent_a']:>8.3f}  {u['max_string_overcurrent_a']:>11.3f}  "
              f"{b['energy_discharged_kwh']:>8.3f}/{u['energy_discharged_kwh']:<8.3f}  "
              f"{b['energy_charged_kwh']:>8.3f}/{u['energy_charged_kwh']:<8.3f}")
    worst = max(r["with_uncertainty"]["max_string_overcurrent_a"] for r in res["runs"])
    print(f"  target: max over-current <= 0 A; with uncertainty: {worst:.3f} A "
          f"({'met' if worst <= 0 else 'NOT met'})")
    return 0
