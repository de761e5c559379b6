"""``mbms bench s3``: seeded campaign of string joins under random load steps and plant freezes,
S3 judged on the plant's truth at the instant each main contactor closes (issue 11).

Prints the campaign size and its result for both kinds of load (``mbms.sim.s3_campaign``): an
inverter that honours the join hold (target: zero S3 violations) and a raw load that listens to
nobody (target: zero violations that a controller could have avoided; closes whose load step
landed while the contact was already travelling are counted apart).
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seeds", type=int, default=100, help="seeds (one simulation each)")
    parser.add_argument("--joins", type=int, default=10, help="rejoin cycles per seed")
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--load", choices=("inverter", "raw", "both"), default="both")
    parser.add_argument("--hold-latency-ms", type=int, default=0,
                        help="the inverter hears the join hold this long after the speaker raised it")


def measure(seeds: int, joins: int, first_seed: int = 0, load: str = "both", hold_latency_ms: int = 0) -> dict[str, Any]:
    from mbms.sim import s3_campaign

    out: dict[str, Any] = {"seeds": seeds, "joins_per_seed": joins, "first_seed": first_seed,
                           "hold_latency_ms": hold_latency_ms}
    for kind in (("inverter", "raw") if load == "both" else (load,)):
        t0 = time.perf_counter()
        r = s3_campaign.run(seeds, joins, kind, first_seed, hold_latency_ms=hold_latency_ms)
        out[kind] = dict(r.to_dict(), wall_s=round(time.perf_counter() - t0, 1))
    return out


def run(args: argparse.Namespace) -> int:
    res = measure(args.seeds, args.joins, args.first_seed, args.load, args.hold_latency_ms)
    if args.json:
        print(json.dumps(res))
    else:
        for kind in ("inverter", "raw"):
            r = res.get(kind)
            if r is None:
                continue
            lat = f" (hold heard {res['hold_latency_ms']} ms late)" if kind == "inverter" and res["hold_latency_ms"] else ""
            print(f"S3 campaign, {kind} load{lat}: {r['seeds']} seeds, {r['joins']} joins ({r['freezes']} with a plant "
                  f"freeze), {r['closes']} main closes, {r['aborts']} aborted closes; S3 violations on the truth: "
                  f"{r['s3_violations']} ({r['s3_in_travel']} with the step during the contact travel, "
                  f"{r['s3_avoidable']} avoidable); max true |dV| {r['max_dv_true_v']} V "
                  f"(avoidable cases {r['max_dv_avoidable_v']} V); not rejoined {r['not_rejoined']}; {r['wall_s']} s")
            for e in r["examples"]:
                print(f"  {e}")
    bad = res.get("inverter", {}).get("s3_violations", 0) + res.get("raw", {}).get("s3_avoidable", 0)
    return 1 if bad else 0
