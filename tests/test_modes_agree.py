"""Same settings, same decisions in every mode (issue 9, item 7).

A shortened default story (tests/data/scenarios/modes_agree.toml: three strings, a cold start one at
a time, a string that joins late under load, an isolation on a confirmed fault and the rejoin after
the auto reset) runs through the command line in fast mode (NodeCore in virtual time) and in
processes mode (one ``mbms plant`` and three ``mbms node`` processes on python-can udp_multicast,
wall-clock time). Both write the timeline of ``summary.json``; the nodes' decisions in it (closes,
rejoins, opens, isolations) must come in the same order, each within TOLERANCE_S of the other
mode's.

Times are plant seconds. Processes mode starts its node processes after the plant answers, so
their Python start-up (2-15 s on this shared 2-core machine) passes on the plant clock before a
node can decide anything; fast mode has none. The cold-start closes (those fast mode makes in the
first COLD_START_S) are therefore compared after removing that offset, measured by processes mode
itself (``all_nodes_heard_at_s`` in processes.json: when every node's telemetry was first heard).
Every later decision follows a fault injected at a fixed plant time and is compared as it is.

Tolerance: contactors are sampled every 50 ms and recorded every 1 s (``record_every_s`` of the
default), a latched fault is retried every auto_reset_s = 5 s from a start that differs between
the modes, and node start-up varies by a few seconds: 8 s covers these with margin and is well
below the ~55 s by which a lost node setting (auto_reset_s 60 instead of 5) moves a join.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from mbms.sim.report import decisions

SCENARIO = Path(__file__).parent / "data" / "scenarios" / "modes_agree.toml"
TOLERANCE_S = 8.0
#: Decisions fast mode makes before this are the cold start (compared without the start-up offset).
COLD_START_S = 5.0
#: What the story must contain (else the comparison would compare too little).
EXPECTED = [
    ("close", 1), ("close", 2),  # cold start, one at a time (in either order)
    ("close", 3),  # the late joiner, after its sensor is repaired
    ("isolate", 2), ("rejoin", 2),
]


def _run(mode: str, out: Path) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, "-m", "mbms", "sim", "--scenario", str(SCENARIO), "--mode", mode,
                           "--out", str(out), "--quiet"], capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, f"mbms sim --mode {mode}: exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    summary: dict[str, Any] = json.loads((out / "summary.json").read_text())
    assert summary["mode"] == mode
    return summary


def compare(fast: list[dict[str, Any]], procs: list[dict[str, Any]], tol_s: float,
            start_offset_s: float = 0.0) -> list[str]:
    """Differences between two decision sequences: per pack the same decisions in the same order,
    each within ``tol_s`` of the other mode's (a cold-start decision of ``procs`` after removing
    ``start_offset_s``, see the module docstring). (Across packs this keeps the order of any two
    decisions more than 2 tol_s apart; closer ones may swap, as two nodes' decisions within one
    record period of each other can.)"""
    problems = []
    for p in sorted({d["pack"] for d in fast + procs}):
        a = [d for d in fast if d["pack"] == p]
        b = [d for d in procs if d["pack"] == p]
        if [d["decision"] for d in a] != [d["decision"] for d in b]:
            problems.append(f"pack {p}: fast {[(d['decision'], d['t_s']) for d in a]} "
                            f"vs processes {[(d['decision'], d['t_s']) for d in b]}")
            continue
        for x, y in zip(a, b):
            t_y = y["t_s"] - start_offset_s if x["t_s"] < COLD_START_S else y["t_s"]
            if abs(x["t_s"] - t_y) > tol_s:
                problems.append(f"pack {p} {x['decision']}: fast t={x['t_s']} s, processes t={y['t_s']} s "
                                f"(compared as {t_y:.1f} s)")
    return problems


def test_compare_sees_differences() -> None:
    """The comparison fails on a late, a missing and a reordered decision (sabotage check)."""
    a = [{"t_s": 2.0, "pack": 1, "decision": "close"}, {"t_s": 3.0, "pack": 2, "decision": "close"},
         {"t_s": 40.0, "pack": 1, "decision": "isolate"}, {"t_s": 62.0, "pack": 1, "decision": "rejoin"}]
    assert compare(a, a, TOLERANCE_S) == []
    late = [dict(d) for d in a]
    late[3]["t_s"] = 112.0  # what auto_reset_s 60 instead of 10 does to the rejoin
    assert compare(a, late, TOLERANCE_S)
    assert compare(a, a[:3], TOLERANCE_S)
    assert compare(a, [a[0], a[1], a[3], a[2]], TOLERANCE_S)  # rejoin before the isolation
    assert compare(a, [a[0], a[1], {**a[2], "decision": "open"}, a[3]], TOLERANCE_S)  # an open, not an isolation
    # the start-up offset applies to the cold start only
    shifted = [{**a[0], "t_s": 14.0}, {**a[1], "t_s": 15.0}, a[2], a[3]]
    assert compare(a, shifted, TOLERANCE_S) and not compare(a, shifted, TOLERANCE_S, start_offset_s=12.0)
    assert compare(a, [{**d, "t_s": d["t_s"] + 12.0} for d in a], TOLERANCE_S, start_offset_s=12.0)


@pytest.mark.timeout(900)
def test_fast_and_processes_modes_make_the_same_decisions(tmp_path: Path) -> None:
    fast = _run("fast", tmp_path / "fast")
    fast_d = decisions(fast)
    kinds = [(d["decision"], d["pack"]) for d in fast_d]
    for want in EXPECTED:
        assert want in kinds, f"fast mode: the story lacks {want}: {fast_d}"
    assert fast["invariant_violations"] == 0, fast["violations"]

    procs = _run("processes", tmp_path / "processes")
    procs_d = decisions(procs)
    assert procs["invariant_violations"] == 0, procs["violations"]
    offset = json.loads((tmp_path / "processes" / "processes.json").read_text())["all_nodes_heard_at_s"]
    assert offset is not None
    problems = compare(fast_d, procs_d, TOLERANCE_S, start_offset_s=float(offset))
    assert not problems, "\n".join(problems) + f"\nfast: {fast_d}\nprocesses: {procs_d} (start-up {offset} s)"
