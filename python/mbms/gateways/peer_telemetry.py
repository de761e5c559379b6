"""The peer network's telemetry as a gateway sees it: the latest of the four telemetry frames
every node sends per telemetry period (``mbms.dbc``, :mod:`mbms.telemetry`), decoded with
cantools, per configured member, with what is fresh. Used by the SunSpec server (all strings)
and by the inverter speaker (the system SOC of the connected strings)."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

#: Telemetry older than this counts as not heard (the nodes send every telemetry period).
FRESH_S = 1.0


@dataclass
class StringState:
    """One string as its telemetry tells it (NaN / None: not heard)."""

    node_id: int
    heard: bool = False
    soc_pct: float = math.nan
    phase: int | None = None
    main_closed: bool = False
    fault_count: int = 0
    i_a: float = math.nan  # + = discharge
    v_string_v: float = math.nan
    v_bus_v: float = math.nan
    v_cell_min: float = math.nan
    v_cell_max: float = math.nan
    t_min_c: float = math.nan
    t_max_c: float = math.nan
    v_cell_min_index: int | None = None
    v_cell_max_index: int | None = None
    dcl_a: float = math.nan
    ccl_a: float = math.nan
    sys_dcl_a: float = math.nan
    sys_ccl_a: float = math.nan
    speaker: int | None = None


class TelemetryView:
    """The latest telemetry of every member, decoded with the mbms DBC; fed by a transport's
    ``on_telemetry`` (``(src, arbitration_id, data)``). Only batches whose MBMS_AUTH frame
    verifies with ``auth`` (a ``_core.MessageAuth``; brief S7) are taken: a gateway acts on them."""

    def __init__(self, members: tuple[int, ...], auth: Any, clock: Any = time.monotonic) -> None:
        from mbms.telemetry import TelemetryVerifier, load_database

        self.db = load_database()
        self.verifier = TelemetryVerifier(auth, clock)
        self.members = members
        self.clock = clock
        self.signals: dict[int, dict[str, dict[str, float]]] = {m: {} for m in members}
        self.heard: dict[int, dict[str, float]] = {m: {} for m in members}
        self.undecodable = 0

    def on_telemetry(self, src: int, arb_id: int, data: bytes) -> None:
        from mbms.telemetry import decode

        for fid, d in self.verifier.push(src, arb_id, data):
            try:
                res = decode(self.db, fid, d)
            except Exception:  # a frame the DBC cannot decode is counted, never fatal
                self.undecodable += 1
                continue
            if res is None or res[1] not in self.signals or res[1] != src:
                continue
            kind, node, sig = res
            self.signals[node][kind] = sig
            self.heard[node][kind] = self.clock()

    def strings(self) -> list[StringState]:
        now = self.clock()
        out = []
        for m in self.members:
            s = StringState(m)
            fresh = {k: v for k, v in self.signals[m].items() if now - self.heard[m].get(k, -math.inf) <= FRESH_S}
            st, lim, cells, temps = (fresh.get(k, {}) for k in ("STATE", "LIMITS", "CELLS", "TEMPS"))
            s.heard = bool(st)
            if st:
                s.soc_pct = float(st["Soc"])
                s.phase = int(st["Phase"])
                s.main_closed = bool(st["ContactorNeg"] and st["ContactorPos"]) and not st["FailSafe"]
                s.fault_count = int(st["FaultCount"])
                s.speaker = int(st["Speaker"]) or None
            if lim:
                s.dcl_a, s.ccl_a, s.sys_dcl_a, s.sys_ccl_a = (float(lim[k]) for k in ("Dcl", "Ccl", "SysDcl", "SysCcl"))
            if cells:
                s.v_cell_min, s.v_cell_max = float(cells["VCellMin"]), float(cells["VCellMax"])
                s.v_string_v, s.i_a = float(cells["VString"]), float(cells["Current"])
            if temps:
                s.t_min_c, s.t_max_c, s.v_bus_v = float(temps["TCellMin"]), float(temps["TCellMax"]), float(temps["VBus"])
                s.v_cell_min_index, s.v_cell_max_index = int(temps["VCellMinIndex"]), int(temps["VCellMaxIndex"])
            out.append(s)
        return out
