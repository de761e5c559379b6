"""The battery's CAN link to its inverter (or charger): the agreed system limits, sent by the
current speaker on a CAN channel of its own, in the battery protocol the system config names.

Who sends: the speaker, the peer that every live peer names (consensus ``update_speaker``: the
lowest live id that has finished listening, on the side with a quorum). All peers agree on the
limits (S5), so a handover changes who sends, not what is sent. A node becomes the sender in the
control period in which its peer core names it speaker and sends at once (no wait for its own
cycle), so a handover leaves the inverter without frames for at most ``fail_timeout_ms`` (the
peers notice the dead speaker) + one control period + one frame cycle; the config checks that
this fits inside the inverter's ``timeout_ms``.

What is sent (``[inverter]`` in the system file, :class:`mbms.config_views.InverterSection`):

* CCL/DCL: the agreed S4 system limits (N-1 rule, uncertainty accounted for: consensus
  ``sharing::Uncertainty``), never more. Zero, with the enable flags off, before the battery is
  ready, with no string closed, and (for ``stop_frames`` cycles, then silence) after the sender
  lost its quorum.
* CVL/DVL: cell ``v_max_v`` / ``v_min_v`` of the cell file x series count, less/plus the
  configured margin per cell.
* protection flags: this pack's protection rules at alarm/fault level; alarm flags: at warning.
* SOC: the mean over the closed strings (their telemetry on the peer network; identical packs,
  so it is the capacity-weighted SOC), SOH: this node's capacity estimate.
* force-charge request below ``force_charge_soc``.
* a limit that drops by more than 1 A / 2 % is sent at once (LV), not a cycle later.
* ``hold`` (mbms extension in a bit the protocols leave unused: 0x35C bit 0, 0x4250 bit 5): a
  string is precharging/closing (``join_in_progress``): keep the current steady (S3).

Each protocol is a DBC file in ``mbms/data/dbc`` (``pylon_lv.dbc``: cyclic 11-bit frames;
``pylon_hv.dbc``: the inverter polls 0x4200, the speaker answers), encoded with cantools; the
tables and their sources are cited in the DBC comments. A frame the inverter sends that is not a
request of the protocol is counted and dropped.
"""

from __future__ import annotations

import logging
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import can
import cantools

from mbms.config_views import InverterSection, PackFile
from mbms.errors import opening
from mbms.paths import dbc_file
from mbms.types import Measurement, NodeStatus, Phase

log = logging.getLogger("mbms.inverter")

#: Pylon HV request types (0x4200 byte 0; pylon_hv.dbc VAL_ table).
REQ_ENSEMBLE = 0
REQ_EQUIPMENT = 2
#: Pylon HV forbidden mark (0x4280; pylon_hv.dbc VAL_ table).
FORBIDDEN = 0xAA
#: Longest silence of a new speaker whose agreed limits are still 0 (see InverterGateway.update).
TAKEOVER_HOLD_S = 1.0
#: Protection rules and what the protocol flags call them (rust_core protection ``Rule::name``).
_OV, _UV = "cell_overvoltage", "cell_undervoltage"
_OT = ("overtemp_charge", "overtemp_discharge")
_UT = ("undertemp_charge", "undertemp_discharge")
_OCC, _OCD = "overcurrent_charge", "overcurrent_discharge"
_SENSOR = ("voltage_sensor", "temp_sensor", "current_sensor")


@dataclass(frozen=True)
class PackRatings:
    """What the frames need of the pack itself: series count, cell voltage window, capacity."""

    series: int
    v_max_v: float
    v_min_v: float
    capacity_ah: float

    @classmethod
    def of(cls, pack: PackFile) -> PackRatings:
        p = pack.engine["pack"]
        assert pack.cell_path is not None
        cell = tomllib.loads(Path(pack.cell_path).read_text())
        return cls(series=int(p["series"]), v_max_v=float(cell["v_max_v"]), v_min_v=float(cell["v_min_v"]),
                   capacity_ah=float(cell["capacity_ah"]) * int(p["parallel"]))


@dataclass
class BatteryView:
    """What the inverter is told, in SI units (current: discharge positive, as mbms counts)."""

    ccl_a: float = 0.0
    dcl_a: float = 0.0
    cvl_v: float = 0.0
    dvl_v: float = 0.0
    soc: float = 0.0
    soh: float = 1.0
    v_v: float = 0.0
    i_a: float = 0.0
    t_c: float = 25.0
    cell_v_max: float = 0.0
    cell_v_min: float = 0.0
    cell_v_max_no: int = 0
    cell_v_min_no: int = 0
    t_max_c: float = 25.0
    t_min_c: float = 25.0
    protection: set[str] = field(default_factory=set)
    alarm: set[str] = field(default_factory=set)
    charge_enable: bool = False
    discharge_enable: bool = False
    force_charge: bool = False
    hold: bool = False
    n_closed: int = 0


