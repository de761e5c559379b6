"""``mbms sim --mode processes`` end to end: a plant process and 3 ``mbms node`` processes on
python-can ``udp_multicast`` with zeroconf on loopback, driven through the CLI, with the scenario
the shipped scenario processes_kill.toml (cold start, load, node 2 killed under load and restarted).

Checked from the files the run leaves behind: exit 0, no invariant violation (S1 where
observable, S2, S3 from plant truth), the three strings closed one at a time (never two
precharging at a sampled instant; the recorded closes are distinct in time and each at a small
|dV|), the load was delivered within the agreed limits, the killed node's string was opened (by
the plant's driver watchdog) and the restarted node restored its state and rejoined, the CAN log
reads back with python-can's ``LogReader`` and holds peer-protocol and telemetry frames of every
node, the plots and the time series are written, and no child process is left behind.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import can
import numpy as np
import pytest

from mbms import _core
from mbms.paths import data_dir
from mbms.telemetry import classify

SCENARIO = data_dir() / "scenarios" / "processes_kill.toml"


def _children_of(pid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if ppid == pid:
                out.append(int(d.name))
    return out


def test_processes_mode_three_nodes_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "out"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    p = subprocess.Popen([sys.executable, "-m", "mbms", "sim", "--scenario", str(SCENARIO), "--out", str(out),
                          "--quiet"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        output, _ = p.communicate(timeout=150)  # a deadline, not a wait: the run ends on its own
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 0, output[-4000:]

    summ = json.loads((out / "summary.json").read_text())
    assert summ["mode"] == "processes" and summ["packs_n"] == 3 and len(summ["packs"]) == 3
    assert summ["invariant_violations"] == 0, summ["violations"]

    # all three strings closed, one at a time, each onto a matched bus (S3 from plant truth);
    # then string 2 again (the rejoin after the restart)
    closes = summ["system"]["string_closes"]
    assert [c["pack"] for c in closes[3:]] == [2] and sorted(c["pack"] for c in closes[:3]) == [1, 2, 3], closes
    times = [c["t_s"] for c in closes]
    assert all(b - a > 0.05 for a, b in zip(times, times[1:])), f"closes not one at a time: {closes}"
    assert times[2] < 26.0 < 32.0 < times[3], "closed before the kill, rejoined after the restart"
    assert all(0 <= c["dv_v"] <= 3.0 + 1.0 for c in closes), closes
    packs = summ["packs"]
    assert [(p["isolations"], p["rejoins"]) for p in packs] == [(0, 0), (1, 1), (0, 0)]
    assert all(p["time_connected_s"] > 5.0 and p["rx_ok"] > 20 for p in packs)
    assert summ["system"]["detect_latency_ms"]["n"] == 1  # the peers dropped node 2 from their closed set

    # the time series: never two strings precharging in a recorded row; the load followed the
    # profile only within the agreed limits (a limit may drop at once: the inverter follows at
    # its next period), and was really drawn
    with open(out / "timeseries.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) >= 30
    state = np.array([[float(r[f"s{k}_state"]) for k in (1, 2, 3)] for r in rows])
    assert ((state == 1).sum(axis=1) <= 1).all()
    assert (state[-1] == 2).all(), "all strings closed at the end"
    t = np.array([float(r["t_s"]) for r in rows])
    assert (state[(t > 27.5) & (t < 32.0), 1] == 0).all(), "the dead node's string is open"
    load = np.array([float(r["i_load_a"]) for r in rows])
    dcl = np.array([float(r["system_dcl_a"]) for r in rows])
    ccl = np.array([float(r["system_ccl_a"]) for r in rows])
    on = ~np.isnan(dcl)
    dcl_prev = np.fmax(dcl, np.concatenate([[np.inf], dcl[:-1]]))
    ccl_prev = np.fmax(ccl, np.concatenate([[np.inf], ccl[:-1]]))
    assert (load[on] <= dcl_prev[on] + 1.0).all() and (-load[on] <= ccl_prev[on] + 1.0).all()
    assert load.max() > 10.0, "the discharge was delivered"
    assert summ["system"]["energy_discharged_kwh"] > 0

    # the CAN log of the peer traffic, read back with python-can
    log_path = out / "peer_traffic.asc"
    per_node: dict[int, dict[str, int]] = {1: {}, 2: {}, 3: {}}
    for msg in can.LogReader(str(log_path)):
        cls = classify(msg.arbitration_id)
        if cls is not None and cls[1] in per_node:
            per_node[cls[1]][cls[0]] = per_node[cls[1]].get(cls[0], 0) + 1
    for k, kinds in per_node.items():
        assert kinds.get("peer", 0) > 50 and kinds.get("STATE", 0) > 20, (k, kinds)

    proc = json.loads((out / "processes.json").read_text())
    assert proc["unexpected_exits"] == [] and proc["can_frames_logged"] > 0
    assert proc["node_starts"] == {"node1": 1, "node2": 2, "node3": 1}
    starts = [json.loads(line) for line in (out / "run" / "state2" / "events.jsonl").read_text().splitlines()
              if '"kind":"start"' in line]
    assert [e["restored"] for e in starts] == ["missing", "ok"], "the restarted node restored its state"
    for name in ("bus.png", "string_currents.png", "soc.png", "limits.png", "contactors.png", "faults.png"):
        assert (out / name).stat().st_size > 1000, name
    assert _children_of(p.pid) == []  # (p has exited: its children would have been re-parented)
    for k in (1, 2, 3):
        assert (out / "run" / f"state{k}" / "state.bin").exists()


def test_run_files_are_valid_node_and_plant_configs(tmp_path: Path) -> None:
    """The files a processes run writes load as the node and the plant load them: members 1..N,
    CAN over udp_multicast on the run's own port, zeroconf on loopback, each pack's string index
    and engine tables, the scenario's run-time plant events as scheduled plant faults, and the
    load left to the inverter (constant 0 in the file, the scenario's profile evaluated outside)."""
    from mbms.config_views import check_membership, load_pack, load_system
    from mbms.plant import PlantDescription
    from mbms.sim import processes
    from mbms.sim.scenario import Scenario

    sc = Scenario.default().with_overrides(packs=3, duration_s=900.0, mode="processes")
    files = processes.write_files(sc, tmp_path, processes.Settings())
    system = load_system(files.system)
    assert system.members == (1, 2, 3) and system.quorum == 2
    assert system.transport.kind == "can" and system.transport.can is not None
    assert system.transport.can.interface == "udp_multicast" and system.transport.can.port == files.can_port
    assert system.discovery.enabled and system.discovery.interfaces == ("127.0.0.1",)
    # the lease covers the join hold lead the system derives from its [inverter] (issue 11)
    assert system.heartbeat_ms == sc.system["heartbeat_ms"] and system.lease_ms >= sc.system["lease_ms"]
    assert system.protocol.join_hold_lead_ms >= system.heartbeat_ms
    assert system.protocol.close_confirm_ms == sc.system["close_confirm_ms"]
    for k, path in enumerate(files.packs):
        pack = load_pack(path)
        check_membership(pack, system)
        assert pack.node.id == k + 1 and pack.hardware.string == k and pack.hardware.link == files.link
        assert pack.engine["pack"]["series"] == sc.plant["strings"][k]["series"]
        # every [node] setting of the scenario reaches the node processes, as in fast mode
        # (issue 9: auto_reset_s was 30 s in fast mode and 60 s in processes mode)
        assert sc.node["auto_reset_s"] == 30.0
        for key, value in sc.node.items():
            if key in ("log_format", "log_level"):
                continue  # not a decision setting: processes mode collects its nodes' logs as JSON
            assert getattr(pack.node, key) == value, key
    desc = PlantDescription.from_toml(files.plant)
    assert desc.n_strings == 3 and desc.load.kind == "constant"
    assert [f.at_s for f in desc.faults] == [e.at_s for e in sc.events] and len(desc.faults) == 4
    values, is_power = _core.load_profile_values(
        json.dumps(PlantDescription.from_dict(sc.plant).raw), [0.0, 70.0, 80.0, 85.0])
    assert not is_power and values == pytest.approx([0.0, 80.0, 60.0, 50.0])
