"""The campaign report (``OUT/report.html``): violations first, each with the command that
reproduces it; then failed jobs; then how the figures are distributed against the parameters
(quantile tables always, PNG scatter plots with the ``plots`` extra)."""

from __future__ import annotations

import html
import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

from mbms.campaign.jobs import FIGURES

#: The figures worth a distribution, per kind (the rest of the columns are bookkeeping).
DISTRIBUTIONS = {
    "fast": ("max_overcurrent_a", "agree_p99_ms", "detect_p99_ms", "soc_err_max_pct", "isolations",
             "energy_out_kwh"),
    "protocol": ("agree_p99_periods", "detect_p99_periods", "grant_p99_periods", "aborts"),
}


def quantiles(values: list[float | None]) -> dict[str, float | int | None]:
    v = sorted(x for x in values if x is not None and not (isinstance(x, float) and math.isnan(x)))
    if not v:
        return {"n": 0, "min": None, "p50": None, "p90": None, "p99": None, "max": None}

    def q(p: float) -> float:
        return float(v[min(len(v) - 1, int(math.ceil(p / 100 * len(v))) - 1 if p > 0 else 0)])

    return {"n": len(v), "min": float(v[0]), "p50": q(50), "p90": q(90), "p99": q(99), "max": float(v[-1])}


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    kind = rows[0]["kind"] if rows else "fast"
    params = sorted({c[2:] for r in rows for c in r if c.startswith("p:")})
    figures = {}
    for name in DISTRIBUTIONS.get(kind, ()):
        overall = quantiles([r.get(name) for r in rows])
        by_param: dict[str, dict[str, Any]] = {}
        for p in params:
            groups: dict[Any, list[Any]] = defaultdict(list)
            for r in rows:
                groups[r.get(f"p:{p}")].append(r.get(name))
            by_param[p] = {str(k): quantiles(v) for k, v in sorted(groups.items(), key=lambda kv: str(kv[0]))}
        figures[name] = {"all": overall, "by_parameter": by_param}
    walls = [r["wall_s"] for r in rows if r.get("wall_s") is not None]
    return {
        "kind": kind,
        "rows": len(rows),
        "ok": sum(r["status"] == "ok" for r in rows),
        "violation_rows": sum(r["status"] == "violation" for r in rows),
        "error_rows": sum(r["status"] == "error" for r in rows),
        "schedules": sum(int(r.get("schedules") or 0) for r in rows) if kind == "protocol" else len(rows),
        "job_wall_s_sum": round(sum(walls), 3),
        "parameters": params,
        "violations": [_brief(r) for r in rows if r["status"] == "violation"],
        "errors": [_brief(r) | {"error": (r.get("error") or "").splitlines()[0] if r.get("error") else ""}
                   for r in rows if r["status"] == "error"],
        "figures": figures,
    }


def _brief(r: dict[str, Any]) -> dict[str, Any]:
    return {"seed": r["seed"], "params": json.loads(r["params"] or "{}"), "violations": r["violations"],
            "first_violation": r.get("first_violation") or "", "reproduce": r["reproduce"]}


def write(out: Path, rows: list[dict[str, Any]], name: str) -> Path:
    """Write ``summary.json``, ``report.html`` and (with matplotlib) PNG plots into ``out``."""
    s = summarise(rows)
    (out / "summary.json").write_text(json.dumps(s, indent=2))
    pngs = _plots(out, rows, s)
    esc = html.escape
    parts = [f"<!doctype html><meta charset=utf-8><title>mbms campaign {esc(name)}</title>",
             "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}code{font-size:90%}"
             ".bad{color:#b00}</style>",
             f"<h1>campaign {esc(name)}</h1>",
             f"<p>{s['rows']} rows ({s['kind']}, {s['schedules']} runs): {s['ok']} ok, "
             f"<b class=bad>{s['violation_rows']} with violations</b>, {s['error_rows']} failed.</p>"]
    parts.append(f"<h2 class=bad>Violations ({len(s['violations'])})</h2>")
    parts.append(_table(["seed", "parameters", "violations", "first violation", "reproduce with"],
                        [[v["seed"], _params(v["params"]), v["violations"], esc(v["first_violation"]),
                          f"<code>{esc(v['reproduce'])}</code>"] for v in s["violations"]]))
    parts.append(f"<h2>Failed jobs ({len(s['errors'])})</h2>")
    parts.append(_table(["seed", "parameters", "error", "reproduce with"],
                        [[e["seed"], _params(e["params"]), esc(e["error"]), f"<code>{esc(e['reproduce'])}</code>"]
                         for e in s["errors"]]))
    parts.append("<h2>Distributions</h2>")
    for fig, d in s["figures"].items():
        parts.append(f"<h3>{esc(fig)}</h3>")
        rows_html = [["all", *_q(d["all"])]]
        for p, groups in d["by_parameter"].items():
            rows_html += [[f"{esc(p)} = {esc(k)}", *_q(q)] for k, q in groups.items()]
        parts.append(_table(["", "n", "min", "p50", "p90", "p99", "max"], rows_html))
        for png in pngs.get(fig, []):
            parts.append(f"<img src='{esc(png)}' alt='{esc(fig)}'>")
    path = out / "report.html"
    path.write_text("\n".join(parts))
    return path


def _params(p: dict[str, Any]) -> str:
    return html.escape(", ".join(f"{k}={v}" for k, v in p.items()) or "-")


def _q(q: dict[str, Any]) -> list[Any]:
    return [q["n"]] + ["-" if q[k] is None else f"{q[k]:.4g}" for k in ("min", "p50", "p90", "p99", "max")]


def _table(head: list[str], rows: list[list[Any]]) -> str:
    if not rows:
        return "<p>none</p>"
    h = "".join(f"<th>{c}</th>" for c in head)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{h}</tr>{body}</table>"


def _plots(out: Path, rows: list[dict[str, Any]], s: dict[str, Any]) -> dict[str, list[str]]:
    from mbms.sim import report as sim_report

    if not rows or not s["parameters"] or not sim_report.plots_available():
        return {}
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made: dict[str, list[str]] = defaultdict(list)
    numeric = {k for k, t in FIGURES[s["kind"]].items() if t in ("int", "float")}
    for fig in s["figures"]:
        if fig not in numeric:
            continue
        for p in s["parameters"]:
            pts = [(x, y) for x, y in ((r.get(f"p:{p}"), r.get(fig)) for r in rows)
                   if isinstance(x, (int, float)) and isinstance(y, (int, float))]
            if not pts:
                continue
            f, ax = plt.subplots(figsize=(5, 3.2))
            ax.scatter([x for x, _ in pts], [y for _, y in pts], s=10, alpha=0.6)
            ax.set_xlabel(p)
            ax.set_ylabel(fig)
            ax.grid(alpha=0.3)
            f.tight_layout()
            name = f"{fig}__{p.replace('.', '_').replace('*', 'all')}.png"
            f.savefig(out / name, dpi=90)
            plt.close(f)
            made[fig].append(name)
    return made