def battery_view(status: NodeStatus | None, meas: Measurement | None, ratings: PackRatings, cfg: InverterSection,
                 join_in_progress: bool = False, soh: float | None = None, stop: bool = False,
                 peer_soc: dict[int, float] | None = None) -> BatteryView:
    """The frames' content from the speaker's view. ``stop``: the sender has lost its quorum
    (limits 0, enables off). ``peer_soc``: other members' SOC (0..1) from their telemetry; the
    system SOC is the mean over the closed strings (all members have the same rating: the
    capacity-weighted mean of identical packs), this node's own SOC where a peer is not heard."""
    v = BatteryView()
    v.cvl_v = ratings.series * (ratings.v_max_v - cfg.cvl_margin_v_per_cell)
    v.dvl_v = ratings.series * (ratings.v_min_v + cfg.dvl_margin_v_per_cell)
    if soh is not None and math.isfinite(soh):
        v.soh = min(max(soh, 0.0), 1.0)
    if meas is not None:
        v.v_v = float(meas.v_bus_v)
        v.i_a = float(meas.i_a)
        if len(meas.v_cell_v):
            import numpy as np

            cells = np.asarray(meas.v_cell_v, dtype=float)
            v.cell_v_max_no, v.cell_v_min_no = int(np.argmax(cells)) + 1, int(np.argmin(cells)) + 1
            v.cell_v_max, v.cell_v_min = float(cells.max()), float(cells.min())
        if len(meas.t_cell_c):
            v.t_max_c, v.t_min_c = float(max(meas.t_cell_c)), float(min(meas.t_cell_c))
            v.t_c = v.t_max_c
    if status is None:
        return v
    v.soc = min(max(float(status.soc), 0.0), 1.0)
    if peer_soc and status.closed_set:
        socs = [float(status.soc) if k == status.node_id else peer_soc.get(k, float(status.soc))
                for k in status.closed_set]
        v.soc = min(max(sum(socs) / len(socs), 0.0), 1.0)
    for f in status.faults:  # mbms.types.Fault: the core's rule and level names
        (v.alarm if f.level == "warning" else v.protection).add(f.rule)
    v.n_closed = len(status.closed_set)
    ready = not stop and status.speaker is not None and v.n_closed > 0
    if ready:
        v.dcl_a = max(0.0, float(status.sys_dcl_a))
        v.ccl_a = max(0.0, float(status.sys_ccl_a))
    v.charge_enable = ready and v.ccl_a > 0.0
    v.discharge_enable = ready and v.dcl_a > 0.0
    v.force_charge = ready and v.soc < cfg.force_charge_soc
    v.hold = ready and join_in_progress
    return v


