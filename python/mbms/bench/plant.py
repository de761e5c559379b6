"""``mbms bench plant``: real-time factor of the plant simulator alone.

16 strings × 96 series elements (4P of lg_m50_nmc) on one bus, all mains closed, the built-in
drive profile (so currents, SOCs and temperatures move every step), 100 ms steps. Reports
wall-clock and on-CPU figures side by side: on a shared machine the CPU time is the cost of the
plant itself, the wall clock what a user waits.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from mbms.plant import Plant

TARGET_RTF = 10_000.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--strings", type=int, default=16)
    parser.add_argument("--series", type=int, default=96)
    parser.add_argument("--parallel", type=int, default=4)
    parser.add_argument("--dt", type=float, default=0.1, help="step (s)")
    parser.add_argument("--sim-s", type=float, default=3600.0, help="simulated time per repeat (s)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cell", default="lg_m50_nmc")


def description(strings: int, series: int, parallel: int, cell: str, sensors: bool = False) -> dict[str, Any]:
    # noisy sensors sampled every step (0.1 s), NTCs at one element in four
    sens = {
        "temp_sensors": max(1, series // 4),
        "cell_voltage": {"noise": 0.001, "lsb": 1e-4, "period_s": 0.1},
        "cell_temp": {"noise": 0.2, "lsb": 0.1, "period_s": 0.1},
        "current": {"noise": 0.05, "lsb": 0.01, "period_s": 0.1},
        "string_voltage": {"noise": 0.05, "period_s": 0.1},
        "bus_voltage": {"noise": 0.05, "period_s": 0.1},
    }
    return {
        "bus": {"capacitance_f": 2e-3, "v_initial_v": 0.0},
        "load": {"kind": "drive", "peak": 25.0 * strings * parallel / 4, "period_s": 600.0},
        "strings": [
            {
                "series": series,
                "parallel": parallel,
                "cell": cell,
                "initial_soc": 0.55 + 0.01 * (k % 10),
                "r_extra_ohm": 0.004 + 0.0005 * (k % 3),
                "variation": {"capacity_sigma": 0.01, "resistance_sigma": 0.04, "soc_sigma": 0.005, "self_discharge_a": 2e-5},
                "contactors": {"close_time_s": 0.0, "open_time_s": 0.0},
                "sensors": sens if sensors else {},
            }
            for k in range(strings)
        ],
    }


def measure(args: argparse.Namespace) -> dict[str, Any]:
    p = Plant(description(args.strings, args.series, args.parallel, args.cell), seed=1)
    for k in range(args.strings):
        p.set_command(k, neg=True, pos=True)
    p.run(args.dt, 50)  # settle the bus, warm the caches
    n = max(1, int(round(args.sim_s / args.dt)))
    wall, cpu = [], []
    for _ in range(args.repeats):
        w0, c0 = time.perf_counter(), time.thread_time()
        p.run(args.dt, n)
        wall.append(time.perf_counter() - w0)
        cpu.append(time.thread_time() - c0)
    best_wall, best_cpu = min(wall), min(cpu)
    # the same with every string measured after every step (what the BMUs add)
    pm = Plant(description(args.strings, args.series, args.parallel, args.cell, sensors=True), seed=1)
    for k in range(args.strings):
        pm.set_command(k, neg=True, pos=True)
    pm.run(args.dt, 50, measure_all=True)
    m_wall, m_cpu = [], []
    for _ in range(args.repeats):
        w0, c0 = time.perf_counter(), time.thread_time()
        pm.run(args.dt, n, measure_all=True)
        m_wall.append(time.perf_counter() - w0)
        m_cpu.append(time.thread_time() - c0)
    sim = n * args.dt
    cells = args.strings * args.series
    e = p.energy()
    return {
        "realtime_factor_measured": sim / min(m_wall),
        "realtime_factor_measured_cpu": sim / min(m_cpu),
        "strings": args.strings,
        "series": args.series,
        "parallel": args.parallel,
        "cells": cells,
        "dt_s": args.dt,
        "steps": n,
        "realtime_factor": sim / best_wall,
        "realtime_factor_cpu": sim / best_cpu,
        "us_per_step": best_wall / n * 1e6,
        "ns_per_element_step": best_wall / n / cells * 1e9,
        "ns_per_element_step_cpu": best_cpu / n / cells * 1e9,
        "target_realtime_factor": TARGET_RTF,
        "energy_residual_j": e.residual,
        "energy_out_j": e.cells_out,
    }


def run(args: argparse.Namespace) -> int:
    r = measure(args)
    if args.json:
        print(json.dumps(r))
        return 0
    print(f"plant: {r['strings']} strings x {r['series']}s{r['parallel']}p ({r['cells']} series elements), dt = {r['dt_s']} s")
    print(f"  {'':24}{'wall clock':>14}{'on CPU':>14}{'target':>12}")
    print(f"  {'real-time factor':24}{r['realtime_factor']:>14,.0f}{r['realtime_factor_cpu']:>14,.0f}{TARGET_RTF:>12,.0f}")
    print(
        f"  {'  + all strings measured':24}{r['realtime_factor_measured']:>14,.0f}{r['realtime_factor_measured_cpu']:>14,.0f}"
    )
    print(f"  {'ns per element-step':24}{r['ns_per_element_step']:>14.2f}{r['ns_per_element_step_cpu']:>14.2f}")
    print(f"  {'us per step':24}{r['us_per_step']:>14.1f}")
    print(f"  energy residual {r['energy_residual_j']:.3e} J of {r['energy_out_j']:.3e} J out of the cells")
    return 0
