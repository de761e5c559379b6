"""SunSpec Modbus TCP server for an EMS or SCADA: the battery as SunSpec models 1 (common),
802 (battery base), 803 (lithium-ion bank, one repeating block per string) and 804 (lithium-ion
string, one model per string).

Where the data comes from: the peer network's telemetry (the four frames every node sends per
telemetry period, decoded with ``mbms.dbc`` as ``mbms monitor`` does: :class:`TelemetryView`).
The server is a listener on that network (it sends nothing there), so it sees every string,
also while any one node is down, and runs on any controller or next to the EMS.

The register layout is taken from the model definitions pysunspec2 ships (``sunspec2/models/
json/model_<id>.json``: point order, types, sizes, scale-factor names), so it is the layout
a SunSpec client expects; values are encoded here: integers big-endian, 32-bit points in two
registers high word first, strings NUL-padded, scaled by the scale factors in :data:`SF`, and
"not implemented" (0xFFFF, 0x8000, 0xFFFFFFFF) where no value is known (SunSpec Information
Model Specification v1.0, §6 "Point types" and §6.2 "unimplemented values").

Read-only: a write (function codes 5, 6, 15, 16, 22, 23) gets Modbus exception 1 (illegal
function); a read outside the map gets exception 2 (illegal address), as pymodbus answers for
undefined addresses.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import math
import os
from dataclasses import dataclass, field
from typing import Any

from mbms.gateways.peer_telemetry import StringState, TelemetryView

log = logging.getLogger("mbms.sunspec")

#: SunSpec base address (holding registers, 0-based in the requests: 40000 = "40001").
BASE_ADDRESS = 40000
#: Scale factors (10^sf) of every scale-factor point the models name. Chosen for a rack of up
#: to 6553.5 V, ±3276.7 A, 655 kW: 0.1 V, 0.1 A, 1 mV per cell, 0.1 %, 0.1 degC, 10 W/Wh.
SF = {"SoC_SF": -1, "SoH_SF": -1, "DoD_SF": -1, "V_SF": -1, "CellV_SF": -3, "A_SF": -1, "AMax_SF": -1,
      "W_SF": 1, "AHRtg_SF": -1, "WHRtg_SF": 1, "WChaDisChaMax_SF": 1, "DisChaRte_SF": 0, "ModTmp_SF": -1}
#: Write function codes (Modbus Application Protocol V1.1b3 §6): refused, the map is read-only.
WRITE_FUNCTIONS = frozenset({5, 6, 15, 16, 22, 23})


@functools.lru_cache(maxsize=None)
def model_definition(model_id: int) -> dict[str, Any]:
    """The group tree of a SunSpec model as pysunspec2 defines it."""
    import sunspec2

    path = os.path.join(os.path.dirname(sunspec2.__file__), "models", "json", f"model_{model_id}.json")
    with open(path) as f:
        return dict(json.load(f)["group"])


_NI16 = {"uint16": 0xFFFF, "enum16": 0xFFFF, "count": 0xFFFF, "int16": 0x8000, "sunssf": 0x8000, "pad": 0x8000}
_NI32 = {"uint32": 0xFFFFFFFF, "bitfield32": 0xFFFFFFFF, "acc32": 0, "int32": 0x80000000, "enum32": 0xFFFFFFFF}


def _encode_point(p: dict[str, Any], value: Any) -> list[int]:
    typ, size = p["type"], int(p.get("size", 1))
    if typ == "string":
        raw = (value or "").encode("ascii", "replace")[: 2 * size].ljust(2 * size, b"\0")
        return [raw[i] << 8 | raw[i + 1] for i in range(0, 2 * size, 2)]
    if typ in _NI16:
        if value is None:
            return [_NI16[typ]]
        lo, hi = (-0x7FFF, 0x7FFF) if typ in ("int16", "sunssf") else (0, 0xFFFE)
        x = min(max(int(value), lo), hi)
        return [x & 0xFFFF]
    if typ in _NI32:
        if value is None:
            x = _NI32[typ]
        else:
            x = min(max(int(value), -0x7FFFFFFF if typ == "int32" else 0), 0xFFFFFFFE) & 0xFFFFFFFF
        return [x >> 16, x & 0xFFFF]
    raise ValueError(f"point {p['name']}: type {typ} not supported by this encoder")


def encode_group(g: dict[str, Any], values: dict[str, Any], repeats: dict[str, list[dict[str, Any]]],
                 model_id: int | None = None) -> list[int]:
    """Registers of a model (``model_id`` given) or of one repeating-group instance."""
    regs: list[int] = []
    for p in g["points"]:
        name = p["name"]
        if name in SF and p["type"] == "sunssf":
            v: Any = SF[name]
        elif model_id is not None and name == "ID":
            v = model_id
        elif model_id is not None and name == "L":
            v = 0  # filled below
        else:
            v = values.get(name)
            if v is not None and p.get("sf") and p["type"] != "string":
                if isinstance(v, float) and not math.isfinite(v):
                    v = None
                else:
                    v = round(v / 10.0 ** SF[p["sf"]])
            elif isinstance(v, float) and not math.isfinite(v):
                v = None
            elif isinstance(v, bool):
                v = int(v)
        regs.extend(_encode_point(p, v))
    for sub in g.get("groups", []):
        for inst in repeats.get(sub["name"], []):
            regs.extend(encode_group(sub, inst, {}))
    if model_id is not None:
        regs[1] = len(regs) - 2
    return regs


@dataclass(frozen=True)
class Nameplate:
    """What the telemetry does not carry: the device's identity and ratings."""

    manufacturer: str = "mbms"
    model: str = "parallel-string BMS"
    version: str = ""
    serial: str = ""
    capacity_ah_per_string: float | None = None
    v_nominal_v: float | None = None