class ProtocolCodec:
    """The battery side of one protocol: frames from a :class:`BatteryView`, with the DBC."""

    def __init__(self, protocol: str, manufacturer: str = "MBMS") -> None:
        self.protocol = protocol
        # a CAN database read as load_file reads a .dbc (strict, cp1252), typed as one
        self.db = cantools.database.can.Database()
        self.db.add_dbc_file(dbc_file(f"{protocol}.dbc"))
        self.name = manufacturer.encode("ascii")[:8].ljust(8, b" ")
        self.cyclic = protocol == "pylon_lv"

    def _msg(self, name: str, values: dict[str, Any]) -> can.Message:
        m = self.db.get_message_by_name(name)
        return can.Message(arbitration_id=m.frame_id, is_extended_id=m.is_extended_frame,
                           data=m.encode(values, scaling=True, strict=True))

    def frames(self, v: BatteryView) -> list[can.Message]:
        """The cyclic frames (LV); the HV protocol sends only :meth:`answer`."""
        if not self.cyclic:
            return []
        p, a = v.protection, v.alarm
        return [
            self._msg("BMS_LIMITS", {"ChargeVoltageLimit": round(v.cvl_v, 1), "ChargeCurrentLimit": _floor01(v.ccl_a),
                                     "DischargeCurrentLimit": _floor01(v.dcl_a), "DischargeVoltageLimit": round(v.dvl_v, 1)}),
            self._msg("BMS_SOC_SOH", {"Soc": round(v.soc * 100), "Soh": round(v.soh * 100),
                                      "SocHighRes": round(v.soc * 100, 2)}),
            self._msg("BMS_MEASUREMENTS", {"BatteryVoltage": _clamp(round(v.v_v, 2), -327.68, 327.67),
                                           "BatteryCurrent": round(-v.i_a, 1), "BatteryTemperature": round(v.t_c, 1)}),
            self._msg("BMS_PROTECTION_ALARM", {
                "ProtCellOverVoltage": _OV in p, "ProtCellUnderVoltage": _UV in p,
                "ProtCellOverTemperature": any(r in p for r in _OT), "ProtCellUnderTemperature": any(r in p for r in _UT),
                "ProtDischargeOverCurrent": _OCD in p, "ProtChargeOverCurrent": _OCC in p,
                "ProtSystemError": any(r in p for r in _SENSOR),
                "AlarmCellHighVoltage": _OV in a, "AlarmCellLowVoltage": _UV in a,
                "AlarmCellHighTemperature": any(r in a for r in _OT), "AlarmCellLowTemperature": any(r in a for r in _UT),
                "AlarmDischargeHighCurrent": _OCD in a, "AlarmChargeHighCurrent": _OCC in a,
                "AlarmInternalCommFail": False, "ModuleCount": min(v.n_closed, 255), "Marker": 0x4E50}),
            self._msg("BMS_REQUEST_FLAGS", {"ChargeEnable": v.charge_enable, "DischargeEnable": v.discharge_enable,
                                            "ForceChargeRequestI": v.force_charge, "ForceChargeRequestII": False,
                                            "FullChargeRequest": False, "HoldCurrent": v.hold}),
            self._msg("BMS_NAME", {f"Name{k}": b for k, b in enumerate(self.name)}),
        ]

    def answer(self, req: can.Message, v: BatteryView) -> list[can.Message] | None:
        """The HV answer to an inverter request; None if ``req`` is no request of the protocol."""
        if self.cyclic:
            return None
        m = self.db.get_message_by_name("INV_REQUEST")
        if not req.is_extended_id or req.arbitration_id != m.frame_id or len(req.data) < 1:
            return None
        kind = req.data[0]
        p, a = v.protection, v.alarm
        if kind == REQ_EQUIPMENT:
            return [
                self._msg("BMS_VERSION", {"HardwareVersion": 1, "HardwareVersionMajor": 1, "HardwareVersionMinor": 0,
                                          "SoftwareVersionMajor": 0, "SoftwareVersionMinor": 1}),
                self._msg("BMS_MODULES", {"SeriesCells": self._ratings_series, "ModulesInSeries": 1,
                                          "CellsPerModule": min(self._ratings_series, 255),
                                          "VoltageLevel": round(v.cvl_v), "CapacityAh": round(self._capacity_ah)}),
            ]
        if kind != REQ_ENSEMBLE:
            return None
        status = 1 if v.i_a < -0.5 else 2 if v.i_a > 0.5 else 3
        return [
            self._msg("BMS_ENSEMBLE", {"TotalVoltage": round(v.v_v, 1), "TotalCurrent": round(-v.i_a, 1),
                                       "Temperature": round(v.t_c, 1), "Soc": round(v.soc * 100), "Soh": round(v.soh * 100)}),
            self._msg("BMS_LIMITS", {"ChargeCutoffVoltage": round(v.cvl_v, 1), "DischargeCutoffVoltage": round(v.dvl_v, 1),
                                     "MaxChargeCurrent": _floor01(v.ccl_a), "MaxDischargeCurrent": -_floor01(v.dcl_a)}),
            self._msg("BMS_CELL_VOLTAGE", {"MaxCellVoltage": round(v.cell_v_max, 3), "MinCellVoltage": round(v.cell_v_min, 3),
                                           "MaxCellVoltageNo": v.cell_v_max_no, "MinCellVoltageNo": v.cell_v_min_no}),
            self._msg("BMS_CELL_TEMPERATURE", {"MaxCellTemperature": round(v.t_max_c, 1), "MinCellTemperature": round(v.t_min_c, 1),
                                               "MaxCellTemperatureNo": 0, "MinCellTemperatureNo": 0}),
            self._msg("BMS_STATUS", {
                "BasicStatus": status, "ForceChargeRequest": v.force_charge, "BalanceChargeRequest": False,
                "HoldCurrent": v.hold, "CyclePeriod": 0,
                "ErrorVoltageSensor": "voltage_sensor" in p, "ErrorTemperatureSensor": "temp_sensor" in p,
                "ErrorInternalComm": False, "ErrorInputOverVoltage": False, "ErrorInputReversal": False,
                "ErrorRelay": False, "ErrorDamage": False, "ErrorOther": "current_sensor" in p,
                "AlarmCellLowVoltage": _UV in a, "AlarmCellHighVoltage": _OV in a,
                "AlarmChargeCellLowTemp": "undertemp_charge" in a, "AlarmChargeCellHighTemp": "overtemp_charge" in a,
                "AlarmDischargeCellLowTemp": "undertemp_discharge" in a, "AlarmDischargeCellHighTemp": "overtemp_discharge" in a,
                "AlarmChargeOverCurrent": _OCC in a, "AlarmDischargeOverCurrent": _OCD in a,
                "ProtCellLowVoltage": _UV in p, "ProtCellHighVoltage": _OV in p,
                "ProtChargeCellLowTemp": "undertemp_charge" in p, "ProtChargeCellHighTemp": "overtemp_charge" in p,
                "ProtDischargeCellLowTemp": "undertemp_discharge" in p, "ProtDischargeCellHighTemp": "overtemp_discharge" in p,
                "ProtChargeOverCurrent": _OCC in p, "ProtDischargeOverCurrent": _OCD in p}),
            self._msg("BMS_FORBIDDEN", {"ChargeForbidden": 0 if v.charge_enable else FORBIDDEN,
                                        "DischargeForbidden": 0 if v.discharge_enable else FORBIDDEN}),
        ]

    _ratings_series = 0
    _capacity_ah = 0.0

    def set_ratings(self, r: PackRatings, n_members: int) -> None:
        self._ratings_series = r.series
        self._capacity_ah = r.capacity_ah * n_members


