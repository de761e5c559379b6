"""``mbms bench flood``: the protocol's close latencies under a flood of forged peer frames, side
by side in one run with the same system unflooded (issue 15: "under a flood up to a stated rate
the protocol keeps its latency figures").

Each case is a real plant and three real ``mbms node`` processes (Rust NodeCore with the system's
key, 100 ms heartbeat, python-can ``udp_multicast`` bus) started from cold (all strings open), and
a flooder process without the key sending forged peer frames at the case's rate: well-formed
messages of every member id (built by the core's own peer without keys) with random tags, in
their three frames, interleaved with garbage frames in the peer id range. From each node's event
log (``phase`` events, the node's own clock): start to request, request to precharge (the
arbitration: a grant from a quorum), request to closed, start to closed; from its ``stop`` event:
the forged frames it counted and its loop timing (work p99, overruns). The flood rate is per
second of forged CAN frames on the bus; classic CAN at 500 kbit/s carries at most ~3 900 frames
of 8 bytes a second, so 3 000 is three quarters of the bus (the real nodes' own traffic is on top).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from mbms.paths import data_dir

CHANNEL = "239.74.163.11"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rates", default="0,1000,3000",
                   help="forged frames per second, one case each, comma-separated (0: no flood)")
    p.add_argument("--seconds", type=float, default=25.0, help="run time of each case (s)")
    p.add_argument("--rounds", type=int, default=1, help="cases per rate (more samples)")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def flood(system_path: str, rate: float, seconds: float) -> None:
    """The flooder (run in a process of its own): forged frames at ``rate`` per second."""
    import can

    from mbms import _core
    from mbms.config_views import load_system
    from mbms.consensus import segment_classic

    system = load_system(system_path)
    c = system.transport.can
    if c is None:  # the bench's own system file is a CAN system
        raise ValueError(f"{system_path}: the flood bench needs a [transport.can] system")
    bus = can.Bus(interface="udp_multicast", channel=c.channel, port=c.port, receive_own_messages=False)
    local = {"ocv_v": 355.0, "r_ohm": 0.05, "soc": 0.6, "dcl_a": 100.0, "ccl_a": 100.0, "dcl_peak_a": 100.0,
             "ccl_peak_a": 100.0, "fault": False, "may_close": True, "v_string_v": 355.0, "v_bus_v": 355.0,
             "i_a": 0.0, "feedback": (True, True, False)}
    frames: list[tuple[int, bytes]] = []
    for member in system.members:
        forger = _core.ConsensusPeer(system.peer_config(member, 60000 + member), 60000 + member, None)
        for k in range(20):
            for m in forger.tick(k * 100, local)["messages"]:
                tagged = bytes(m)[:-4] + os.urandom(4)  # a guessed tag
                frames += [(aid, bytes(d)) for aid, d in segment_classic(tagged)]
    frames += [(0x400 + int.from_bytes(os.urandom(2), "little") % 0x400, os.urandom(8)) for _ in range(len(frames) // 3)]
    sent = 0
    t0 = time.monotonic()
    end = t0 + seconds
    i = 0
    while True:
        now = time.monotonic()
        if now >= end:
            break
        due = int((now - t0) * rate)  # frames that should be out by now
        while sent < due:
            aid, d = frames[i % len(frames)]
            i += 1
            try:
                bus.send(can.Message(arbitration_id=aid, data=d, is_extended_id=False))
            except can.CanError:
                pass
            sent += 1
        time.sleep(0.002)
    bus.shutdown()
    print(json.dumps({"flood_frames": sent, "seconds": round(time.monotonic() - t0, 2)}), flush=True)


def _case(tmp: Path, name: str, rate: float, seconds: float) -> dict[str, Any]:
    from mbms.keys import new_key_file

    d = tmp / name
    d.mkdir()
    link = f"unix://{d}/plant.sock"
    plant_text = re.sub(r"(?m)^initial_soc = [0-9.]+", "initial_soc = 0.60",
                        (data_dir() / "systems" / "example_plant.toml").read_text())
    (d / "plant.toml").write_text(plant_text)
    plant = subprocess.Popen([sys.executable, "-m", "mbms", "plant", "--system", str(d / "plant.toml"), "--listen", link,
                              "--command-timeout", "0.5", "--load-a", "0"], stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, text=True)
    assert plant.stdout is not None
    while not (plant.stdout.readline() or "plant serving").startswith("plant serving"):
        pass
    port = _free_port()
    key = d / "system.key"
    new_key_file(key, "bench-flood")
    (d / "system.toml").write_text(f"""system_id = "bench-flood"\nmembers = [1, 2, 3]\nheartbeat_ms = 100
[transport]\nkind = "can"\n[transport.can]\ninterface = "udp_multicast"\nchannel = "{CHANNEL}"\nport = {port}
[discovery]\nenabled = false\n[protocol]\nclose_confirm_ms = 400\n[auth]\nkey_file = "{key}"\n""")
    flooder = None
    if rate > 0:
        flooder = subprocess.Popen([sys.executable, "-c", "import sys; from mbms.bench.flood import flood; "
                                    "flood(sys.argv[1], float(sys.argv[2]), float(sys.argv[3]))",
                                    str(d / "system.toml"), str(rate), str(seconds + 3.0)],
                                   stdout=subprocess.PIPE, stderr=open(d / "flood.err", "w"), text=True)
        time.sleep(1.0)  # the flood is on before the nodes start
    nodes = []
    for k in (1, 2, 3):
        (d / f"node{k}.toml").write_text(f"""extends = "{data_dir() / 'packs' / 'example_pack.toml'}"