def _mean(xs: list[float]) -> float:
    xs = [x for x in xs if math.isfinite(x)]
    return sum(xs) / len(xs) if xs else math.nan


def _arg(xs: list[float], pick: Any) -> tuple[float, int | None]:
    vals = [(x, k) for k, x in enumerate(xs) if math.isfinite(x)]
    if not vals:
        return math.nan, None
    x, k = pick(vals)
    return x, k + 1


def register_image(strings: list[StringState], plate: Nameplate) -> list[int]:
    """The whole map from BASE_ADDRESS: "SunS", models 1, 802, 803, 804 x N, end marker."""
    n = len(strings)
    closed = [s for s in strings if s.main_closed]
    speaker = next((s for s in strings if s.heard and s.speaker == s.node_id), None)
    ref = speaker or next((s for s in strings if s.heard), None)
    soc = _mean([s.soc_pct for s in closed]) if closed else _mean([s.soc_pct for s in strings])
    v_bus = ref.v_bus_v if ref else math.nan
    i_tot = sum(s.i_a for s in closed if math.isfinite(s.i_a)) if closed else 0.0
    dcl = ref.sys_dcl_a if ref else 0.0
    ccl = ref.sys_ccl_a if ref else 0.0
    cv_max, cv_max_k = _arg([s.v_cell_max for s in strings], max)
    cv_min, cv_min_k = _arg([s.v_cell_min for s in strings], min)
    t_max, t_max_k = _arg([s.t_max_c for s in strings], max)
    t_min, t_min_k = _arg([s.t_min_c for s in strings], min)
    faults = any(s.fault_count for s in strings)
    state = 99 if faults and not closed else 3 if closed else 1  # FAULT / CONNECTED / DISCONNECTED
    cap = plate.capacity_ah_per_string
    m802 = {
        "AHRtg": cap * n if cap else None,
        "WHRtg": cap * n * plate.v_nominal_v if cap and plate.v_nominal_v else None,
        "WChaRteMax": ccl * v_bus if math.isfinite(v_bus) else None,
        "WDisChaRteMax": dcl * v_bus if math.isfinite(v_bus) else None,
        "SoC": soc, "LocRemCtl": 1, "Typ": 4, "State": state,
        "ChaSt": 4 if i_tot < -0.5 else 3 if i_tot > 0.5 else 6,
        "Evt1": 0, "Evt2": 0, "EvtVnd1": 0, "EvtVnd2": 0,
        "V": v_bus, "CellVMax": cv_max, "CellVMaxStr": cv_max_k, "CellVMin": cv_min, "CellVMinStr": cv_min_k,
        "CellVAvg": _mean([(s.v_cell_max + s.v_cell_min) / 2 for s in strings]),
        "A": i_tot, "AChaMax": ccl, "ADisChaMax": dcl, "W": i_tot * v_bus if math.isfinite(v_bus) else None,
        "AlmRst": 0, "SetOp": 1 if closed else 2, "SetInvState": None,
    }
    strs = [
        {"StrNMod": 1, "StrSt": (1 if s.heard else 0) | (2 if s.main_closed else 0), "StrSoC": s.soc_pct,
         "StrA": s.i_a, "StrCellVMax": s.v_cell_max, "StrCellVMaxMod": 1, "StrCellVMin": s.v_cell_min,
         "StrCellVMinMod": 1, "StrCellVAvg": (s.v_cell_max + s.v_cell_min) / 2, "StrModTmpMax": s.t_max_c,
         "StrModTmpMaxMod": 1, "StrModTmpMin": s.t_min_c, "StrModTmpMinMod": 1,
         "StrModTmpAvg": (s.t_max_c + s.t_min_c) / 2, "StrEvt1": 1 if not s.heard else 0,
         "StrConSt": 0b11 if s.main_closed else 0, "Pad1": None, "Pad2": None}
        for s in strings
    ]
    sv_max, sv_max_k = _arg([s.v_string_v for s in strings], max)
    sv_min, sv_min_k = _arg([s.v_string_v for s in strings], min)
    sa_max, sa_max_k = _arg([s.i_a for s in strings], max)
    sa_min, sa_min_k = _arg([s.i_a for s in strings], min)
    m803 = {"NStr": n, "NStrCon": len(closed), "ModTmpMax": t_max, "ModTmpMaxStr": t_max_k, "ModTmpMaxMod": 1,
            "ModTmpMin": t_min, "ModTmpMinStr": t_min_k, "ModTmpMinMod": 1,
            "ModTmpAvg": _mean([s.t_max_c for s in strings]),
            "StrVMax": sv_max, "StrVMaxStr": sv_max_k, "StrVMin": sv_min, "StrVMinStr": sv_min_k,
            "StrVAvg": _mean([s.v_string_v for s in strings]), "StrAMax": sa_max, "StrAMaxStr": sa_max_k,
            "StrAMin": sa_min, "StrAMinStr": sa_min_k, "StrAAvg": _mean([s.i_a for s in strings])}
    regs = [0x5375, 0x6E53]  # "SunS"
    regs += encode_group(model_definition(1), {"Mn": plate.manufacturer, "Md": plate.model, "Vr": plate.version,
                                               "SN": plate.serial, "DA": 1}, {}, 1)
    regs += encode_group(model_definition(802), m802, {}, 802)
    regs += encode_group(model_definition(803), m803, {"string": strs}, 803)
    d804 = model_definition(804)
    for k, s in enumerate(strings):
        regs += encode_group(d804, {
            "Idx": k + 1, "NMod": 0, "St": strs[k]["StrSt"], "SoC": s.soc_pct, "A": s.i_a, "V": s.v_string_v,
            "CellVMax": s.v_cell_max, "CellVMaxMod": 1, "CellVMin": s.v_cell_min, "CellVMinMod": 1,
            "CellVAvg": strs[k]["StrCellVAvg"], "ModTmpMax": s.t_max_c, "ModTmpMaxMod": 1, "ModTmpMin": s.t_min_c,
            "ModTmpMinMod": 1, "ModTmpAvg": strs[k]["StrModTmpAvg"], "ConSt": strs[k]["StrConSt"],
            "Evt1": strs[k]["StrEvt1"], "Evt2": 0}, {}, 804)
    regs += [0xFFFF, 0]  # end model
    return regs


