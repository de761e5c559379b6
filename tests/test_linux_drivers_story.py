"""The default story (the shortened one of tests/test_modes_agree.py: cold start one at a time, a
late joiner after a sensor repair, an isolation and a rejoin) in processes mode with every node on
the Linux drivers over the plant's emulated devices (``mbms sim --mode processes --hardware
linux``): the same decisions as fast mode, as the sim link makes them (test_modes_agree)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from test_modes_agree import EXPECTED, SCENARIO, TOLERANCE_S, compare

from mbms.sim.report import decisions


def _run(out: Path, *extra: str) -> dict:
    proc = subprocess.run([sys.executable, "-m", "mbms", "sim", "--scenario", str(SCENARIO), "--out", str(out),
                           "--quiet", *extra], capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, f"mbms sim {extra}: exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return json.loads((out / "summary.json").read_text())  # type: ignore[no-any-return]


@pytest.mark.timeout(900)
def test_processes_mode_on_the_linux_drivers_makes_the_same_decisions(tmp_path: Path) -> None:
    fast_d = decisions(_run(tmp_path / "fast", "--mode", "fast"))
    for want in EXPECTED:
        assert want in [(d["decision"], d["pack"]) for d in fast_d], f"fast mode: the story lacks {want}"
    linux = _run(tmp_path / "linux", "--mode", "processes", "--hardware", "linux")
    assert linux["invariant_violations"] == 0, linux["violations"]
    # every node really ran adapter "linux": its pack file says so and the chain emulator was read
    run = tmp_path / "linux" / "run"
    assert all('adapter = "linux"' in (run / f"node{k}.toml").read_text() for k in (1, 2, 3))
    offset = json.loads((tmp_path / "linux" / "processes.json").read_text())["all_nodes_heard_at_s"]
    assert offset is not None
    linux_d = decisions(linux)
    problems = compare(fast_d, linux_d, TOLERANCE_S, start_offset_s=float(offset))
    assert not problems, "\n".join(problems) + f"\nfast: {fast_d}\nlinux drivers: {linux_d} (start-up {offset} s)"