def _merge_extremes(v: BatteryView, peers: list[Any]) -> None:
    """Cell voltage and temperature extremes over the whole battery: this pack's and the
    heard peers' (their telemetry); the cell numbers stay this pack's when it holds the extreme,
    else 0 (unknown)."""
    for s in peers:
        if math.isfinite(s.v_cell_max) and (v.cell_v_max == 0.0 or s.v_cell_max > v.cell_v_max):
            v.cell_v_max, v.cell_v_max_no = s.v_cell_max, 0
        if math.isfinite(s.v_cell_min) and (v.cell_v_min == 0.0 or s.v_cell_min < v.cell_v_min):
            v.cell_v_min, v.cell_v_min_no = s.v_cell_min, 0
        if math.isfinite(s.t_max_c) and s.t_max_c > v.t_max_c:
            v.t_max_c = v.t_c = s.t_max_c
        if math.isfinite(s.t_min_c) and s.t_min_c < v.t_min_c:
            v.t_min_c = s.t_min_c


def _floor01(x: float) -> float:
    """A limit to the 0.1 A of the wire, rounded down (never more than agreed)."""
    return max(0.0, math.floor(x * 10 + 1e-9) / 10)


def _clamp(x: float, lo: float, hi: float) -> float:
    return min(max(x, lo), hi)


