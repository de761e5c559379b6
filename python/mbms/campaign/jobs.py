"""One campaign job, run where a worker runs it: in, a :class:`~mbms.campaign.spec.Job`; out, one row.

A row is a flat dict of columns (the Parquet table's schema): what was run, what it found, and
``reproduce``, the one ``mbms sim`` command that runs the same thing again. A job that raises
(or whose Rust core panics) comes back as a row with ``status = "error"`` and the error text:
nothing a job does is lost, and a failure never takes the campaign down.
"""

from __future__ import annotations

import json
import os
import shlex
import socket
import time
import traceback
from typing import Any

import numpy as np

from mbms.campaign.spec import Job
from mbms.sim.overrides import apply_settings, format_value
from mbms.sim.scenario import Scenario

#: The table's columns and their types ("str", "int", "float"): every row of a kind has these
#: (null where a failed job has no figure), plus one ``p:<parameter>`` column per parameter.
COMMON = {"job_id": "str", "kind": "str", "seed": "int", "count": "int", "params": "str", "status": "str",
          "violations": "int", "first_violation": "str", "reproduce": "str", "error": "str", "wall_s": "float",
          "worker": "str"}
FIGURES = {
    "fast": {"packs": "int", "duration_s": "float", "agree_p50_ms": "float", "agree_p99_ms": "float",
             "detect_p99_ms": "float", "max_overcurrent_a": "float", "energy_out_kwh": "float",
             "energy_in_kwh": "float", "isolations": "int", "rejoins": "int", "soc_err_max_pct": "float",
             "sim_wall_s": "float"},
    "protocol": {"schedules": "int", "failing_schedules": "int", "agree_p99_periods": "float",
                 "detect_p99_periods": "float", "grant_p99_periods": "float", "closes": "int", "aborts": "int",
                 "failing_seeds": "str"},
}


def columns(kind: str, params: dict[str, object]) -> dict[str, str]:
    """Column name -> type of a campaign of ``kind`` whose parameters take values like ``params``."""
    cols = dict(COMMON) | FIGURES[kind]
    for k, v in params.items():
        cols[f"p:{k}"] = "float" if isinstance(v, (int, float)) and not isinstance(v, bool) else "str"
    return cols


def scenario_of(job: Job) -> Scenario:
    """The scenario a fast job runs (ConfigError naming the setting if a parameter is bad)."""
    from mbms.paths import scenario_file

    base = Scenario.default() if job.scenario == "default" else Scenario.from_toml(scenario_file(job.scenario))
    params = dict(job.params)
    packs = params.pop("packs", None)
    sc = base.with_overrides(packs=int(packs) if packs is not None else None, duration_s=job.duration_s,
                             seed=job.seed, mode="fast")
    return apply_settings(sc, params.items())


def reproduce(job: Job, seed: int | None = None) -> str:
    """The one ``mbms sim`` command that runs this job (a protocol job: its schedule ``seed``)."""
    if job.kind == "protocol":
        cmd = ["mbms", "sim", "--protocol", "--seed", str(job.seed if seed is None else seed),
               "--peers-min", str(job.peers_min), "--peers-max", str(job.peers_max),
               "--duration-ms", str(job.duration_ms)]
        if job.sabotage != "none":
            cmd += ["--sabotage", job.sabotage]
        if job.adversary != "mixed":
            cmd += ["--adversary", job.adversary]
        return shlex.join(cmd)
    cmd = ["mbms", "sim"]
    if job.scenario != "default":
        cmd += ["--scenario", job.scenario]
    cmd += ["--seed", str(job.seed)]
    if job.duration_s is not None:
        cmd += ["--duration", format_value(job.duration_s)]
    for k, v in job.params:
        if k == "packs":
            cmd += ["--packs", str(int(v))]
        else:
            cmd += ["--set", f"{k}={format_value(v)}"]
    return shlex.join(cmd + ["--quiet"])


def run_job(job: Job) -> dict[str, Any]:
    """Run one job; always returns a row (``status`` ok, violation or error)."""
    t0 = time.perf_counter()
    row: dict[str, Any] = {
        "job_id": job.job_id, "kind": job.kind, "seed": job.seed, "count": job.count,
        "params": json.dumps(dict(job.params), sort_keys=True), "status": "ok", "violations": 0,
        "first_violation": "", "reproduce": reproduce(job), "error": "",
        "worker": f"{socket.gethostname()}:{os.getpid()}",
    }
    for k, v in job.params:
        row[f"p:{k}"] = float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else str(v)
    try:
        row.update(_fast(job) if job.kind == "fast" else _protocol(job))
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # noqa: BLE001 - a Rust panic arrives as PanicException(BaseException)
        row["status"] = "error"
        row["error"] = f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=6)}"
    if row["status"] == "ok" and row["violations"]:
        row["status"] = "violation"
    row["wall_s"] = round(time.perf_counter() - t0, 4)
    return row


def _fast(job: Job) -> dict[str, Any]:
    from mbms.sim import fast, report

    res = fast.run(scenario_of(job))
    s = report.summary(res)
    sysf = s["system"]
    err = np.abs(res.per_string("soc_est") - res.per_string("soc_true"))
    alive = res.per_string("alive") > 0
    # after the first 10 minutes, as the brief's SOC target is stated
    late = res.sys("t_s") >= 600.0 if "t_s" in res.system_channels else np.ones(len(err), bool)
    sel = err[late[:, None] & alive] if err.size else err
    return {
        "violations": s["invariant_violations"],
        "first_violation": s["violations"][0] if s["violations"] else "",
        "packs": s["packs_n"],
        "duration_s": s["duration_s"],
        "agree_p50_ms": _num(sysf["agree_latency_ms"].get("p50")),
        "agree_p99_ms": _num(sysf["agree_latency_ms"].get("p99")),
        "detect_p99_ms": _num(sysf["detect_latency_ms"].get("p99")),
        "max_overcurrent_a": float(sysf["max_string_overcurrent_a"]),
        "energy_out_kwh": float(sysf["energy_discharged_kwh"]),
        "energy_in_kwh": float(sysf["energy_charged_kwh"]),
        "isolations": int(sum(p["isolations"] for p in s["packs"])),
        "rejoins": int(sum(p["rejoins"] for p in s["packs"])),
        "soc_err_max_pct": round(100.0 * float(sel.max()), 3) if sel.size else None,
        "sim_wall_s": s["wall_s"],
    }


def _protocol(job: Job) -> dict[str, Any]:
    from mbms import _core
    from mbms.commands.sim import ADVERSARY

    r = _core.consensus_sim(job.count, first_seed=job.seed, peers_min=job.peers_min, peers_max=job.peers_max,
                            duration_ms=job.duration_ms, threads=1, sabotage=job.sabotage,
                            adversary=ADVERSARY[job.adversary])
    out: dict[str, Any] = {
        "violations": int(r["violations"]),
        "schedules": int(r["schedules"]),
        "failing_schedules": len(r["failing"]),
        "agree_p99_periods": _num(r["agree_p99_periods"]),
        "detect_p99_periods": _num(r["detect_p99_periods"]),
        "grant_p99_periods": _num(r["grant_p99_periods"]),
        "closes": int(r["closes"]),
        "aborts": int(r["aborts"]),
        "failing_seeds": json.dumps([int(seed) for seed, _ in r["failing"][:50]]),
    }
    if r["failing"]:
        seed, what = r["failing"][0]
        out["first_violation"] = f"seed {seed}: {what}"
        out["reproduce"] = reproduce(job, seed=int(seed))
    return out


def _num(v: Any) -> float | None:
    return None if v is None else float(v)
