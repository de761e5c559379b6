"""Processes mode of ``mbms sim``: one ``mbms plant`` process and N ``mbms node`` processes on
real transports, in wall-clock time.

What :func:`run` does:

* writes into a run directory the plant description (the scenario's plant; its load is set from
  outside, its run-time ``[[events]]`` become scheduled plant faults), the system file (members
  1..N, python-can ``udp_multicast`` on a port of its own, zeroconf on 127.0.0.1) and one pack
  file per node (the engine tables of :func:`mbms.sim.fast.engine_configs`, ``[node]`` with a
  state directory, ``[hardware]`` = the node's own link to the plant);
* starts the plant, then the nodes, and observes them from outside: the peer network (telemetry
  frames and peer messages, decoded as ``mbms monitor`` does; every CAN frame is also logged with
  python-can to ``peer_traffic.asc``) and the plant's truth (its ``truth`` op);
* plays the inverter through the real inverter protocol (:mod:`mbms.sim.inverter`): the system
  file gets an ``[inverter]`` section (``Settings.inverter_protocol``, Pylon HV by default, on a
  udp_multicast channel of its own); the speaker node sends the frames, the simulated inverter
  decodes them with the shipped DBC and sets the plant's load to the scenario's load profile
  value clipped to the limits it heard (0 until the battery enables it and no string is joining);
  the longest pause between limit frames and the frames heard are in the report (``inverter``)
  and ``inverter_limits.json``;
* applies the scenario's ``kill`` (SIGKILL) and ``restart`` (a new process that restores its state
  from its state directory) network events; loss, delay, duplication and partitions need network
  namespaces and are not applied here (a warning says so);
* checks what can be checked from outside with the one safety monitor of every mode
  (``mbms._core.SafetyMonitor``, sim/src/monitor.rs; same rules and margins as fast mode): S2
  (never two strings precharging at a sampled instant, true relay states), S3 (|V_bus - V_string|
  just before each main close, as the plant records it at that instant), S1 where observable (a node reporting itself
  isolated/fail-safe, or killed, has its string open within the monitor's deadline), S5 (the
  nodes' telemetry agrees within the bound while all are heard) and the over-current figure;
* stops everything (SIGTERM, then SIGKILL after a deadline) and returns a
  :class:`mbms.sim.fast.RunResult` with the same channels as fast mode (NaN where the outside
  cannot see a value).

Scenario time is the plant's clock (``t_s`` of the plant; wall time x ``time_scale``). The
nodes run on wall time; with ``time_scale`` != 1 their estimators integrate current over wall
time, so keep 1 unless only the coordination is of interest.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mbms import _core
from mbms.errors import ConfigError, MbmsError
from mbms.config_views import load_system
from mbms.consensus import ConsensusConfig
from mbms.types import Phase, Violation
from mbms.paths import cell_file
from mbms.plant_link import pack as pack_msg
from mbms.plant_link import unpack as unpack_msg
from mbms.sim.fast import RunResult, engine_configs
from mbms.sim.inverter import SimInverter
from mbms.sim.scenario import Scenario
from mbms.transport.can import open_bus

#: The plant opens a string whose node sent no command for this long (contactor driver watchdog).
WATCHDOG_S = 0.5
#: Peer telemetry older than this (wall s) counts as not heard.
FRESH_S = 0.35
#: The inverter draws current once no node has been joining for this long (fast mode: READY_QUIET_MS).
READY_QUIET_S = 2.0
JOINING = {Phase.REQUESTING, Phase.PRECHARGING, Phase.CLOSING, Phase.WAITING, Phase.LISTENING}
SYSTEM_TOP_KEYS = {"heartbeat_ms", "dv_close_v", "lease_ms"}
#: The [protocol] table of a system file: every PeerConfig setting but the per-node ones and the
#: system-level keys above (one view of the Rust PeerConfig, mbms.consensus.ConsensusConfig).
PROTOCOL_KEYS = set(ConsensusConfig.__dataclass_fields__) - {"system_id", "node_id", "members", "seed"} - SYSTEM_TOP_KEYS


@dataclass
class Settings:
    time_scale: float = 1.0
    #: Observer period (wall s): plant truth poll, checks, inverter set-point.
    poll_s: float = 0.05
    #: A node's loop waking up later than this is an overrun (the runtime then opens its
    #: contactors, fail-safe). Generous by default: this machine is shared.
    overrun_ms: int = 500
    start_timeout_s: float = 60.0
    stop_timeout_s: float = 5.0
    #: The battery protocol between the speaker and the simulated inverter (a DBC in
    #: mbms/data/dbc): the 96s packs of the shipped scenarios are an HV rack.
    inverter_protocol: str = "pylon_hv"
    #: "sim": the nodes read the plant over the sim link; "linux": over the Linux drivers
    #: (hardware adapter "linux") on the plant's emulated devices (``mbms plant --devices``).
    hardware: str = "sim"


# ---------------------------------------------------------------------------------- files


def _toml(data: dict[str, Any]) -> str:
    import tomli_w

    return tomli_w.dumps(data)


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class RunFiles:
    dir: Path
    plant: Path
    system: Path
    packs: list[Path]
    link: str
    can_port: int
    can_channel: str
    #: hardware "linux": the devices directory and string 0's sensor CAN port of the plant
    devices: Path | None = None
    sensor_can_port: int = 0
    inverter_port: int = 0


def write_files(sc: Scenario, run_dir: Path, settings: Settings) -> RunFiles:
    """The plant description, the system file and the N pack files of a run."""
    run_dir.mkdir(parents=True, exist_ok=True)
    n = sc.n_packs
    plant = json.loads(json.dumps(sc.plant))
    for s in plant["strings"]:
        s["cell"] = str(cell_file(s["cell"]).resolve())
    plant["load"] = {"kind": "constant", "value": 0.0}  # the inverter (this observer) sets it
    plant["faults"] = list(plant.get("faults", [])) + [{"at_s": e.at_s, "fault": dict(e.fault)} for e in sc.events]
    plant_path = run_dir / "plant.toml"
    plant_path.write_text(_toml(plant))

    can_port = _free_udp_port()
    channel = "239.74.163.2"  # python-can's IPv4 default group; the port keeps runs apart
    system: dict[str, Any] = {
        "system_id": f"sim-{os.getpid()}-{can_port}",
        "members": list(range(1, n + 1)),
    }
    protocol: dict[str, Any] = {}
    # The system file states what the scenario's [system] stated; the rest it leaves to the
    # system reader, whose defaults are the scenario's (one PeerConfig) but for what it derives
    # from the [inverter] (the join hold lead and a lease covering it), as on a real system.
    for key, v in sc.system.items():
        if key not in sc.system_given:
            continue
        if key in SYSTEM_TOP_KEYS:
            system[key] = v
        elif key in PROTOCOL_KEYS:
            protocol[key] = v
    system["transport"] = {"kind": "can", "can": {"interface": "udp_multicast", "channel": channel, "port": can_port}}
    system["discovery"] = {"enabled": True, "interfaces": ["127.0.0.1"]}
    # a fresh key for this run's system (mode 0600), shared by its nodes and the observer
    from mbms.keys import new_key_file

    new_key_file(run_dir / "system.key", system["system_id"])
    system["auth"] = {"key_file": "system.key"}
    # the inverter's CAN channel: a bus of its own (udp_multicast on a port of its own)
    inverter_port = _free_udp_port()
    system["inverter"] = {"protocol": settings.inverter_protocol,
                          "can": {"interface": "udp_multicast", "channel": channel, "port": inverter_port}}
    if protocol:
        system["protocol"] = protocol
    system_path = run_dir / "system.toml"
    system_path.write_text(_toml(system))

    link = f"udp://127.0.0.1:{_free_udp_port()}"
    period_ms = max(1, round(sc.dt_s * 1000))
    # the scenario's whole [node] table goes to every node, as in fast mode (one schema, Rust's
    # defaults for what it leaves out)
    node_cfg = dict(_core.node_config(dict(sc.node)))
    stale_ms = int(node_cfg["stale_ms"])
    packs = []
    devices = run_dir / "dev" if settings.hardware == "linux" else None
    sensor_port = _free_udp_port() if devices is not None else 0
    for k, eng in enumerate(engine_configs(sc)):
        eng["pack"]["cell"] = str(cell_file(eng["pack"]["cell"]).resolve())
        doc = dict(eng)
        doc["node"] = {
            **{key: v for key, v in node_cfg.items() if v is not None},
            "id": k + 1, "state_dir": str(run_dir / f"state{k + 1}"), "control_period_ms": period_ms,
            "estimation_period_ms": period_ms, "telemetry_period_ms": 100, "state_save_ms": 1000,
            # a scenario's own overrun_ms wins over the run's default (same settings in every mode)
            "stale_ms": max(stale_ms, period_ms), "overrun_ms": int(sc.node.get("overrun_ms", settings.overrun_ms)),
            "log_format": "json", "log_level": "warning",
        }
        # the link counts as lost no sooner than a measurement counts as stale
        doc["hardware"] = {"adapter": "sim", "link": link, "string": k, "link_timeout_ms": max(300, stale_ms)}
        if devices is not None:
            doc["hardware"] = linux_hardware(devices, k, sensor_port, int(eng["pack"]["series"]),
                                             int(eng["pack"]["temp_sensors"]), max(300, stale_ms))
        p = run_dir / f"node{k + 1}.toml"
        p.write_text(_toml(doc))
        packs.append(p)
    return RunFiles(run_dir, plant_path, system_path, packs, link, can_port, channel, devices, sensor_port,
                    inverter_port)


def linux_hardware(devices: Path, k: int, sensor_port: int, series: int, temps: int, link_timeout_ms: int) -> dict[str, Any]:
    """``[hardware]`` of adapter "linux" for string ``k`` of ``mbms plant --devices DIR``: its chain
    as the device server lays it out, its GPIO lines, its sensor bus; the other settings are the
    core's defaults."""
    from mbms.emulators.device_server import (NEG_FB, NEG_OUT, POS_FB, POS_OUT, PRE_FB, PRE_OUT, SENSOR_CAN_GROUP,
                                              chain_layout)

    ics, m, t = chain_layout(series, temps)
    return {
        "adapter": "linux", "link_timeout_ms": link_timeout_ms,
        "afe": {"device": f"emu://{devices}/afe{k}.sock", "ics": ics, "cells_per_ic": m, "temps_per_ic": t},
        "sensor_can": {"interface": "udp_multicast", "channel": SENSOR_CAN_GROUP, "port": sensor_port + k},
        "current_sensor": {"timeout_cycles": 10},
        "contactors": {"chip": f"emu://{devices}/gpio{k}.sock", "neg_out": NEG_OUT, "pos_out": POS_OUT,
                       "pre_out": PRE_OUT, "neg_fb": NEG_FB, "pos_fb": POS_FB, "pre_fb": PRE_FB},
        "insulation": {"min_kohm": 100.0, "warning_kohm": 300.0},
    }


