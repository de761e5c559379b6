"""What a running node shows its operators: one plain snapshot of the runtime, taken on the loop.

The gateways (MQTT, metrics, UDS, web) never read the runtime from their own threads: a period
hook copies the few numbers here, and the gateway works on the copy. A snapshot is small (the
cell voltages are the largest part) and built from what the period already has: the logic's
status, the latest measurement and the core's last step output.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mbms.types import LEVELS, Fault

#: A fail-safe (contactors forced open by the runtime) shows as the highest level.
FAIL_SAFE_LEVEL = LEVELS[-1]


@dataclass(frozen=True)
class Alarm:
    """One active protection condition or fail-safe: ``rule`` (e.g. cell_overvoltage), ``level``
    (the core's one spelling, :data:`mbms.types.LEVELS`: warning, alarm, fault; a page may
    capitalise it for display), ``where`` ("pack" or the cell/sensor index)."""

    rule: str
    level: str
    where: str

    @classmethod
    def of(cls, fault: Fault) -> Alarm:
        """From the core's fault (:class:`mbms.types.Fault`: snake_case rule and level names),
        names kept as the core spells them."""
        where = "pack" if fault.index == Fault.PACK_INDEX else str(fault.index)
        return cls(fault.rule, fault.level, where)

    def as_dict(self) -> dict[str, str]:
        return {"rule": self.rule, "level": self.level, "where": self.where}


@dataclass(frozen=True)
class NodeSnapshot:
    node_id: int
    t_unix: float
    periods: int
    phase: str | None
    fail_safe: str | None
    soc_pct: float | None
    soh_capacity_pct: float | None
    soh_resistance_pct: float | None
    dcl_a: float | None
    ccl_a: float | None
    sys_dcl_a: float | None
    sys_ccl_a: float | None
    i_a: float | None
    v_string_v: float | None
    v_bus_v: float | None
    contactors: tuple[bool, bool, bool]  # neg, pos, pre as commanded
    closed_set: tuple[int, ...]
    peers_seen: tuple[int, ...]
    alarms: tuple[Alarm, ...]
    v_cell_v: tuple[float, ...] = ()
    t_cell_c: tuple[float, ...] = ()
    counters: dict[str, int] = field(default_factory=dict)

    @property
    def v_cell_min_v(self) -> float | None:
        return min(self.v_cell_v) if self.v_cell_v else None

    @property
    def v_cell_max_v(self) -> float | None:
        return max(self.v_cell_v) if self.v_cell_v else None

    @property
    def t_cell_min_c(self) -> float | None:
        return min(self.t_cell_c) if self.t_cell_c else None

    @property
    def t_cell_max_c(self) -> float | None:
        return max(self.t_cell_c) if self.t_cell_c else None

    @property
    def alarm_level(self) -> str:
        """The highest active level, or "none"."""
        got = [LEVELS.index(a.level) for a in self.alarms if a.level in LEVELS]
        return LEVELS[max(got)] if got else "none"

    def state_dict(self) -> dict[str, Any]:
        """The per-pack state message (MQTT ``.../state``, the web page)."""
        vmin, vmax = self.v_cell_min_v, self.v_cell_max_v

        def r(x: float | None, n: int = 3) -> float | None:
            return None if x is None else round(float(x), n)

        return {
            "node": self.node_id, "t": round(self.t_unix, 3), "phase": self.phase, "fail_safe": self.fail_safe,
            "soc_pct": r(self.soc_pct, 2), "soh_capacity_pct": r(self.soh_capacity_pct, 2),
            "soh_resistance_pct": r(self.soh_resistance_pct, 2),
            "dcl_a": r(self.dcl_a, 1), "ccl_a": r(self.ccl_a, 1), "sys_dcl_a": r(self.sys_dcl_a, 1),
            "sys_ccl_a": r(self.sys_ccl_a, 1), "i_a": r(self.i_a, 2), "v_string_v": r(self.v_string_v, 2),
            "v_bus_v": r(self.v_bus_v, 2), "v_cell_min_v": r(vmin, 4), "v_cell_max_v": r(vmax, 4),
            "v_cell_spread_mv": None if vmin is None or vmax is None else round((vmax - vmin) * 1000, 1),
            "t_cell_min_c": r(self.t_cell_min_c, 1), "t_cell_max_c": r(self.t_cell_max_c, 1),
            "contactor_neg": self.contactors[0], "contactor_pos": self.contactors[1], "contactor_pre": self.contactors[2],
            "main_closed": self.contactors[0] and self.contactors[1],
            "closed_set": list(self.closed_set), "peers_seen": list(self.peers_seen),
            "alarm_level": self.alarm_level, "alarms": [a.as_dict() for a in self.alarms],
        }


def take(rt: Any) -> NodeSnapshot:
    """Copy what the operator gateways need from a :class:`~mbms.node.runtime.NodeRuntime`."""
    st, meas = rt.status, rt.meas
    last = getattr(rt.logic, "last", None) or {}
    soh_c, soh_r = last.get("soh_capacity"), last.get("soh_resistance")
    counters: dict[str, int] = {}
    core = getattr(rt.logic, "core", None)
    if core is not None and hasattr(core, "counters"):
        counters = {k: int(v) for k, v in core.counters().items()}
    c = rt.commanded
    return NodeSnapshot(
        node_id=rt.node.id, t_unix=time.time(), periods=rt.periods,
        phase="FAIL_SAFE" if rt.fail_safe_reason else (getattr(st.phase, "name", None) if st else None),
        fail_safe=rt.fail_safe_reason,
        soc_pct=100.0 * st.soc if st else None,
        soh_capacity_pct=100.0 * float(soh_c) if soh_c is not None else None,
        soh_resistance_pct=100.0 * float(soh_r) if soh_r is not None else None,
        dcl_a=st.dcl_a if st else None, ccl_a=st.ccl_a if st else None,
        sys_dcl_a=st.sys_dcl_a if st else None, sys_ccl_a=st.sys_ccl_a if st else None,
        i_a=float(meas.i_a) if meas else None, v_string_v=float(meas.v_string_v) if meas else None,
        v_bus_v=float(meas.v_bus_v) if meas else None,
        contactors=(bool(c.neg), bool(c.pos), bool(c.pre)),
        closed_set=tuple(st.closed_set) if st else (), peers_seen=tuple(st.peers_seen) if st else (),
        # the core's faults, and the runtime's own fail-safe (stale sample, lost link, overrun)
        alarms=(tuple(Alarm.of(f) for f in st.faults) if st else ())
        + ((Alarm("fail_safe", FAIL_SAFE_LEVEL, st.failsafe),) if st and st.failsafe else ())
        + ((Alarm("fail_safe", FAIL_SAFE_LEVEL, "runtime"),) if rt.fail_safe_reason else ()),
        v_cell_v=tuple(np.asarray(meas.v_cell_v, dtype=float).tolist()) if meas is not None else (),
        t_cell_c=tuple(np.asarray(meas.t_cell_c, dtype=float).tolist()) if meas is not None else (),
        counters=counters,
    )
