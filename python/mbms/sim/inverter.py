"""A simulated inverter that obeys the battery's CAN protocol.

It knows the battery only through the frames on the inverter CAN channel, decoded with cantools
from the DBC shipped for the protocol (``mbms/data/dbc/<protocol>.dbc``; not through the
encoder in :mod:`mbms.gateways.inverter_can`). What it does with them, as a grid inverter does:

* ``pylon_hv``: it polls the battery (0x4200, request type 0 every ``poll_s``; type 2, the
  equipment information, once at start and while it has no answer);
* it draws the current a request profile asks for, clipped to the last limits heard
  (discharge to DCL, charge to CCL), and only while the battery enables that direction;
* a limit that drops applies at once; a rise is followed at ``ramp_a_per_s``;
* protection flags, disabled directions, and silence longer than ``timeout_s`` (the inverter's
  communication timeout) stop it (0 A);
* while the battery says a string is joining (``HoldCurrent``, brief S3) it keeps its current;
  after start-up it waits ``ready_quiet_s`` of enabled, non-holding frames before it draws.

It records what a user of the link wants to know: the longest pause between two limit frames
(a speaker handover must stay inside ``timeout_s``), how often it timed out, frames per id and
the bus load they make.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import can
import cantools

from mbms.paths import dbc_file

#: The frames that carry the limits, per protocol (DBC message names).
LIMIT_FRAME = {"pylon_lv": "BMS_LIMITS", "pylon_hv": "BMS_LIMITS"}


def frame_bits(dlc: int, extended: bool) -> int:
    """Bits of a classic CAN data frame on the wire, with the worst-case stuff bits (Davis,
    Burns, Bril, Lukkien: "Controller Area Network (CAN) schedulability analysis: refuted,
    revisited and revised", Real-Time Systems 35, 2007, eq. (1): g = 34 (11-bit) / 54 (29-bit)
    bits exposed to stuffing, 8·dlc + g + 13 + floor((g + 8·dlc − 1)/4))."""
    g = 54 if extended else 34
    return 8 * dlc + g + 13 + (g + 8 * dlc - 1) // 4


@dataclass
class HeardLimits:
    t_s: float = -math.inf
    dcl_a: float = 0.0
    ccl_a: float = 0.0
    charge_enable: bool = False
    discharge_enable: bool = False
    protection: bool = False
    hold: bool = False
    soc_pct: float = math.nan


@dataclass
class InverterStats:
    frames: dict[int, int] = field(default_factory=dict)
    bits: int = 0
    bad_frames: int = 0
    limit_frames: int = 0
    max_gap_s: float = 0.0
    timeouts: int = 0
    requests_sent: int = 0
    first_s: float | None = None
    last_s: float | None = None

    def bus_load(self, bitrate: int) -> float:
        """Mean share of the bus the battery's frames took between the first and last one."""
        if self.first_s is None or self.last_s is None or self.last_s <= self.first_s:
            return math.nan
        return self.bits / (bitrate * (self.last_s - self.first_s))