# ------------------------------------------------------------------------------ processes


class Child:
    """One child process (``python -m mbms ...``) with its output in a log file."""

    def __init__(self, name: str, args: list[str], log_path: Path) -> None:
        self.name = name
        self.args = args
        self.log_path = log_path
        self.p: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.cpu_s = 0.0  # CPU time of earlier incarnations

    def start(self) -> None:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        with open(self.log_path, "ab") as log:
            self.p = subprocess.Popen([sys.executable, "-m", "mbms", *self.args], stdout=log, stderr=log, env=env,
                                      stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent)
        self.starts += 1

    @property
    def alive(self) -> bool:
        return self.p is not None and self.p.poll() is None

    def cpu_now(self) -> float:
        """User + system CPU seconds of the running process (Linux /proc), 0 if unknown."""
        if self.p is None:
            return 0.0
        try:
            fields = Path(f"/proc/{self.p.pid}/stat").read_text().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, ValueError):
            return 0.0

    def kill(self) -> None:
        if self.p is not None and self.p.poll() is None:
            self.cpu_s += self.cpu_now()
            self.p.kill()
            self.p.wait(timeout=5)

    def log_tail(self, n: int = 2000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM it when the simulation process dies (Linux
    PR_SET_PDEATHSIG), so that no node outlives a killed ``mbms sim``. Elsewhere the children's
    own ``--duration`` ends them."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def stop_all(children: list[Child], timeout_s: float) -> None:
    """SIGTERM every running child, wait up to ``timeout_s``, then SIGKILL what is left."""
    running = [c for c in children if c.alive]
    for c in running:
        c.cpu_s += c.cpu_now()
        assert c.p is not None
        c.p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    for c in running:
        assert c.p is not None
        try:
            c.p.wait(timeout=max(0.05, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            c.p.kill()
            c.p.wait(timeout=5)


# ------------------------------------------------------------------------------- observer


class PlantClient(asyncio.DatagramProtocol):
    """Requests to the plant server over its link, one at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.waiter: asyncio.Future[dict[str, Any]] | None = None
        self.expect = ""
        self.timeouts = 0

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        try:
            reply = unpack_msg(data)
        except MbmsError:
            return
        # a late reply to an earlier request that timed out is not the answer to this one
        if self.waiter is not None and not self.waiter.done() and reply.get("op") in (self.expect, "error"):
            self.waiter.set_result(reply)

    async def request(self, obj: dict[str, Any], timeout_s: float = 1.0) -> dict[str, Any]:
        """The plant's reply; ``asyncio.TimeoutError`` if none came within ``timeout_s``."""
        assert self.transport is not None
        self.waiter = asyncio.get_running_loop().create_future()
        self.expect = obj["op"]
        self.transport.sendto(pack_msg(obj))
        try:
            reply = await asyncio.wait_for(self.waiter, timeout_s)
        except asyncio.TimeoutError:
            self.timeouts += 1
            raise
        if reply.get("op") == "error":
            raise MbmsError(f"plant: {reply.get('msg')}")
        return reply


@dataclass
class PeerView:
    """What the observer last heard from one node (wall times of reception)."""

    signals: dict[str, dict[str, float]] = field(default_factory=dict)
    heard: dict[str, float] = field(default_factory=dict)
    peer_messages: int = 0
    undecodable: int = 0
    telemetry_frames: int = 0

    def get(self, kind: str, name: str, now: float) -> float:
        if now - self.heard.get(kind, -math.inf) > FRESH_S:
            return math.nan
        return float(self.signals[kind].get(name, math.nan))


class Observer:
    """Listens on the peer network with the system's transport (node id 0: sends nothing)."""

    def __init__(self, system: Any) -> None:
        from mbms.telemetry import load_database
        from mbms.transport import make_transport

        self.system = system
        self.db = load_database()
        self.transport = make_transport(system, 0)
        self.peers = {m: PeerView() for m in system.members}
        self.transport.on_telemetry = self._on_telemetry
        self.transport.on_message = self._on_message
        # The observer (and the simulated inverter that obeys what it hears) acts only on verified
        # telemetry and peer messages (brief S7).
        from mbms import _core
        from mbms.keys import system_keys
        from mbms.telemetry import TelemetryVerifier

        self.auth = _core.MessageAuth(system.system_id_u32, system_keys(system))
        self.verifier = TelemetryVerifier(self.auth)

    def _on_telemetry(self, src: int, arb_id: int, data: bytes) -> None:
        from mbms.telemetry import decode

        for fid, d in self.verifier.push(src, arb_id, data):
            try:
                res = decode(self.db, fid, d)
            except Exception:  # noqa: BLE001 - a frame the DBC cannot decode is counted, never fatal
                self.peers[src].undecodable += 1
                continue
            if res is None:
                continue
            kind, _, sig = res
            v = self.peers[src]
            v.signals[kind] = sig
            v.heard[kind] = time.monotonic()
            v.telemetry_frames += 1

    def _on_message(self, src: int, payload: bytes) -> None:
        from mbms.errors import FrameError
        from mbms.peer_wire import decode as decode_peer

        v = self.peers[src]
        try:
            m = decode_peer(payload, self.auth)
        except FrameError:
            v.undecodable += 1
            return
        if m.sender != src:
            v.undecodable += 1
            return
        v.peer_messages += 1
        v.heard["peer"] = time.monotonic()


class CanLog:
    """Every CAN frame of the peer network, logged by python-can (``can.Logger``: the format
    follows the suffix; ``.asc`` is text, read back with ``can.LogReader``)."""

    def __init__(self, path: Path, channel: str, port: int) -> None:
        import can

        self.path = path
        self.bus = can.Bus(interface="udp_multicast", channel=channel, port=port, receive_own_messages=False)
        self.logger = can.Logger(str(path))
        self.counter = _Counter()
        self.notifier = can.Notifier(self.bus, [self.logger, self.counter])

    def close(self) -> None:
        self.notifier.stop()
        self.logger.stop()
        self.bus.shutdown()


class _Counter:
    def __init__(self) -> None:
        self.frames = 0

    def __call__(self, msg: Any) -> None:
        self.frames += 1

    def stop(self) -> None:
        pass


# ------------------------------------------------------------------------------- the run


@dataclass
class _Track:
    closed: bool = False
    isolated_once: bool = False
    isolations: int = 0
    rejoins: int = 0
    connected_s: float = 0.0
    killed_at: float | None = None  # wall time of a kill (watchdog check)
    closed_before_kill: int = 0


def run(scenario: Scenario, console: Any = None, out: Path | None = None, time_scale: float = 1.0,
        settings: Settings | None = None, hardware: str | None = None) -> RunResult:
    """Run a scenario with real processes; see the module docstring."""
    from rich.console import Console

    console = console or Console(stderr=True)
    settings = settings or Settings()
    if hardware is not None:
        settings.hardware = hardware
    settings.time_scale = time_scale if time_scale else settings.time_scale
    if not settings.time_scale > 0:
        raise ConfigError("--time-scale", f"expected a positive number, got {settings.time_scale}")
    _check_load(scenario)
    tmp: tempfile.TemporaryDirectory[str] | None = None
    if out is not None:
        run_dir = Path(out) / "run"
        log_dir = Path(out)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="mbms-sim-")
        run_dir = Path(tmp.name)
        log_dir = run_dir
    try:
        return asyncio.run(_run(scenario, console, run_dir, log_dir, settings))
    finally:
        if tmp is not None:
            tmp.cleanup()


def _check_load(sc: Scenario) -> None:
    """The load profile must be valid before anything starts (errors name the field)."""
    from mbms.plant import PlantDescription

    PlantDescription.from_dict(sc.plant, source=sc.source)


def _load_request(desc_json: str, t_s: float, v_bus: float) -> float:
    (value,), is_power = _core.load_profile_values(desc_json, [t_s])
    return value / max(v_bus, 1.0) if is_power else value


async def _run(sc: Scenario, console: Any, run_dir: Path, log_dir: Path, st: Settings) -> RunResult:
    from mbms.plant import PlantDescription

    n = sc.n_packs
    files = write_files(sc, run_dir, st)
    desc_json = json.dumps(PlantDescription.from_dict(sc.plant, source=sc.source).raw)
    system = load_system(files.system)
    console.print(f"[bold]mbms sim[/] {sc.name} [processes]: {n} node processes + plant, "
                  f"{sc.duration_s:.0f} s at time scale {st.time_scale:g}; run files in {run_dir}")
    ignored = sorted({e.kind for e in sc.network if e.kind not in ("kill", "restart")})
    if ignored:
        console.print(f"[yellow]network events {ignored} are not applied in processes mode "
                      f"(they need network namespaces); kill/restart are[/]")

    # a bound on every child's life, should this process vanish without stopping them
    life_s = repr(round(2 * sc.duration_s / st.time_scale + 2 * st.start_timeout_s, 1))
    plant = Child("plant", ["plant", "--system", str(files.plant), "--listen", files.link, "--seed", str(sc.seed),
                            "--time-scale", repr(st.time_scale), "--command-timeout", repr(WATCHDOG_S),
                            "--load-a", "0", "--duration", life_s]
                  + (["--devices", str(files.devices), "--sensor-can-port", str(files.sensor_can_port)]
                     if files.devices is not None else []), run_dir / "plant.log")
    nodes = [Child(f"node{k + 1}", ["node", "--config", str(p), "--system", str(files.system), "--duration", life_s],
                   run_dir / f"node{k + 1}.log") for k, p in enumerate(files.packs)]
    children = [plant, *nodes]
    loop = asyncio.get_running_loop()
    t_wall0 = time.monotonic()
    cpu_self0 = time.process_time()
    observer: Observer | None = None
    canlog: CanLog | None = None
    inverter: SimInverter | None = None
    client_tr: asyncio.DatagramTransport | None = None
    try:
        host, port = files.link.removeprefix("udp://").rsplit(":", 1)
        plant_addr = (host, int(port))
        client_tr, client = await loop.create_datagram_endpoint(PlantClient, remote_addr=plant_addr)
        observer = Observer(system)
        await observer.transport.start()
        canlog = CanLog(log_dir / "peer_traffic.asc", files.can_channel, files.can_port)
        assert system.inverter is not None
        inverter = SimInverter(system.inverter.protocol, open_bus(system.inverter.can, receive_own_messages=False),
                               system.inverter.timeout_ms / 1000, ready_quiet_s=READY_QUIET_S)
        plant.start()
        await _wait_plant(client, plant, st.start_timeout_s)
        t_ready = time.monotonic()
        for c in nodes:
            c.start()
        # The monitor checks against the protocol settings the nodes run (one source).
        monitor = _core.SafetyMonitor(system.peer_config(1, 0))
        res = await _drive(sc, console, st, client, observer, nodes, plant, desc_json, canlog, monitor, inverter)
    finally:
        if inverter is not None:
            inverter.bus.shutdown()
        stop_all(children, st.stop_timeout_s)
        if client_tr is not None:
            client_tr.close()
        if observer is not None:
            observer.transport.close()
        if canlog is not None:
            canlog.close()
    wall = time.monotonic() - t_wall0
    events = [_read_events(run_dir / f"state{k + 1}" / "events.jsonl") for k in range(n)]
    rep = res["report"]
    for k, p in enumerate(rep["packs"]):
        faults, resets = _faults_from_events(events[k])
        p["faults_seen"] = faults
        p["resets"] = resets
        assert observer is not None
        v = observer.peers[k + 1]
        p["rx_ok"] = v.peer_messages  # peer messages of this node the observer decoded
        p["rx_dropped"] = v.undecodable
    proc = {
        "wall_s": round(wall, 3),
        "plant_t_s": round(res["t_end"], 3),
        "time_scale": st.time_scale,
        "realtime_factor": round(res["t_end"] / wall, 3) if wall > 0 else None,
        "cpu_s": {c.name: round(c.cpu_s, 2) for c in children},
        "cpu_s_observer": round(time.process_time() - cpu_self0, 2),
        "can_frames_logged": canlog.counter.frames if canlog else 0,
        "can_log": str(log_dir / "peer_traffic.asc"),
        "node_starts": {c.name: c.starts for c in nodes},
        "unexpected_exits": res["unexpected_exits"],
        "node_timing": [_last_timing(ev) for ev in events],
        "fail_safes": [sum(1 for e in ev if e.get("kind") == "fail_safe") for ev in events],
        "late_polls": res["late_polls"],
        "plant_request_timeouts": res["plant_timeouts"],
        # plant seconds short of (wall seconds since the plant answered x time_scale) at the end
        "plant_clock_lag_s": round((res["wall_end"] - t_ready) * st.time_scale - res["t_end"], 3),
        "all_nodes_heard_at_s": res["all_heard_t"],
    }
    assert inverter is not None and system.inverter is not None
    ist = inverter.stats
    rep["inverter"] = {
        "protocol": system.inverter.protocol, "timeout_ms": system.inverter.timeout_ms,
        "max_gap_ms": round(ist.max_gap_s * 1000, 1), "timeouts": ist.timeouts, "limit_frames": ist.limit_frames,
        "frames": {f"0x{k:X}": v for k, v in sorted(ist.frames.items())}, "bad_frames": ist.bad_frames,
        "requests_sent": ist.requests_sent,
        "bus_load_pct": round(100 * ist.bus_load(system.inverter.can.bitrate), 4),
    }
    if log_dir.exists():  # every limit frame the inverter heard: (plant t_s, DCL, CCL, speaker node)
        (log_dir / "inverter_limits.json").write_text(json.dumps(res["inverter_rows"]) + "\n")
    total_cpu = sum(proc["cpu_s"].values()) + proc["cpu_s_observer"]
    proc["cpu_cores_used"] = round(total_cpu / wall, 3) if wall > 0 else None
    rep["processes"] = proc
    if log_dir.exists():
        (log_dir / "processes.json").write_text(json.dumps(proc, indent=2) + "\n")
    console.print(f"processes: {res['t_end']:.1f} s of plant time in {wall:.1f} s wall; CPU {total_cpu:.1f} s "
                  f"({proc['cpu_cores_used']} cores); {proc['can_frames_logged']} CAN frames logged")
    return RunResult(
        scenario=sc,
        system=np.asarray(res["system"], dtype=float).reshape(-1, len(_core.FastSim.system_channels())),
        strings=np.asarray(res["strings"], dtype=float).reshape(-1, n, len(_core.FastSim.string_channels())),
        system_channels=list(_core.FastSim.system_channels()),
        string_channels=list(_core.FastSim.string_channels()),
        report=rep,
        wall_s=wall,
    )


async def _wait_plant(client: PlantClient, plant: Child, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        if not plant.alive:
            raise MbmsError(f"the plant process exited at start:\n{plant.log_tail()}")
        try:
            await client.request({"op": "state"}, timeout_s=0.2)
            return
        except (asyncio.TimeoutError, OSError):
            pass
        if time.monotonic() > deadline:
            raise MbmsError(f"the plant did not answer within {timeout_s} s:\n{plant.log_tail()}")
        await asyncio.sleep(0.05)


async def _drive(sc: Scenario, console: Any, st: Settings, client: PlantClient, obs: Observer, nodes: list[Child],
                 plant: Child, desc_json: str, canlog: CanLog, monitor: Any, inverter: SimInverter) -> dict[str, Any]:
    n = sc.n_packs
    # (at_s, order, kind, node): the schema gives a kill or restart its node (sim/src/scenario.rs)
    actions = sorted((e.at_s, i, e.kind, e.node) for i, e in enumerate(sc.network)
                     if e.kind in ("kill", "restart") and e.node is not None)
    ai = 0
    tr = [_Track() for _ in range(n)]
    violations: list[str] = []
    closes_seen: set[tuple[float, int]] = set()  # plant close records already given to the monitor
    detect: list[float] = []
    e_dis = e_chg = 0.0
    inv_rows: list[list[float]] = []
    sys_rows: list[list[float]] = []
    str_rows: list[list[float]] = []
    next_rec = 0.0
    unexpected: list[str] = []
    last_t: float | None = None
    last_print = time.monotonic()
    late_polls = 0
    load_set = 0.0
    request = 0.0
    all_heard_t: float | None = None

    def violate(t: float, rule: str, what: str) -> None:
        if len(violations) < 100:
            violations.append(f"t={t:.1f}s {rule}: {what}")

    next_poll = time.monotonic()
    wall_deadline = time.monotonic() + sc.duration_s / st.time_scale * 3 + st.start_timeout_s
    while True:
        now = time.monotonic()
        if now > wall_deadline:
            raise MbmsError("processes mode: the plant clock did not reach the end of the scenario in time")
        if not plant.alive:
            raise MbmsError(f"the plant process died:\n{plant.log_tail()}")
        try:
            truth = await client.request({"op": "truth"}, timeout_s=1.0)
        except asyncio.TimeoutError:
            continue  # the plant is alive (checked above) but slow: ask again
        now = time.monotonic()
        t = float(truth["t_s"])
        dt = 0.0 if last_t is None else max(0.0, t - last_t)
        last_t = t

        # ---------------------------------------------------------------- scheduled node events
        while ai < len(actions) and actions[ai][0] <= t:
            _, _, kind, node = actions[ai]
            c = nodes[node - 1]
            if kind == "kill" and c.alive:
                c.kill()
                tr[node - 1].killed_at = now
                tr[node - 1].closed_before_kill = sum(1 for k in range(n) if tr[k].closed)
                console.print(f"t={t:.1f} s: node {node} killed (SIGKILL)")
            elif kind == "restart" and not c.alive:
                c.start()
                tr[node - 1].killed_at = None
                console.print(f"t={t:.1f} s: node {node} restarted")
            ai += 1
        for k, c in enumerate(nodes):
            if c.p is not None and c.p.poll() is not None and tr[k].killed_at is None and c.p.returncode != -9:
                if c.name not in [u.split(":")[0] for u in unexpected]:
                    unexpected.append(f"{c.name}: exit {c.p.returncode}")
                    console.print(f"[red]{c.name} exited on its own ({c.p.returncode}):[/]\n{c.log_tail(800)}")

        # -------------------------------------------------------------------------- checks
        cont = truth["contactors"]
        v_bus = float(truth["v_bus_v"])
        views = [obs.peers[k + 1] for k in range(n)]
        heard_all = True
        for k in range(n):
            closed = bool(cont[k][0] and cont[k][1])
            if closed and not tr[k].closed and tr[k].isolated_once:
                tr[k].rejoins += 1
            if not closed and tr[k].closed:
                tr[k].isolations += 1
                tr[k].isolated_once = True
            if closed:
                tr[k].connected_s += dt
            tr[k].closed = closed
            # What the monitor can know of node k: its process, and its telemetry if fresh.
            v = views[k]
            phase = v.get("STATE", "Phase", now)
            dcl_sys, ccl_sys = v.get("LIMITS", "SysDcl", now), v.get("LIMITS", "SysCcl", now)
            closed_n = v.get("STATE", "ClosedCount", now)
            own_d, own_c = v.get("LIMITS", "Dcl", now), v.get("LIMITS", "Ccl", now)
            faults = v.get("STATE", "FaultCount", now)
            heard = not any(math.isnan(x) for x in (phase, dcl_sys, ccl_sys, closed_n))
            heard_all = heard_all and heard and nodes[k].alive
            ph = None if math.isnan(phase) else int(phase)
            monitor.node_report(
                k, nodes[k].alive,
                phase=ph if ph is not None and ph < Phase.FAIL_SAFE else None,
                reports_open=ph in (Phase.ISOLATED, Phase.FAIL_SAFE),
                system_dcl_a=dcl_sys if heard else None, system_ccl_a=ccl_sys if heard else None,
                local_dcl_a=None if math.isnan(own_d) else own_d, local_ccl_a=None if math.isnan(own_c) else own_c,
                closed_count=int(closed_n) if heard else None,
                limits_binding=faults == 0)
        # S3 at the instant of each close: the plant's own record of the true |dV| when the
        # contact landed (issue 11), not the last poll before it
        for c in truth.get("main_closes", []):
            if (c[0], c[1]) not in closes_seen:
                closes_seen.add((c[0], c[1]))
                monitor.main_close_event(int(c[1]), float(c[2]))
        # S1-S6 as far as the outside sees them; S5 only while every node is alive and heard.
        found = monitor.plant_step(t, v_bus, [tuple(bool(x) for x in c) for c in cont],
                                   [float(x) for x in truth["v_string_v"]], [float(x) for x in truth["i_a"]],
                                   heard_all)
        for found_v in map(Violation.from_dict, found):
            if len(violations) < 100:
                violations.append(str(found_v))

        # failure detection: every live peer has dropped the dead node from its closed set
        for d in range(n):
            kd = tr[d].killed_at
            if kd is None or tr[d].closed_before_kill == 0:
                continue
            others = [k for k in range(n) if k != d and nodes[k].alive]
            counts = [views[k].get("STATE", "ClosedCount", now) for k in others]
            if others and all(not math.isnan(c) and c < tr[d].closed_before_kill for c in counts):
                detect.append((now - kd) * 1000)
                tr[d].closed_before_kill = 0

        if all_heard_t is None and all(not math.isnan(v.get("STATE", "Phase", now)) for v in views):
            all_heard_t = round(t, 2)

        # ------------------------------------------------------------------------ inverter
        # the inverter knows the battery only through the frames on its CAN channel
        request = _load_request(desc_json, t, v_bus)
        speaker, _, _ = _inverter_limits(views, nodes, now)
        n_heard = len(inverter.history)
        inverter.receive(now)
        # the limit frames of this poll, on the plant's clock (for the report and its checks)
        inv_rows.extend([round(t, 3), round(d, 1), round(c, 1), speaker] for (_, d, c) in inverter.history[n_heard:])
        inverter.poll(now)
        target = inverter.current(now, request)
        inv_heard = inverter.heard
        fresh = now - inv_heard.t_s <= inverter.timeout_s
        dcl = inv_heard.dcl_a if fresh else math.nan
        ccl = inv_heard.ccl_a if fresh else math.nan
        if target != load_set:
            try:
                await client.request({"op": "load", "i": target})
                load_set = target
            except asyncio.TimeoutError:
                pass  # not confirmed: sent again next period

        load_a = float(truth["load_a"])
        e = load_a * v_bus * dt
        if e >= 0:
            e_dis += e
        else:
            e_chg -= e

        # --------------------------------------------------------------------------- record
        if t >= next_rec:
            next_rec = t + sc.record_every_s
            sys_rows.append([t, v_bus, load_a, request, dcl, ccl, float(sum(tr[k].closed for k in range(n))), speaker])
            for k in range(n):
                v = views[k]
                alive = nodes[k].alive and not math.isnan(v.get("STATE", "Phase", now))
                fc = v.get("STATE", "FaultCount", now)
                c = cont[k]
                state = 2.0 if (c[0] and c[1]) else (1.0 if c[2] else 0.0)
                str_rows.append([
                    float(truth["i_a"][k]), float(truth["soc"][k]), v.get("STATE", "Soc", now) / 100.0, state,
                    v.get("STATE", "Phase", now), v.get("LIMITS", "Dcl", now), v.get("LIMITS", "Ccl", now),
                    v.get("LIMITS", "SysDcl", now), float(truth["t_max_c"][k]), math.nan,
                    math.nan if math.isnan(fc) else float(fc > 0), float(alive), float(truth["v_string_v"][k]),
                ])
        if now - last_print >= 5.0:
            last_print = now
            closed_n = sum(tr[k].closed for k in range(n))
            n_heard_now = sum(1 for k in range(n) if not math.isnan(views[k].get("STATE", "Phase", now)))
            console.print(f"t={t:6.1f} s  heard {n_heard_now}/{n}  closed {closed_n}/{n}  bus {v_bus:6.1f} V  "
                          f"load {load_a:+6.1f} A (asked {request:+.1f})  agreed DCL {dcl:.0f} / CCL {ccl:.0f} A  "
                          f"frames {canlog.counter.frames}")
        if t >= sc.duration_s:
            break
        next_poll += st.poll_s
        delay = next_poll - time.monotonic()
        if delay < -st.poll_s:
            late_polls += 1
            next_poll = time.monotonic()
            delay = 0.0
        await asyncio.sleep(max(delay, 0.0))

    monitor.finish(last_t or 0.0)
    fig = monitor.figures()
    packs = [{"time_connected_s": tr[k].connected_s, "isolations": tr[k].isolations, "rejoins": tr[k].rejoins,
              "faults_seen": [], "resets": 0, "rx_ok": 0, "rx_dropped": 0} for k in range(n)]
    report = {
        "violations": violations, "max_string_overcurrent_a": max(0.0, fig["max_string_overcurrent_a"]),
        "agree_latencies_ms": fig["agree_latencies_ms"], "detect_latencies_ms": detect, "closes": fig["closes"],
        "energy_discharged_j": e_dis, "energy_charged_j": e_chg,
        "packs": packs,
    }
    return {"report": report, "inverter_rows": inv_rows, "system": sys_rows, "strings": str_rows, "t_end": last_t or 0.0,
            "unexpected_exits": unexpected, "late_polls": late_polls, "wall_end": time.monotonic(),
            "all_heard_t": all_heard_t, "plant_timeouts": client.timeouts}


def _inverter_limits(views: list[PeerView], nodes: list[Child], now: float) -> tuple[float, float, float]:
    """(speaker, DCL, CCL) as the inverter hears them: the limits of the node every live node
    names as speaker (the first heard node's choice); NaN limits if there is none."""
    for k, v in enumerate(views):
        if not nodes[k].alive:
            continue
        sp = v.get("STATE", "Speaker", now)
        if math.isnan(sp):
            continue
        s = int(sp)
        if 1 <= s <= len(views) and nodes[s - 1].alive:
            lim = views[s - 1]
            return float(s), lim.get("LIMITS", "SysDcl", now), lim.get("LIMITS", "SysCcl", now)
        return 0.0, math.nan, math.nan
    return 0.0, math.nan, math.nan


def _read_events(path: Path) -> list[dict[str, Any]]:
    out = []
    try:
        for line in path.read_text(errors="replace").splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue  # a line torn by a kill
    except OSError:
        pass
    return out


def _faults_from_events(events: list[dict[str, Any]]) -> tuple[list[dict[str, str]], int]:
    """The protection conditions a node logged (``{rule, level}``, without the element index:
    the fast simulator's ``faults_seen`` form) and how many times its faults cleared."""
    seen: list[dict[str, str]] = []
    resets = 0
    prev: list[dict[str, Any]] = []
    for e in events:
        if e.get("kind") != "faults":
            continue
        cur = list(e.get("faults", []))
        for f in cur:
            name = {"rule": str(f["rule"]), "level": str(f["level"])}
            if name not in seen:
                seen.append(name)
        if prev and not cur:
            resets += 1
        prev = cur
    return seen, resets


def _last_timing(events: list[dict[str, Any]]) -> dict[str, Any] | None:
    for e in reversed(events):
        if e.get("kind") == "stop":
            t = e.get("timing")
            return t if isinstance(t, dict) else None
    return None