[node]\nid = {k}\nstate_dir = "{d}/state{k}"\ncontrol_period_ms = 100\nestimation_period_ms = 100\n
[hardware]\nadapter = "sim"\nlink = "{link}"\nstring = {k - 1}\n""")
        nodes.append(subprocess.Popen([sys.executable, "-m", "mbms", "node", "--config", str(d / f"node{k}.toml"),
                                       "--system", str(d / "system.toml"), "--duration", str(seconds)],
                                      stdout=subprocess.DEVNULL, stderr=open(d / f"node{k}.err", "w")))
    for n in nodes:
        n.wait(seconds + 60)
    flood_out: dict[str, Any] = {}
    if flooder is not None:
        out, _ = flooder.communicate(timeout=30)
        lines = [ln for ln in out.splitlines() if ln.startswith("{")]
        if not lines:
            raise RuntimeError(f"case {name!r}: the flooder failed: {(d / 'flood.err').read_text()[-2000:]}")
        flood_out = json.loads(lines[-1])
    plant.kill()
    plant.wait()
    per_node = []
    for k in (1, 2, 3):
        events = [json.loads(s) for s in (d / f"state{k}" / "events.jsonl").read_text().splitlines() if s.strip()]
        first: dict[str, int] = {}
        for e in events:
            if e.get("kind") == "phase":
                first.setdefault(str(e["phase"]).lower(), int(e["t_ms"]))
        stop: dict[str, Any] = next((e for e in events if e.get("kind") == "stop"), {})
        peer = stop.get("peer") or {}
        timing = stop.get("timing") or {}
        req, pre, closed = first.get("requesting"), first.get("precharging"), first.get("closed")
        per_node.append({
            "node": k, "start_to_request_ms": req, "request_to_precharge_ms": None if req is None or pre is None else pre - req,
            "request_to_closed_ms": None if req is None or closed is None else closed - req, "start_to_closed_ms": closed,
            "rx_forged": peer.get("rx_forged", 0), "rx_malformed": peer.get("rx_malformed", 0), "rx_ok": peer.get("rx_ok", 0),
            "work_ms_p99": timing.get("work_ms_p99"), "overruns": timing.get("overruns"),
        })
        if closed is None:
            per_node[-1]["error"] = (d / f"node{k}.err").read_text()[-1500:]
    return {"case": name, "rate_frames_per_s": rate, "flood": flood_out, "nodes": per_node}


def _stat(rows: list[dict[str, Any]], key: str) -> tuple[float | None, float | None]:
    v = [r[key] for r in rows if r.get(key) is not None]
    return (statistics.median(v), max(v)) if v else (None, None)


def run(args: argparse.Namespace) -> int:
    rates = [float(r) for r in str(args.rates).split(",") if r.strip()]
    cases = []
    with tempfile.TemporaryDirectory() as t:
        for rnd in range(args.rounds):
            for rate in rates:
                cases.append(_case(Path(t), f"r{rnd}-{int(rate)}", rate, args.seconds))
    if args.json:
        print(json.dumps({"cases": cases}))
    else:
        keys = ("start_to_request_ms", "request_to_precharge_ms", "request_to_closed_ms", "start_to_closed_ms")
        print("forged frames/s  sent/s   nodes closed  " + "  ".join(f"{k[:-3]} p50/max ms" for k in keys)
              + "  forged/malformed per node  work p99 ms  overruns")
        for rate in rates:
            rows = [n for c in cases if c["rate_frames_per_s"] == rate for n in c["nodes"]]
            fl = [c["flood"] for c in cases if c["rate_frames_per_s"] == rate and c["flood"]]
            sent = sum(f["flood_frames"] for f in fl) / max(1e-9, sum(f["seconds"] for f in fl)) if fl else 0.0
            closed = sum(1 for r in rows if r["start_to_closed_ms"] is not None)
            cols = []
            for k in keys:
                med, mx = _stat(rows, k)
                cols.append("-" if med is None else f"{med:.0f}/{mx:.0f}")
            forged = statistics.mean(r["rx_forged"] for r in rows) if rows else 0
            malformed = statistics.mean(r["rx_malformed"] for r in rows) if rows else 0
            w = _stat(rows, "work_ms_p99")
            print(f"{rate:>15.0f}  {sent:>6.0f}   {closed}/{len(rows):<10}  " + "  ".join(f"{c:>{len(k) + 8}}" for c, k in zip(cols, keys))
                  + f"  {f'{forged:.0f}/{malformed:.0f}':>25}  {'-' if w[0] is None else f'{w[0]:.2f}':>11}  {sum(r['overruns'] or 0 for r in rows):>8}")
    bad = [n for c in cases for n in c["nodes"] if n["start_to_closed_ms"] is None]
    return 1 if bad else 0
