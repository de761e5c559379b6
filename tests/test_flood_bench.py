"""``mbms bench flood`` (issue 15): real nodes close from cold under a flood of forged peer frames
as they do without it; a short run of the benchmark (the figures: docs/security.md)."""

from __future__ import annotations

import json
import subprocess
import sys


def test_nodes_close_under_a_flood_of_forged_frames() -> None:
    out = subprocess.run([sys.executable, "-m", "mbms", "bench", "flood", "--rates", "0,800", "--seconds", "14", "--json"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:] + out.stdout[-3000:]
    cases = {c["rate_frames_per_s"]: c for c in json.loads(out.stdout.strip().splitlines()[-1])["cases"]}
    calm, flooded = cases[0.0], cases[800.0]
    assert flooded["flood"]["flood_frames"] >= 0.8 * 800 * 14
    for case in (calm, flooded):
        for n in case["nodes"]:
            # every node closed (the one run's arbitration took a quorum's grants)
            assert n["start_to_closed_ms"] is not None and n["request_to_precharge_ms"] is not None, n
            assert n["rx_ok"] > 50, n
    # the forged frames reached every node and were counted there, none in the calm run
    assert all(n["rx_forged"] > 100 for n in flooded["nodes"]), flooded["nodes"]
    assert all(n["rx_forged"] == 0 for n in calm["nodes"]), calm["nodes"]
