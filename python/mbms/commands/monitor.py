"""``mbms monitor --system system.toml``: watch every peer live on the peer network.

Listens with the system's transport (sending nothing) and decodes, per node, the telemetry frames
with the DBC (mbms/data/dbc/mbms.dbc) and the peer-protocol messages with :mod:`mbms.peer_wire` (the
consensus core's format). Telemetry values are shown where present, else the peer messages'.

``--once``: wait until every member was seen (or ``--duration`` passed), print one table, exit.
``--duration S``: show live for S seconds. ``--json``: print the final rows as one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any

from mbms.cli import data_file
from mbms.errors import opening
from mbms.config_views import SystemConfig, load_system
from mbms.paths import system_file
from mbms.types import Phase


@dataclass
class PeerRow:
    node_id: int
    signals: dict[str, dict[str, Any]] = field(default_factory=dict)  # frame kind -> decoded signals
    peer_messages: int = 0
    undecodable: int = 0
    proto: dict[str, Any] = field(default_factory=dict)  # latest decoded peer-message fields
    telemetry_frames: int = 0
    last_seen: float = 0.0

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
        }


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
            row = self.rows[src]
            row.signals[kind] = sig
            row.telemetry_frames += 1
            row.last_seen = time.monotonic()

    def _on_message(self, src: int, payload: bytes) -> None:
        from mbms.errors import FrameError
        from mbms.peer_wire import decode as decode_peer

        row = self.rows[src]
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
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    system = load_system(args.system)
    mon = Monitor(system)
    live = not (args.once or args.json) and Console().is_terminal
    asyncio.run(mon.run(args.duration, args.once, live))
    if args.json:
        print(json.dumps({"system": system.system_id, "stats": mon.transport.stats.as_dict(), "peers": mon.snapshot()}))
    elif not live:
        Console(width=max(Console().width, 150)).print(mon.table())
    return 0 if (not args.once or mon._all_seen()) else 1
