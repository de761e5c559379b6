"""Runs a campaign's jobs on Dask: a local cluster of worker processes, or a cluster's scheduler.

Jobs go out as Dask tasks and their rows come back as they finish (``as_completed``), straight
into the Parquet store. A worker that dies takes only its running jobs with it: the scheduler
gives them to another worker (Dask's ``distributed.scheduler.allowed-failures`` bounds how often
one job may kill a worker before it is reported as failed, and then it is a row with status
"error", not a lost job). A job that raises is already a row with its error (:func:`run_job`).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mbms.campaign.jobs import columns, reproduce, run_job
from mbms.campaign.spec import Job, Spec
from mbms.campaign.store import RowWriter, done_ids
from mbms.errors import EnvironmentProblem

Progress = Callable[[int, int, dict[str, Any]], None]  # (finished, total, row)


@dataclass
class Outcome:
    total: int  # jobs in the spec
    skipped: int  # already in the store (resume)
    ran: int
    violations: int  # rows with a violation
    errors: int  # rows that failed
    wall_s: float
    workers: int


def _distributed() -> Any:
    try:
        import distributed
    except ImportError:
        raise EnvironmentProblem("dask.distributed", "not installed", "pip install 'mbms[campaign]'") from None
    return distributed


@contextmanager
def client(scheduler: str | None = None, workers: int | None = None) -> Iterator[Any]:
    """A Dask client: to ``scheduler`` (``tcp://HOST:8786``) if given, else to a local cluster of
    ``workers`` single-threaded worker processes (default: one per core)."""
    distributed = _distributed()
    # Dask's own INFO lines (scheduler, nannies) would bury the campaign's progress; warnings stay
    for name in ("distributed", "dask"):
        logging.getLogger(name).setLevel(logging.WARNING)
    if scheduler:
        try:
            c = distributed.Client(scheduler, timeout="10s")
        except OSError as exc:
            raise EnvironmentProblem(f"Dask scheduler {scheduler}", f"unreachable: {exc}",
                                     "is `dask scheduler` running there, and the port open?") from None
        try:
            yield c
        finally:
            c.close()
        return
    n = workers or os.cpu_count() or 1
    # processes, one thread each: the jobs hold the GIL in Python parts, and a worker that dies
    # must not take other jobs' threads with it.
    # no dashboard: it needs bokeh and a fixed port (two campaigns at once would collide)
    with distributed.LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                                  scheduler_kwargs={"dashboard": False}, silence_logs=logging.WARNING) as cluster, distributed.Client(cluster) as c:
        yield c


def run(spec: Spec, out: Path, dask_client: Any, progress: Progress | None = None,
        flush_rows: int = 64) -> Outcome:
    """Run the spec's jobs that are not in ``out`` yet; rows stream into ``out/rows``."""
    distributed = _distributed()
    out.mkdir(parents=True, exist_ok=True)
    done = done_ids(out)
    todo = [j for j in spec.jobs if j.job_id not in done]
    writer = RowWriter(out, columns(spec.kind, dict(spec.jobs[0].params)), flush_rows=flush_rows)
    t0 = time.perf_counter()
    violations = errors = finished = 0
    futures = {dask_client.submit(run_job, j, key=f"mbms-job-{j.job_id}", pure=False): j for j in todo}
    try:
        for fut in distributed.as_completed(list(futures)):
            job = futures[fut]
            try:
                row = fut.result()
            except Exception as exc:  # the job killed its workers too often (KilledWorker), or was lost
                row = _lost_row(job, exc)
            writer.add(row)
            finished += 1
            violations += row["status"] == "violation"
            errors += row["status"] == "error"
            if progress is not None:
                progress(finished, len(todo), row)
    finally:
        writer.flush()
    n_workers = len(dask_client.scheduler_info().get("workers", {}))
    return Outcome(len(spec.jobs), len(spec.jobs) - len(todo), finished, violations, errors,
                   time.perf_counter() - t0, n_workers)


def _lost_row(job: Job, exc: BaseException) -> dict[str, Any]:
    import json

    return {
        "job_id": job.job_id, "kind": job.kind, "seed": job.seed, "count": job.count,
        "params": json.dumps(dict(job.params), sort_keys=True), "status": "error", "violations": 0,
        "first_violation": "", "reproduce": reproduce(job), "error": f"{type(exc).__name__}: {exc}",
        "wall_s": None, "worker": "",
    }
