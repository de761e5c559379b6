"""Tune a cell file's [estimator] table on the TUNING split of the DFN trace family only.

    python scripts/tune_estimator.py --cell lg_m50_nmc --grid model_error_v_per_c=0.01,0.02 \
        --grid model_error_relax_s=0,300

Every combination of the grid values is written into a temporary copy of the cell file and
scored with the harness (``mbms.accuracy.soc_accuracy``, default corruption, seed 1) on the
tuning traces of that cell; one line per combination, best first (score: the mean over the
traces of the squared RMSE and max |error| after 10 min, each over its issue-16 target). The
held-out traces are never read here: pick a setting, write it into the cell file, then run
``mbms bench soc`` for the held-out figures.
"""

from __future__ import annotations

import argparse
import itertools
import re
import tempfile
from pathlib import Path

from mbms.accuracy import Corruption, ReferenceTrace, family_traces, one_cell_pack, soc_accuracy
from mbms.paths import cell_file


def with_estimator(text: str, values: dict[str, float]) -> str:
    """The cell file text with these [estimator] keys set (replaced or appended)."""
    head, sep, tail = text.partition("\n[estimator]\n")
    if not sep:
        head, sep, tail = text, "\n[estimator]\n", ""
    lines = tail.split("\n")
    for k, v in values.items():
        pat = re.compile(rf"^{re.escape(k)}\s*=")
        hit = [j for j, ln in enumerate(lines) if pat.match(ln)]
        if hit:
            lines[hit[0]] = f"{k} = {v}"
        else:
            lines.insert(0, f"{k} = {v}")
    return head + sep + "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cell", required=True, help="cell file name, e.g. lg_m50_nmc")
    ap.add_argument("--grid", action="append", default=[], help="KEY=v1,v2,... (repeatable)")
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    grid = {}
    for g in a.grid:
        k, _, vs = g.partition("=")
        grid[k] = [float(x) for x in vs.split(",")]
    src = cell_file(a.cell)
    traces = [ReferenceTrace.load(p) for p in family_traces("tuning").values()]
    traces = [t for t in traces if Path(t.cell_file).stem == src.stem or t.cell_file == src.stem]
    if not traces:
        raise SystemExit(f"no tuning traces of {a.cell}")
    rows = []
    with tempfile.TemporaryDirectory() as d:
        for combo in itertools.product(*grid.values()):
            vals = dict(zip(grid, combo))
            tmp = Path(d) / src.name
            tmp.write_text(with_estimator(src.read_text(), vals))
            res = []
            for tr in traces:
                r = soc_accuracy(tr, config=one_cell_pack(str(tmp)), corruption=Corruption(seed=a.seed))
                rt, mt = r.targets
                res.append((tr.name, r.rmse_after_settle, r.max_abs_after_settle,
                            (r.rmse_after_settle / rt) ** 2 + (r.max_abs_after_settle / mt) ** 2, r.nees_inside))
            score = sum(x[3] for x in res) / len(res)
            rows.append((score, vals, res))
            print(f"{score:8.3f} {vals} " + " ".join(f"{n}:{100*rm:.2f}/{100*mx:.2f}/n{ne:.2f}" for n, rm, mx, _, ne in res), flush=True)
    print("--- best first")
    for score, vals, res in sorted(rows, key=lambda x: x[0])[:10]:
        print(f"{score:8.3f} {vals} " + " ".join(f"{n}:{100*rm:.2f}/{100*mx:.2f}" for n, rm, mx, _, _ in res))


if __name__ == "__main__":
    main()
