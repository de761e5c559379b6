"""An emulated Bender iso165C on a python-can bus (frames of :mod:`mbms.hardware.iso165c`).

``source()`` returns the true insulation resistance in kΩ (the plant's, or a fault's). Faults:
``silent`` (no frames), ``insulation`` (the resistance drops to ``r_kohm``), ``failure`` (the
system-failure bit).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

import can

from mbms.hardware import iso165c as P


class Iso165cEmulator:
    def __init__(self, bus: can.BusABC, source: Callable[[], float], period_s: float = 0.1) -> None:
        self.bus = bus
        self.source = source
        self.period_s = period_s
        self.err_kohm = 100
        self.wrn_kohm = 200
        self.measuring = False  # the host switches measurement on (0xCB)
        self.last = float("-inf")
        self.faults: dict[str, Any] = {}

    def inject(self, kind: str, **kw: Any) -> None:
        if kind == "clear":
            self.faults.clear()
        elif kind in ("silent", "insulation", "failure"):
            self.faults[kind] = kw
        else:
            raise ValueError(f"unknown iso165C fault {kind!r}")

    def on_message(self, msg: can.Message) -> bool:
        if msg.arbitration_id != P.REQUEST_ID or not msg.data:
            return False
        if "silent" in self.faults:
            return True
        d = bytes(msg.data).ljust(5, b"\x00")
        cmd, w1 = d[0], struct.unpack("<H", d[1:3])[0]
        if cmd == P.SET_ERR_THR:
            self.err_kohm = w1
        elif cmd == P.SET_WRN_THR:
            self.wrn_kohm = w1
        elif cmd == P.CTL_MEASUREMENT:
            self.measuring = w1 == 1
        else:
            return True
        self.bus.send(can.Message(arbitration_id=P.RESPONSE_ID, data=d[:5], is_extended_id=False))
        return True

    def tick(self, now: float) -> None:
        if "silent" in self.faults or now - self.last < self.period_s:
            return
        self.last = now
        r = float(self.faults["insulation"].get("r_kohm", 20)) if "insulation" in self.faults else self.source()
        r_i = int(round(r))
        imc = 0
        if self.measuring and r_i < self.err_kohm:
            imc |= P.IMC_INSULATION_FAULT
        if self.measuring and r_i < self.wrn_kohm:
            imc |= P.IMC_INSULATION_WARNING
        if "failure" in self.faults:
            imc |= P.IMC_SYSTEM_FAILURE
        vifc = 0 if self.measuring else P.VIFC_MEASUREMENT_OFF
        self.bus.send(can.Message(arbitration_id=P.INFO_ID, data=P.info_frame(r_i, imc, vifc), is_extended_id=False))