class SimInverter:
    def __init__(self, protocol: str, bus: can.BusABC, timeout_s: float, *, poll_s: float = 1.0,
                 ramp_a_per_s: float = 50.0, ready_quiet_s: float = 2.0) -> None:
        self.protocol = protocol
        # a CAN database read as load_file reads a .dbc (strict, cp1252), typed as one
        self.db = cantools.database.can.Database()
        self.db.add_dbc_file(dbc_file(f"{protocol}.dbc"))
        self.bus = bus
        self.timeout_s = timeout_s
        self.poll_s = poll_s
        self.ramp_a_per_s = ramp_a_per_s
        self.ready_quiet_s = ready_quiet_s
        self.heard = HeardLimits()
        self.stats = InverterStats()
        self.equipment: dict[str, Any] = {}
        self.current_a = 0.0
        self._limit_id = self.db.get_message_by_name(LIMIT_FRAME[protocol]).frame_id
        self._next_poll = -math.inf
        self._quiet_since: float | None = None
        self._timed_out = True
        self._last_t: float | None = None
        self.polling = protocol == "pylon_hv"
        #: (t, dcl, ccl) of every limit frame heard, for the checks of a run
        self.history: list[tuple[float, float, float]] = []

    # ---------------------------------------------------------------- the link
    def poll(self, now: float) -> None:
        """HV: ask the battery (0x4200) once per ``poll_s``."""
        if not self.polling or now < self._next_poll:
            return
        self._next_poll = now + self.poll_s
        req = self.db.get_message_by_name("INV_REQUEST")
        kinds = [0] if self.equipment else [2, 0]
        for k in kinds:
            try:
                self.bus.send(can.Message(arbitration_id=req.frame_id, is_extended_id=True,
                                          data=req.encode({"RequestType": k})))
                self.stats.requests_sent += 1
            except (can.CanError, OSError):
                pass  # asked again next poll

    def receive(self, now: float) -> None:
        """Take every frame that arrived; decode with the DBC; anything else is counted."""
        while True:
            try:
                msg = self.bus.recv(0.0)
            except can.CanError:
                self.stats.bad_frames += 1
                continue
            if msg is None:
                break
            self._frame(now, msg)
        if now - self.heard.t_s > self.timeout_s and not self._timed_out:
            self._timed_out = True
            self.stats.timeouts += 1

    def _frame(self, now: float, msg: can.Message) -> None:
        try:
            m = self.db.get_message_by_frame_id(msg.arbitration_id)
        except KeyError:
            self.stats.bad_frames += 1
            return
        if m.senders and "INVERTER" in m.senders:
            return  # our own request (udp_multicast delivers it back)
        try:
            decoded = m.decode(bytes(msg.data), decode_choices=False)
        except Exception:  # cantools raises several types for a short or bad frame
            self.stats.bad_frames += 1
            return
        if not isinstance(decoded, dict):  # a container frame (none in these DBCs) decodes to a list
            self.stats.bad_frames += 1
            return
        # decode_choices=False: every signal is a number
        d = {k: v for k, v in decoded.items() if isinstance(v, (int, float))}
        s = self.stats
        s.frames[msg.arbitration_id] = s.frames.get(msg.arbitration_id, 0) + 1
        s.bits += frame_bits(len(msg.data), msg.is_extended_id)
        s.first_s = now if s.first_s is None else s.first_s
        s.last_s = now
        h = self.heard
        name = m.name
        if self.protocol == "pylon_lv":
            if name == "BMS_LIMITS":
                self._limits(now, float(d["DischargeCurrentLimit"]), float(d["ChargeCurrentLimit"]))
            elif name == "BMS_REQUEST_FLAGS":
                h.charge_enable, h.discharge_enable = bool(d["ChargeEnable"]), bool(d["DischargeEnable"])
                h.hold = bool(d["HoldCurrent"])
            elif name == "BMS_PROTECTION_ALARM":
                h.protection = any(v for k, v in d.items() if k.startswith("Prot"))
            elif name == "BMS_SOC_SOH":
                h.soc_pct = float(d["SocHighRes"])
        else:
            if name == "BMS_LIMITS":
                self._limits(now, -float(d["MaxDischargeCurrent"]), float(d["MaxChargeCurrent"]))
            elif name == "BMS_FORBIDDEN":
                h.charge_enable = int(d["ChargeForbidden"]) != 0xAA
                h.discharge_enable = int(d["DischargeForbidden"]) != 0xAA
            elif name == "BMS_STATUS":
                h.hold = bool(d["HoldCurrent"])
                h.protection = any(v for k, v in d.items() if k.startswith(("Prot", "Error")))
            elif name == "BMS_ENSEMBLE":
                h.soc_pct = float(d["Soc"])
            elif name in ("BMS_VERSION", "BMS_MODULES"):
                self.equipment.update(d)

    def _limits(self, now: float, dcl: float, ccl: float) -> None:
        h = self.heard
        if h.t_s > -math.inf:
            self.stats.max_gap_s = max(self.stats.max_gap_s, now - h.t_s)
        h.t_s = now
        h.dcl_a, h.ccl_a = max(0.0, dcl), max(0.0, ccl)
        self._timed_out = False
        self.stats.limit_frames += 1
        self.history.append((now, h.dcl_a, h.ccl_a))

    # ------------------------------------------------------------- the current
    def current(self, now: float, request_a: float) -> float:
        """The current to draw now (discharge positive) for ``request_a``."""
        dt = 0.0 if self._last_t is None else max(0.0, now - self._last_t)
        self._last_t = now
        h = self.heard
        alive = not self._timed_out and now - h.t_s <= self.timeout_s
        enabled = alive and not h.protection and (h.charge_enable or h.discharge_enable)
        if not enabled:
            self._quiet_since = None
            self.current_a = 0.0
            return 0.0
        if self._quiet_since is None or (h.hold and now - self._quiet_since < self.ready_quiet_s):
            self._quiet_since = now  # (re)enabled, or a join during start-up: wait for quiet
        ready = now - self._quiet_since >= self.ready_quiet_s
        dcl = h.dcl_a if h.discharge_enable else 0.0
        ccl = h.ccl_a if h.charge_enable else 0.0
        if h.hold:
            target = self.current_a  # a string is joining: keep the current steady (S3)
        elif not ready:
            target = 0.0
        else:
            target = request_a
        target = min(max(target, -ccl), dcl)
        # a rise in magnitude follows at the ramp rate; a drop applies at once
        cur = self.current_a
        step = self.ramp_a_per_s * dt
        if abs(target) > abs(cur) and (target >= 0) == (cur >= 0):
            target = cur + max(-step, min(step, target - cur))
        elif (target > 0 > cur) or (target < 0 < cur):
            target = max(-step, min(step, target))  # through zero: from 0 at the ramp rate
        self.current_a = target
        return target