class InverterGateway:
    """Sends the protocol's frames while this node is the speaker (see the module docstring).

    ``update`` is called by the node runtime once per control period (sans clocks of its own:
    ``now`` is the runtime's clock in s)."""

    def __init__(self, cfg: InverterSection, node_id: int, ratings: PackRatings, n_members: int,
                 bus: can.BusABC | None = None, peers: Any = None) -> None:
        self.cfg = cfg
        self.node_id = node_id
        self.ratings = ratings
        self.codec = ProtocolCodec(cfg.protocol, cfg.manufacturer)
        self.codec.set_ratings(ratings, n_members)
        self.bus = bus
        #: The peers' telemetry (mbms.gateways.peer_telemetry.TelemetryView), for the system SOC.
        self.peers = peers
        self.speaking = False
        self._next_s = -math.inf
        self._stop_left = 0
        self._last_sent: tuple[float, float, bool] | None = None
        self._takeover_s = -math.inf
        self.takeover_holds = 0
        self.frames_sent = 0
        self.send_errors = 0
        self.requests = 0
        self.dropped = 0
        self.handovers = 0

    async def start(self) -> None:
        if self.bus is None:
            from mbms.transport.can import open_bus

            with opening(f"inverter CAN {self.cfg.can.interface}:{self.cfg.can.channel}"):
                self.bus = open_bus(self.cfg.can, receive_own_messages=False)

    def update(self, now: float, status: NodeStatus | None, meas: Measurement | None, join_in_progress: bool = False,
               soh: float | None = None) -> None:
        speaker = status is not None and status.speaker == self.node_id and status.phase not in (
            Phase.FAIL_SAFE, Phase.LISTENING)
        if speaker and not self.speaking:
            self.handovers += 1
            self._next_s = now  # send at once: the handover gap is the detection time only
            self._takeover_s = now
            log.info("node %d is the inverter speaker now", self.node_id)
        elif self.speaking and not speaker:
            # lost the speaker role: if nobody has a quorum (we do not either), say "stop"
            lost_quorum = status is None or status.speaker is None
            self._stop_left = self.cfg.stop_frames if lost_quorum else 0
        self.speaking = speaker
        stop = not speaker and self._stop_left > 0
        # A node that has just finished listening (a restart) is named speaker at once, but its
        # own agreed limits start at 0 and rise one agreement round later (S5: a rise only once
        # agreed). Sending those would be a spurious zero: with strings closed and limits not
        # yet agreed it stays silent for at most TAKEOVER_HOLD_S (the inverter keeps the last
        # frames of the previous speaker, well inside its timeout), then sends what it has.
        unsettled = (speaker and status is not None and bool(status.closed_set)
                     and status.sys_dcl_a <= 0.0 and status.sys_ccl_a <= 0.0
                     and now - self._takeover_s < min(TAKEOVER_HOLD_S, self.cfg.timeout_ms / 4000))
        if unsettled:
            self.takeover_holds += 1
        if not (speaker or stop) or unsettled:
            if not self.codec.cyclic:
                self._drain(None)  # requests are for the speaker; keep the socket empty
            return
        peer_soc = None
        heard = []
        if self.peers is not None:
            heard = [s for s in self.peers.strings() if s.heard and s.node_id != self.node_id]
            peer_soc = {s.node_id: s.soc_pct / 100 for s in heard if math.isfinite(s.soc_pct)}
        view = battery_view(status, meas, self.ratings, self.cfg, join_in_progress, soh, stop=stop, peer_soc=peer_soc)
        _merge_extremes(view, heard)
        if self.codec.cyclic:
            # a limit that drops is sent at once (S5: a drop shows at once), not a cycle later;
            # small drifts wait for the cycle (bus load). So is a join's hold request: a join
            # (precharge, dwell, main close) takes a few hundred ms, a cycle is 1 s, and a hold
            # heard after the main contact closed does not keep the bus still (brief S3).
            last = self._last_sent
            drop = last is not None and (view.dcl_a < last[0] - max(1.0, 0.02 * last[0])
                                         or view.ccl_a < last[1] - max(1.0, 0.02 * last[1]))
            hold_rise = view.hold and not (last is not None and last[2])
            if now >= self._next_s or drop or hold_rise:
                self._next_s = max(self._next_s + self.cfg.cycle_ms / 1000, now)
                if stop:
                    self._stop_left -= 1
                self._last_sent = (view.dcl_a, view.ccl_a, view.hold)
                self._send(self.codec.frames(view))
        else:
            self._drain(view if speaker or stop else None)

    def _drain(self, view: BatteryView | None) -> None:
        """Answer (HV) the inverter's requests received since the last period; others count."""
        if self.bus is None:
            return
        for _ in range(64):  # bounded per period
            try:
                msg = self.bus.recv(0.0)
            except can.CanError:
                self.dropped += 1
                continue
            if msg is None:
                return
            if view is None:
                continue
            out = self.codec.answer(msg, view)
            if out is None:
                self.dropped += 1
                continue
            self.requests += 1
            if self._stop_left > 0 and not self.speaking:
                self._stop_left -= 1
            self._send(out)

    def _send(self, frames: list[can.Message]) -> None:
        assert self.bus is not None
        for f in frames:
            try:
                self.bus.send(f)
                self.frames_sent += 1
            except (can.CanError, OSError, ValueError) as exc:
                self.send_errors += 1
                log.warning("inverter frame 0x%X not sent: %s", f.arbitration_id, exc)

    def counters(self) -> dict[str, int]:
        return {"frames_sent": self.frames_sent, "send_errors": self.send_errors, "requests": self.requests,
                "dropped": self.dropped, "handovers": self.handovers, "takeover_holds": self.takeover_holds}

    def close(self) -> None:
        if self.bus is not None:
            try:
                self.bus.shutdown()
            except Exception:  # closing on the way out; nothing left to protect
                log.debug("inverter bus shutdown failed", exc_info=True)
            self.bus = None
