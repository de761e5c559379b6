"""``mbms bench campaign``: the campaign engine's scale-out, measured side by side in one run.

The same job list runs three ways: in this process one after the other (no Dask: the cost of the
work itself), on a local Dask cluster of 1 worker, and of N workers. Printed: runs per second of
each, the scale-out efficiency rate(N) / (N x rate(1)) against the brief's >= 80 % target, and
Dask's overhead per job (1-worker time minus in-process time, per job). Cluster start-up is not
counted (a campaign pays it once); each cluster first runs one warm-up job.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

TARGET_EFFICIENCY = 0.80  # BRIEF §5: campaigns on a cluster, scale-out efficiency >= 80 % from 1 to N workers


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--kind", choices=["protocol", "fast"], default="protocol")
    p.add_argument("--jobs", type=int, default=24, help="jobs per configuration")
    p.add_argument("--schedules-per-job", type=int, default=100, help="protocol: schedules per job")
    p.add_argument("--duration", type=float, default=300.0, help="fast: simulated seconds per job")
    p.add_argument("--workers", type=int, default=2, help="N of the N-worker cluster")


def _spec(args: argparse.Namespace, first: int) -> Any:
    from mbms.campaign import spec as spec_mod

    if args.kind == "protocol":
        return spec_mod.from_dict({"campaign": {"name": "bench", "kind": "protocol"},
                                   "protocol": {"schedules": args.jobs * args.schedules_per_job,
                                                "schedules_per_job": args.schedules_per_job, "first_seed": first}})
    return spec_mod.from_dict({"campaign": {"name": "bench", "kind": "fast", "seeds": args.jobs, "first_seed": first},
                               "fast": {"duration_s": args.duration}})


def _on_cluster(args: argparse.Namespace, workers: int) -> float:
    from mbms.campaign import engine

    with engine.client(workers=workers) as c, tempfile.TemporaryDirectory() as tmp:
        warm = _spec(args, first=10_000_000)
        engine.run(type(warm)(warm.name, warm.kind, warm.jobs[:workers], warm.source), Path(tmp) / "warm", c)
        res = engine.run(_spec(args, first=0), Path(tmp) / "run", c, flush_rows=max(args.jobs, 1))
        assert res.ran == args.jobs and res.errors == 0
        return res.wall_s


def measure(args: argparse.Namespace) -> dict[str, Any]:
    from mbms.campaign.jobs import run_job

    spec = _spec(args, first=0)
    run_job(spec.jobs[0])  # warm imports, as the clusters' warm-up job does
    t0 = time.perf_counter()
    for j in spec.jobs:
        run_job(j)
    serial_s = time.perf_counter() - t0
    one_s = _on_cluster(args, 1)
    n_s = _on_cluster(args, args.workers)
    n = args.jobs
    eff = (n / n_s) / (args.workers * n / one_s)
    return {
        "kind": args.kind, "jobs": n, "workers": args.workers,
        "in_process_jobs_per_s": round(n / serial_s, 3),
        "dask_1_worker_jobs_per_s": round(n / one_s, 3),
        f"dask_{args.workers}_workers_jobs_per_s": round(n / n_s, 3),
        "scale_out_efficiency": round(eff, 3),
        "target_efficiency": TARGET_EFFICIENCY,
        "dask_overhead_per_job_ms": round(1000 * (one_s - serial_s) / n, 2),
        "job_s_in_process": round(serial_s / n, 4),
    }


def run(args: argparse.Namespace) -> int:
    m = measure(args)
    if args.json:
        print(json.dumps(m, indent=2))
        return 0
    w = args.workers
    print(f"campaign engine, {m['jobs']} {m['kind']} jobs ({m['job_s_in_process'] * 1000:.0f} ms each in process)")
    print(f"  in process, one after the other : {m['in_process_jobs_per_s']:8.2f} jobs/s")
    print(f"  Dask, 1 worker                  : {m['dask_1_worker_jobs_per_s']:8.2f} jobs/s "
          f"(overhead {m['dask_overhead_per_job_ms']:+.1f} ms per job)")
    print(f"  Dask, {w} workers                 : {m[f'dask_{w}_workers_jobs_per_s']:8.2f} jobs/s")
    print(f"  scale-out efficiency 1 -> {w}      : {100 * m['scale_out_efficiency']:6.1f} %  "
          f"(target >= {100 * TARGET_EFFICIENCY:.0f} %)")
    return 0
