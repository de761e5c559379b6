"""``mbms bench core``: the pack engine step, ns per cell-step, Rust against the batched numpy
implementation of the same math (``mbms.reference.engine_numpy``), side by side in one run.

Both engines get the same inputs: a pack of N series elements with a spread of SOC around a
dynamic discharge/charge current profile, ±1 mV voltage noise and 0.1 °C temperature noise,
one temperature sensor per 4 elements. Figures:

* ``rust_ns_per_cell``: the Rust step run in a loop inside Rust (``Engine.step_many``), i.e.
  the core's cost per cell;
* ``rust_py_ns_per_cell``: the Rust step called once per step from Python (binding and
  argument checks included, results not converted);
* ``numpy_ns_per_cell``: the numpy reference called once per step from Python.

Each engine is measured ``--repeat`` times (3), in alternating rounds, and the medians are
printed; the speedup is the median of the rounds' own ratios, with their range, because a
single pair of timings on a shared machine moves by 10 % from run to run.

Times are per-thread CPU time (``time.thread_time_ns``) so that other load on the machine
does not inflate them; wall-clock figures are printed beside them.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from typing import Any
from dataclasses import replace

import numpy as np

from mbms.engine import Engine, PackConfig
from mbms.paths import pack_file
from mbms.reference.engine_numpy import NumpyEngine

SIZES = (16, 1000, 10000)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sizes", type=int, nargs="+", default=list(SIZES), help="cell counts")
    p.add_argument("--cell-steps", type=float, default=2e6,
                   help="cell-steps per measurement (steps = this / cells, at least 20)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--repeat", type=int, default=3,
                   help="measure each engine this many times, alternating (figures: the medians; the speedup: "
                        "the median of the per-round ratios)")


def pack_config(n: int) -> PackConfig:
    base = PackConfig.from_toml(pack_file("example_pack"))
    pack = replace(base.pack, series=n, temp_sensors=max(1, n // 4))
    # no rest point during the run (not in the numpy reference)
    est = replace(base.estimator, rest_time_s=1e9, rest_end_min_s=0.0)
    cfg = replace(base, pack=pack, estimator=est)
    return PackConfig.from_dict(cfg.engine_dict(), source=base.source)


def inputs(n: int, steps: int, seed: int) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    nt = max(1, n // 4)
    t = 0.1 * np.arange(steps, dtype=np.float64)
    profile = np.array([20.0, 5.0, -8.0, 30.0, 12.0, -4.0])
    i = profile[(np.arange(steps) // 50) % len(profile)]
    ocv0 = 3.70 + 0.03 * rng.random(n)
    v = ocv0[None, :] - 0.00625 * i[:, None] - 2e-6 * np.arange(steps)[:, None]
    v = v + 0.001 * rng.standard_normal((steps, n))
    tc = 25.0 + 0.1 * rng.standard_normal((steps, nt))
    return t, np.ascontiguousarray(v), np.ascontiguousarray(tc), i.astype(np.float64)


def _timed(fn: Callable[[], object]) -> tuple[float, float]:
    w0, c0 = time.perf_counter_ns(), time.thread_time_ns()
    fn()
    return float(time.thread_time_ns() - c0), float(time.perf_counter_ns() - w0)


def _round(cfg: PackConfig, t: np.ndarray, v: np.ndarray, tc: np.ndarray, i: np.ndarray, steps: int,
           np_steps: int) -> tuple[tuple[float, float], tuple[float, float], tuple[float, float], NumpyEngine]:
    """One round: each engine from a fresh start over the same inputs; (CPU, wall) ns of the
    Rust loop, the Rust step called from Python, and the numpy reference."""
    rust = Engine(cfg)
    rust.step(t[0], v[0], tc[0], i[0])  # initialisation step, not timed
    r = _timed(lambda: rust.step_many(t[1:], v[1:], tc[1:], i[1:]))

    core = Engine(cfg)._core
    core.step(t[0], v[0], tc[0], i[0])

    def py_loop() -> None:
        for k in range(1, steps + 1):
            core.step(t[k], v[k], tc[k], i[k])

    rp = _timed(py_loop)

    ref = NumpyEngine(cfg)
    ref.step(t[0], v[0], tc[0], i[0])

    def np_loop() -> None:
        for k in range(1, np_steps + 1):
            ref.step(t[k], v[k], tc[k], i[k])

    return r, rp, _timed(np_loop), ref


def measure(n: int, cell_steps: float, seed: int, repeat: int = 1) -> dict[str, Any]:
    if repeat < 1:
        raise ValueError(f"repeat {repeat}: expected at least 1")
    cfg = pack_config(n)
    steps = max(20, int(cell_steps / n))
    np_steps = max(5, min(steps, int(cell_steps / 10 / n)))  # numpy is slow; fewer steps
    t, v, tc, i = inputs(n, steps + 1, seed)
    # rounds alternate the engines, so that a change of load on the machine meets both alike
    rounds = [_round(cfg, t, v, tc, i, steps, np_steps) for _ in range(repeat)]
    ref = rounds[-1][3]
    med = statistics.median
    cpu_r, wall_r = med(x[0][0] for x in rounds), med(x[0][1] for x in rounds)
    cpu_rp = med(x[1][0] for x in rounds)
    cpu_n, wall_n = med(x[2][0] for x in rounds), med(x[2][1] for x in rounds)
    ratios = [(x[2][0] / np_steps) / (x[0][0] / steps) for x in rounds]
    # the two engines saw the same inputs: their SOC must agree (a wrong benchmark is worse
    # than none)
    agree = float(np.max(np.abs(Engine(cfg).step_many(t[: np_steps + 1], v[: np_steps + 1],
                                                       tc[: np_steps + 1], i[: np_steps + 1],
                                                       record_soc=True)[-1] - ref.z.clip(0, 1))))
    per = float(n * steps)
    per_np = float(n * np_steps)
    return {
        "cells": n,
        "steps": steps,
        "rust_ns_per_cell": cpu_r / per,
        "rust_py_ns_per_cell": cpu_rp / per,
        "numpy_ns_per_cell": cpu_n / per_np,
        "speedup": med(ratios),
        "speedup_rounds": ratios,
        "speedup_py": (cpu_n / per_np) / (cpu_rp / per),
        "rust_wall_ns_per_cell": wall_r / per,
        "numpy_wall_ns_per_cell": wall_n / per_np,
        "max_soc_diff": agree,
    }


def scaling(rows: list[dict[str, Any]]) -> float | None:
    """Rust core cost per cell at the largest size over that at the next smaller one (issue 9:
    within 15 % from 1 000 to 10 000 cells); None with fewer than two sizes."""
    by_n = sorted(rows, key=lambda r: r["cells"])
    if len(by_n) < 2:
        return None
    return float(by_n[-1]["rust_ns_per_cell"]) / float(by_n[-2]["rust_ns_per_cell"])


def run(args: argparse.Namespace) -> int:
    rows = [measure(n, args.cell_steps, args.seed, args.repeat) for n in args.sizes]
    ratio = scaling(rows)
    if args.json:
        out: dict[str, Any] = dict(rows[-1])
        out["sizes"] = rows
        out["scaling"] = ratio
        print(json.dumps(out))
        return 0
    print(f"pack engine step, ns per cell-step (thread CPU time; wall in brackets): medians of {args.repeat} "
          "alternating rounds; speedup: the median of the rounds' ratios, their range after it")
    print(f"{'cells':>7} {'rust core':>16} {'rust via py':>12} {'numpy':>18} {'speedup':>8} "
          f"{'(py)':>6} {'|dSOC|':>8}")
    for r in rows:
        print(f"{r['cells']:>7} {r['rust_ns_per_cell']:>7.1f} [{r['rust_wall_ns_per_cell']:>6.1f}] "
              f"{r['rust_py_ns_per_cell']:>12.1f} {r['numpy_ns_per_cell']:>8.1f} "
              f"[{r['numpy_wall_ns_per_cell']:>7.1f}] {r['speedup']:>7.1f}x {r['speedup_py']:>5.1f}x "
              f"{r['max_soc_diff']:>8.1e}  ({min(r['speedup_rounds']):.1f}..{max(r['speedup_rounds']):.1f}x)")
    if ratio is not None:
        big, small = sorted(int(r["cells"]) for r in rows)[-2:][::-1]
        print(f"cost per cell at {big} cells / at {small} cells: {ratio:.2f}")
    # absolute times differ 2..3x between machines (brief §5), so the target is a ratio
    print("target (brief §5, issues 9 and 16): >= 10x numpy at 10 000 cells, "
          "cost per cell within 15 % of that at 1 000")
    return 0
