"""``mbms bench sim``: real-time factor of the whole-system fast simulation.

16 strings × 96 series elements at 100 ms steps (brief §5: ≥ 1000× real time), everything in
the loop: the plant, 16 NodeCores (pack engine + peer coordination + contactor sequencing), the
simulated peer network delivering every heartbeat to every peer. Built from the embedded
default scenario with its pack count changed and its faults removed; the load keeps moving.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

TARGET_RTF = 1000.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--packs", type=int, default=16)
    parser.add_argument("--sim-s", type=float, default=600.0, help="simulated seconds per repeat")
    parser.add_argument("--repeats", type=int, default=3)


def measure(packs: int, sim_s: float, repeats: int) -> dict[str, Any]:
    from mbms.sim import fast
    from mbms.sim.scenario import Scenario

    base = Scenario.default().to_dict()
    base["events"] = []
    base["network"] = []
    base["scenario"]["duration_s"] = sim_s * (repeats + 1)
    sc = Scenario.from_dict(base).with_overrides(packs=packs)
    sim = fast.build(sc)
    dt_ms = round(sc.dt_s * 1000)
    t_ms = round(sim_s * 1000)
    sim.run_until(t_ms)  # cold start: strings close; warm caches
    wall, cpu = [], []
    for r in range(repeats):
        w0, c0 = time.perf_counter(), time.thread_time()
        sim.run_until(t_ms * (r + 2))
        wall.append(time.perf_counter() - w0)
        cpu.append(time.thread_time() - c0)
    steps = round(sim_s * 1000 / dt_ms)
    best = min(wall)
    rep = sim.report()
    cells = sum(s["series"] for s in sc.plant["strings"])
    return {
        "strings": packs,
        "cells": cells,
        "dt_s": sc.dt_s,
        "sim_s_per_repeat": sim_s,
        "steps_per_repeat": steps,
        "wall_s_best": round(best, 4),
        "cpu_s_best": round(min(cpu), 4),
        "realtime_factor": round(sim_s / best, 1),
        "realtime_factor_cpu": round(sim_s / min(cpu), 1),
        "us_per_step": round(best / steps * 1e6, 2),
        "target_realtime_factor": TARGET_RTF,
        "invariant_violations": len(rep["violations"]),
    }


def run(args: argparse.Namespace) -> int:
    res = measure(args.packs, args.sim_s, args.repeats)
    if args.json:
        print(json.dumps(res))
        return 0
    print(
        f"fast simulation, {res['strings']} strings x {res['cells'] // res['strings']} cells, "
        f"dt {res['dt_s']} s, all node logic in the loop"
    )
    print(f"  {res['us_per_step']:.1f} us per step ({res['steps_per_repeat']} steps, best of {args.repeats})")
    print(
        f"  real-time factor {res['realtime_factor']:.0f}x wall, {res['realtime_factor_cpu']:.0f}x CPU"
        f"   (target >= {TARGET_RTF:.0f}x: {res['realtime_factor'] / TARGET_RTF:.2f} of target)"
    )
    print(f"  invariant violations during the run: {res['invariant_violations']}")
    return 0