@dataclass
class SunSpecServer:
    """pymodbus TCP server of :func:`register_image`, refreshed from ``view`` on every read."""

    view: TelemetryView
    plate: Nameplate
    host: str = "127.0.0.1"
    port: int = 502
    device_id: int = 1
    refused_writes: int = 0
    reads: int = 0
    _server: Any = field(default=None, repr=False)
    _size: int = 0

    def image(self) -> list[int]:
        return register_image(self.view.strings(), self.plate)

    async def _action(self, function_code: int, start_address: int, address: int, count: int,
                      current_registers: list[int], set_values: Any) -> Any:
        from pymodbus.constants import ExcCodes

        if function_code in WRITE_FUNCTIONS or set_values is not None:
            self.refused_writes += 1
            return ExcCodes.ILLEGAL_FUNCTION
        self.reads += 1
        regs = self.image()
        current_registers[:] = regs[: len(current_registers)]
        return None

    async def start(self) -> None:
        from pymodbus.server import ModbusTcpServer
        from pymodbus.simulator import DataType, SimData, SimDevice

        from mbms.errors import opening

        first = self.image()
        self._size = len(first)
        dev = SimDevice(id=self.device_id, simdata=[SimData(address=BASE_ADDRESS, values=first,
                                                             datatype=DataType.REGISTERS)],
                        action=self._action)
        self._server = ModbusTcpServer(dev, address=(self.host, self.port))
        what = f"SunSpec Modbus TCP server {self.host}:{self.port}"
        # pymodbus logs a failed bind as a warning of its own and returns False: the one line
        # about it is ours (below), so its logger is quiet for this call only
        import logging

        pm_log = logging.getLogger("pymodbus.logging")
        level = pm_log.level
        pm_log.setLevel(logging.ERROR)
        try:
            with opening(what):
                listening = await self._server.listen()
        finally:
            pm_log.setLevel(level)
        if not listening:
            # pymodbus logs the OSError of its bind and returns False: bind once more to learn
            # what the machine says (address in use, permission denied, not on this host)
            import socket

            from mbms.errors import EnvironmentProblem

            try:
                socket.create_server((self.host, self.port)).close()
            except OSError as exc:
                with opening(what):
                    raise exc from None
            raise EnvironmentProblem(what, "could not listen there")

    async def serve_forever(self) -> None:
        assert self._server is not None
        await self._server.serve_forever(background=False)

    async def close(self) -> None:
        if self._server is not None:
            await self._server.shutdown()
            self._server = None


async def run_gateway(system: Any, host: str, port: int, plate: Nameplate, stop: asyncio.Event,
                      on_ready: Any = None) -> SunSpecServer:
    """Listen on the system's peer network (sending nothing) and serve SunSpec until ``stop``."""
    from mbms import _core
    from mbms.keys import system_keys
    from mbms.transport import make_transport

    # the SunSpec client acts on what the strings' telemetry says: verified batches only (S7)
    view = TelemetryView(tuple(system.members), _core.MessageAuth(system.system_id_u32, system_keys(system)))
    transport = make_transport(system, 0)
    transport.on_telemetry = view.on_telemetry
    transport.on_message = lambda src, payload: None
    await transport.start()
    server = SunSpecServer(view, plate, host, port)
    try:
        await server.start()
        if on_ready is not None:
            on_ready(server)
        await stop.wait()
    finally:
        await server.close()
        transport.close()
    return server
