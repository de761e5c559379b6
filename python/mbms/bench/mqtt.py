"""``mbms bench mqtt``: a node's control period with its MQTT gateway, side by side in one run:
no MQTT, a live mosquitto, a broker that accepts TCP but never answers (slow/dead), and a broker
killed in the middle of the run. Each case is a real plant and a real ``mbms node`` process
(Rust NodeCore, 1 member, 50 ms period, MQTT state and cells every 100 ms, events on); printed: the node's own
loop timing (period work time and step time, mean/p99/max, overruns) and its resident memory at
the start and the end of the run (VmRSS), so a queue that grew would show.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from mbms.paths import data_dir


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seconds", type=float, default=20.0, help="run time of each case (s)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _rss_kib(pid: int) -> int:
    try:
        m = re.search(r"VmRSS:\s+(\d+)", Path(f"/proc/{pid}/status").read_text())
        return int(m.group(1)) if m else 0
    except OSError:
        return 0


def _case(tmp: Path, name: str, mqtt_port: int | None, seconds: float, kill_broker: Any = None) -> dict[str, Any]:
    d = tmp / name
    d.mkdir()
    link = f"unix://{d}/plant.sock"
    plant_text = re.sub(r"(?m)^initial_soc = [0-9.]+", "initial_soc = 0.60",
                        (data_dir() / "systems" / "example_plant.toml").read_text())
    (d / "plant.toml").write_text(plant_text)
    plant = subprocess.Popen([sys.executable, "-m", "mbms", "plant", "--system", str(d / "plant.toml"), "--listen", link,
                              "--command-timeout", "0.5", "--load-a", "0"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                             text=True)
    assert plant.stdout is not None
    while not (plant.stdout.readline() or "plant serving").startswith("plant serving"):
        pass
    port = _free_port()
    (d / "system.toml").write_text(f"""system_id = "bench"\nmembers = [1]\nheartbeat_ms = 100\n[transport]\nkind = "can"
[transport.can]\ninterface = "udp_multicast"\nchannel = "239.74.163.9"\nport = {port}\n[discovery]\nenabled = false
[protocol]\nclose_confirm_ms = 400\n""")
    op = ""
    if mqtt_port is not None:
        op = (f'[operator.mqtt]\nhost = "127.0.0.1"\nport = {mqtt_port}\nstate_period_ms = 100\ncells_period_ms = 100\n'
              f"keepalive_s = 5\nqos = 1\nqueue_max = 1000\n")
    (d / "node.toml").write_text(f"""extends = "{data_dir() / 'packs' / 'example_pack.toml'}"
[node]\nid = 1\nstate_dir = "{d}/state"\ncontrol_period_ms = 50\nestimation_period_ms = 50\n
[hardware]\nadapter = "sim"\nlink = "{link}"\nstring = 0\n{op}""")
    node = subprocess.Popen([sys.executable, "-m", "mbms", "node", "--config", str(d / "node.toml"), "--system",
                             str(d / "system.toml"), "--duration", str(seconds), "--timing"],
                            stdout=subprocess.PIPE, stderr=open(d / "node.err", "w"), text=True)
    time.sleep(3.0)  # start-up (imports, first closes) is not what is measured
    rss0 = _rss_kib(node.pid)
    if kill_broker is not None:
        time.sleep(2.0)
        kill_broker()
    rss_max = rss1 = rss0
    while node.poll() is None:
        rss_max = max(rss_max, _rss_kib(node.pid))
        rss1 = _rss_kib(node.pid) or rss_max
        time.sleep(0.5)
    out, _ = node.communicate()
    plant.kill()
    plant.wait()
    lines = [ln for ln in out.splitlines() if ln.startswith("{")]
    if not lines:
        raise RuntimeError(f"case {name!r}: the node gave no timing: {(d / 'node.err').read_text()[-2000:]}")
    timing = json.loads(lines[-1])
    return {"case": name, **{k: timing.get(k) for k in ("periods", "overruns", "work_ms_mean", "work_ms_p99", "work_ms_max",
                                                          "step_ms_mean", "step_ms_p99", "jitter_ms_p99")},
            "rss_start_kib": rss0, "rss_end_kib": rss1, "rss_max_kib": rss_max}


def run(args: argparse.Namespace) -> int:
    mosquitto = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if os.path.exists("/usr/sbin/mosquitto") else None)
    rows = []
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        rows.append(_case(tmp, "no mqtt", None, args.seconds))
        # a "broker" that accepts the TCP connection (kernel backlog) and never says a word
        mute = socket.socket()
        mute.bind(("127.0.0.1", 0))
        mute.listen(16)
        rows.append(_case(tmp, "mute broker", mute.getsockname()[1], args.seconds))
        mute.close()
        rows.append(_case(tmp, "nothing listening", _free_port(), args.seconds))
        if mosquitto:
            for name, kill in (("mosquitto up", False), ("mosquitto killed", True)):
                port = _free_port()
                (tmp / f"m{port}.conf").write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
                broker = subprocess.Popen([mosquitto, "-c", str(tmp / f"m{port}.conf")], stdout=subprocess.DEVNULL,
                                          stderr=subprocess.DEVNULL)
                time.sleep(0.5)
                rows.append(_case(tmp, name, port, args.seconds, (lambda b=broker: b.kill()) if kill else None))
                broker.kill()
                broker.wait()
        else:
            print("mosquitto not installed: the live-broker cases are left out", file=sys.stderr)
    if args.json:
        print(json.dumps({"cases": rows}))
        return 0
    base = rows[0]["work_ms_p99"] or 1e-9
    print(f"{'case':<20}{'periods':>8}{'overruns':>9}{'work mean':>11}{'work p99':>10}{'work max':>10}{'p99/no mqtt':>12}"
          f"{'step p99':>10}{'RSS start':>11}{'RSS end':>9}{'RSS max':>9}")
    for r in rows:
        print(f"{r['case']:<20}{r['periods']:>8}{r['overruns']:>9}{r['work_ms_mean']:>9.3f}ms{r['work_ms_p99']:>8.3f}ms"
              f"{r['work_ms_max']:>8.3f}ms{r['work_ms_p99'] / base:>11.2f}x{r['step_ms_p99']:>8.3f}ms"
              f"{r['rss_start_kib'] / 1024:>9.1f}MB{r['rss_end_kib'] / 1024:>7.1f}MB{r['rss_max_kib'] / 1024:>7.1f}MB")
    return 0
