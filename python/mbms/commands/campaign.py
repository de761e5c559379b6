"""``mbms campaign SPEC.toml``: many seeded simulations on Dask, one Parquet row per run.

Locally it starts a cluster of worker processes (one per core, or ``--workers N``); with
``--scheduler tcp://HOST:8786`` it runs on an existing Dask cluster. A re-run with the same
``--out`` skips the rows already there. Every violating row carries the ``mbms sim`` command
that reproduces it; ``OUT/report.html`` lists them first.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from mbms.errors import ExitCode


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("campaign", help="run a campaign of seeded simulations (Dask), with a report")
    p.add_argument("spec", metavar="SPEC.toml", help="the campaign spec (see mbms.campaign.spec)")
    p.add_argument("--out", metavar="DIR", help="results folder (default: ./campaign-<name>); a re-run resumes")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--scheduler", metavar="tcp://HOST:8786", help="a running Dask scheduler")
    where.add_argument("--workers", type=int, metavar="N", help="local cluster of N worker processes (default: cores)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--check", action="store_true",
                   help="check the spec (every key, and each parameter point's scenario built once, as a run "
                        "does before it starts) and print its jobs; no cluster: 0 ok, 2 errors")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from mbms.campaign import spec as spec_mod

    spec = spec_mod.load(args.spec)
    if args.check:  # the same load a run starts with; needs no cluster (nor the campaign extra)
        print(f"{args.spec}: campaign {spec.name}: {len(spec.jobs)} {spec.kind} jobs")
        return ExitCode.OK
    from mbms.campaign import engine, report, store
    if args.workers is not None and args.workers < 1:
        print("mbms campaign: error: --workers: expected N >= 1", file=sys.stderr)
        return ExitCode.USAGE
    out = Path(args.out or f"campaign-{spec.name}")
    console = Console(stderr=True, quiet=args.quiet)
    console.print(f"[bold]mbms campaign[/] {spec.name}: {len(spec.jobs)} {spec.kind} jobs -> {out}")
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("violations {task.fields[bad]} · failed {task.fields[err]}"),
                        TimeRemainingColumn(), console=console)
    with engine.client(args.scheduler, args.workers) as dask_client, progress:
        task = progress.add_task("running", total=None, bad=0, err=0)
        counts = {"bad": 0, "err": 0}

        def on_row(done: int, total: int, row: dict[str, Any]) -> None:
            counts["bad"] += row["status"] == "violation"
            counts["err"] += row["status"] == "error"
            progress.update(task, completed=done, total=total, bad=counts["bad"], err=counts["err"])

        res = engine.run(spec, out, dask_client, progress=on_row)
    rows = store.read_rows(out)
    path = report.write(out, rows, spec.name)
    rate = res.ran / res.wall_s if res.wall_s > 0 else 0.0
    print(f"mbms campaign {spec.name}: {res.ran} jobs run, {res.skipped} already done (resumed), "
          f"{res.total} in all, on {res.workers} worker(s) in {res.wall_s:.1f} s ({rate:.2f} jobs/s)")
    s = report.summarise(rows)
    print(f"  rows {s['rows']}: {s['ok']} ok, {s['violation_rows']} with violations, {s['error_rows']} failed; "
          f"report {path}")
    for v in s["violations"][:10]:
        print(f"  VIOLATION seed {v['seed']} {v['params']}: {v['first_violation']}\n    reproduce: {v['reproduce']}")
    for e in s["errors"][:10]:
        print(f"  FAILED seed {e['seed']} {e['params']}: {e['error']}\n    reproduce: {e['reproduce']}")
    return ExitCode.FAILED_CHECK if s["violation_rows"] or s["error_rows"] else ExitCode.OK
