"""``mbms monitor --system system.toml``: watch every peer live on the peer network.

Listens with the system's transport (sending nothing) and decodes, per node, the telemetry frames
with the DBC (mbms/data/dbc/mbms.dbc) and the peer-protocol messages with :mod:`mbms.peer_wire` (the
consensus core's format). Telemetry values are shown where present, else the peer messages'.

``--once``: wait until every member was seen (or ``--duration`` passed), print one table, exit.
``--duration S``: show live for S seconds. ``--json``: print the final rows as one JSON object.
``--web HOST:PORT``: serve the live web page (:mod:`mbms.gateways.web`); listen-only, no writes.

Besides the rows the monitor keeps, from what it hears: each pack's cell voltages (the
MBMS_CELLV frames, for the heat map), its active alarm (level and rule of the STATE frame, with
the time it was first seen) and a bounded timeline of changes (phase, contactors, alarms).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import time
from dataclasses import dataclass, field
from typing import Any

from mbms.cli import data_file
from mbms.errors import opening
from mbms.config_views import SystemConfig, load_system
from mbms.paths import system_file
from mbms.telemetry import CELLS_PER_FRAME
from mbms.types import LEVELS, Phase


@dataclass
class PeerRow:
    node_id: int
    signals: dict[str, dict[str, Any]] = field(default_factory=dict)  # frame kind -> decoded signals
    peer_messages: int = 0
    undecodable: int = 0
    proto: dict[str, Any] = field(default_factory=dict)  # latest decoded peer-message fields
    telemetry_frames: int = 0
    last_seen: float = 0.0
    cells: dict[int, float] = field(default_factory=dict)  # cell index -> V (MBMS_CELLV frames)
    soh_pct: float | None = None
    alarm: dict[str, Any] | None = None  # {"level", "rule", "since"} of the highest active alarm

    def as_dict(self, now: float) -> dict[str, Any]:
        st, lim = self.signals.get("STATE", {}), self.signals.get("LIMITS", {})
        cells, temps = self.signals.get("CELLS", {}), self.signals.get("TEMPS", {})
        pr = self.proto
        phase = st.get("Phase", pr.get("phase"))
        soc = st.get("Soc", pr["soc"] * 100 if "soc" in pr else None)
        if st:
            cont = "".join(c if st.get(f"Contactor{n}") else "-" for c, n in (("N", "Neg"), ("P", "Pos"), ("R", "Pre")))
        elif pr:
            cont = ("NP" if pr["main_closed"] else "--") + ("R" if pr["pre_closed"] else "-")
        else:
            cont = None
        return {
            "id": self.node_id,
            "phase": Phase(int(phase)).name if phase is not None and int(phase) in Phase._value2member_map_ else None,
            "soc_pct": soc, "dcl_a": lim.get("Dcl", pr.get("dcl_a")), "ccl_a": lim.get("Ccl", pr.get("ccl_a")),
            "sys_dcl_a": lim.get("SysDcl", pr.get("sys_dcl_a")), "sys_ccl_a": lim.get("SysCcl", pr.get("sys_ccl_a")),
            "contactors": cont, "grant_to": pr.get("grant_to") or None, "peer_fault": pr.get("fault"),
            "fail_safe": bool(st.get("FailSafe")) if st else None, "faults": st.get("FaultCount"),
            "speaker": st.get("Speaker") or None if st else None,
            "v_cell_min_v": cells.get("VCellMin"), "v_cell_max_v": cells.get("VCellMax"),
            "t_cell_max_c": temps.get("TCellMax"), "i_a": cells.get("Current"),
            "peer_messages": self.peer_messages, "undecodable_messages": self.undecodable,
            "telemetry_frames": self.telemetry_frames,
            "last_seen_s": round(now - self.last_seen, 3) if self.last_seen else None,
            "soh_pct": self.soh_pct, "alarm": self.alarm,
        }


#: Timeline entries the monitor keeps (memory bound of a monitor left running for months).
EVENTS_KEPT = 500
#: AlarmLevel of the STATE frame (mbms.telemetry.alarm_code): none, then the core's level names.
ALARM_LEVELS = ("none", *LEVELS)


class Monitor:
    def __init__(self, system: SystemConfig) -> None:
        from mbms.telemetry import load_database
        from mbms.transport import make_transport

        self.system = system
        self.db = load_database()
        self.transport = make_transport(system, 0)
        self.rows: dict[int, PeerRow] = {m: PeerRow(m) for m in system.members}
        self.transport.on_telemetry = self._on_telemetry
        self.transport.on_message = self._on_message
        self.decode_errors = 0
        # Only verified telemetry and peer messages are shown (brief S7): the system's keys.
        from mbms import _core
        from mbms.keys import system_keys
        from mbms.telemetry import TelemetryVerifier

        self.auth = _core.MessageAuth(system.system_id_u32, system_keys(system))
        self.verifier = TelemetryVerifier(self.auth)
        #: The timeline of changes the monitor saw (bounded: the newest EVENTS_KEPT).
        self.events: collections.deque[dict[str, Any]] = collections.deque(maxlen=EVENTS_KEPT)
        self.event_count = 0

    def _on_telemetry(self, src: int, arb_id: int, data: bytes) -> None:
        from mbms.telemetry import decode

        for fid, d in self.verifier.push(src, arb_id, data):
            try:
                res = decode(self.db, fid, d)
            except Exception:
                self.decode_errors += 1
                continue
            if res is None:
                continue
            kind, node, sig = res
            row = self.rows.get(src)
            if row is None:  # not a configured member: counted by the transport, not shown
                continue
            row.telemetry_frames += 1
            row.last_seen = time.monotonic()
            if kind == "CELLV":
                first = int(sig["Index"])
                for k in range(CELLS_PER_FRAME):
                    v = float(sig[f"V{k}"])
                    if v > 0:
                        row.cells[first + k] = v
                row.soh_pct = float(sig["Soh"]) or None
                continue
            if kind == "STATE":
                self._state_changes(row, row.signals.get("STATE"), sig)
            row.signals[kind] = sig

    def _event(self, node: int, kind: str, **fields: Any) -> None:
        self.event_count += 1
        self.events.append({"n": self.event_count, "t": round(time.time(), 3), "node": node, "kind": kind, **fields})

    def _state_changes(self, row: PeerRow, old: dict[str, Any] | None, new: dict[str, Any]) -> None:
        """Timeline entries for what changed between two STATE frames of one pack."""
        from mbms.engine import RULES
        from mbms.telemetry import ALARM_RULE_FAIL_SAFE

        def phase(st: dict[str, Any] | None) -> str | None:
            p = None if st is None else int(st["Phase"])
            return Phase(p).name if p is not None and p in Phase._value2member_map_ else None

        def cont(st: dict[str, Any] | None) -> str | None:
            return None if st is None else "".join(c if st.get(f"Contactor{n}") else "-"
                                                    for c, n in (("N", "Neg"), ("P", "Pos"), ("R", "Pre")))

        if phase(old) != phase(new):
            self._event(row.node_id, "phase", old=phase(old), new=phase(new))
        if cont(old) != cont(new):
            self._event(row.node_id, "contactors", old=cont(old), new=cont(new))
        level, rule = int(new.get("AlarmLevel", 0)), int(new.get("AlarmRule", 0))
        key = (level, rule)
        old_key = (int(old.get("AlarmLevel", 0)), int(old.get("AlarmRule", 0))) if old else (0, 0)
        if key != old_key or (level and row.alarm is None):
            if level == 0:
                if row.alarm is not None:
                    self._event(row.node_id, "alarm_cleared", rule=row.alarm["rule"], level=row.alarm["level"])
                row.alarm = None
            else:
                name = ("fail_safe" if rule == ALARM_RULE_FAIL_SAFE
                        else RULES[rule - 1] if 0 < rule <= len(RULES) else f"rule {rule}")
                row.alarm = {"level": ALARM_LEVELS[level], "rule": name, "since": round(time.time(), 3)}
                self._event(row.node_id, "alarm", rule=name, level=ALARM_LEVELS[level])

    def _on_message(self, src: int, payload: bytes) -> None:
        from mbms.errors import FrameError
        from mbms.peer_wire import decode as decode_peer

        row = self.rows.get(src)
        if row is None:
            return
        row.peer_messages += 1
        row.last_seen = time.monotonic()
        try:
            m = decode_peer(payload, self.auth)  # verified (S7): forged and unauthenticated ones raise
        except FrameError:
            row.undecodable += 1
            return
        if m.sender != src:
            row.undecodable += 1
            return
        row.proto.update(phase=m.phase, fault=m.fault, main_closed=m.main_closed, pre_closed=m.pre_closed,
                         grant_to=m.grant_to, seq=m.counter, **m.values)

    def snapshot(self) -> list[dict[str, Any]]:
        now = time.monotonic()
        return [r.as_dict(now) for r in self.rows.values()]

    def table(self) -> Any:
        from rich.table import Table

        t = Table(title=f"mbms system {self.system.system_id}: {len(self.system.members)} members, "
                        f"quorum {self.system.quorum}")
        cols = ["id", "phase", "SOC %", "DCL A", "CCL A", "sys DCL", "sys CCL", "cont.", "faults",
                "Vmin", "Vmax", "I A", "msgs", "last seen s"]
        for c in cols:
            t.add_column(c, justify="right")
        for r in self.snapshot():
            def f(x: Any, fmt: str = "{:.1f}") -> str:
                return "-" if x is None else (fmt.format(x) if isinstance(x, float) else str(x))
            phase = r["phase"] or "-"
            if r["fail_safe"]:
                phase += " (FS)"
            t.add_row(str(r["id"]), phase, f(r["soc_pct"]), f(r["dcl_a"]), f(r["ccl_a"]), f(r["sys_dcl_a"]),
                      f(r["sys_ccl_a"]), f(r["contactors"]), f(r["faults"]), f(r["v_cell_min_v"], "{:.3f}"),
                      f(r["v_cell_max_v"], "{:.3f}"), f(r["i_a"]), str(r["peer_messages"]), f(r["last_seen_s"], "{:.2f}"))
        return t

    async def run(self, duration_s: float | None, once: bool, live: bool) -> None:
        with opening(f"peer transport {self.transport.endpoint}"):
            await self.transport.start()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (duration_s if duration_s is not None else (10.0 if once else float("inf")))
        try:
            if live:
                from rich.live import Live

                with Live(self.table(), refresh_per_second=4) as lv:
                    while loop.time() < deadline and not (once and self._all_seen()):
                        await asyncio.sleep(0.25)
                        lv.update(self.table())
            else:
                while loop.time() < deadline and not (once and self._all_seen()):
                    await asyncio.sleep(0.05)
        finally:
            self.transport.close()

    def _all_seen(self) -> bool:
        return all("STATE" in r.signals or r.proto for r in self.rows.values())


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("monitor", help="show every peer live (listens on the peer network)")
    p.add_argument("--system", required=True, type=data_file(system_file),
                   help="system file: a path or a shipped name (example_system_udp)")
    p.add_argument("--once", action="store_true", help="wait until all members were seen, print once, exit")
    p.add_argument("--duration", type=float, help="run for this many seconds")
    p.add_argument("--json", action="store_true", help="print the final rows as JSON")
    p.add_argument("--web", metavar="HOST:PORT", help="serve the live web page (listen-only) at http://HOST:PORT/")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    system = load_system(args.system)
    mon = Monitor(system)
    if args.web:
        from mbms.gateways.web import parse_listen, serve

        host, port = parse_listen(args.web)
        asyncio.run(serve(mon, host, port, args.duration))
        return 0
    live = not (args.once or args.json) and Console().is_terminal
    asyncio.run(mon.run(args.duration, args.once, live))
    if args.json:
        print(json.dumps({"system": system.system_id, "stats": mon.transport.stats.as_dict(), "peers": mon.snapshot()}))
    elif not live:
        Console(width=max(Console().width, 150)).print(mon.table())
    return 0 if (not args.once or mon._all_seen()) else 1
