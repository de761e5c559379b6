"""An emulated Isabellenhütte IVT-S on a python-can bus: result frames, configuration commands
and responses byte for byte as in :mod:`mbms.hardware.ivt_s` (from the IVT-S datasheet).

Values come from a source callable (the plant: string current, string voltage inside the
contactors, bus voltage outside, a third voltage, temperature). Faults: ``silent`` (no frames),
``stuck`` (the last frames repeated, counter frozen), ``error`` (system-error bit set).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import can

from mbms.hardware import ivt_s as P


class IvtSEmulator:
    """``source()`` returns (i_a, u1_v, u2_v, u3_v, t_c); :meth:`tick` sends what is due."""

    def __init__(self, bus: can.BusABC, source: Callable[[], tuple[float, float, float, float, float]],
                 current_sign: float = 1.0) -> None:
        self.bus = bus
        self.source = source
        self.sign = current_sign
        # power-on defaults: I, U1-U3, T cyclic every 100 ms until configured (datasheet defaults
        # differ by variant; the driver sets every cycle explicitly)
        self.trigger = [P.TRIGGER_CYCLIC] * 8
        self.cycle_ms = [100] * 8
        self.running = True
        self.counters = [0] * 8
        self.last_sent = [float("-inf")] * 8
        self.last_frames: list[bytes | None] = [None] * 8
        self.as_ = 0.0
        self.wh = 0.0
        self.t_last: float | None = None
        self.faults: dict[str, Any] = {}
        self.commands = 0
        self.malformed = 0

    def inject(self, kind: str, **kw: Any) -> None:
        if kind == "clear":
            self.faults.clear()
        elif kind in ("silent", "stuck", "error"):
            self.faults[kind] = kw
        else:
            raise ValueError(f"unknown IVT-S fault {kind!r}")

    def on_message(self, msg: can.Message) -> bool:
        if msg.arbitration_id != P.CMD_ID or len(msg.data) < 1:
            return False
        if "silent" in self.faults:
            return True
        d = bytes(msg.data)
        if len(d) != 8:
            # the IVT-S takes 8-byte commands only (the driver pads them); a shorter one raised
            # IndexError here (found by tests/test_fuzz_decoders.py): ignored and counted
            self.malformed += 1
            return True
        cmd = d[0]
        self.commands += 1
        if P.SET_CONFIG <= cmd < P.SET_CONFIG + 8:
            if self.running:  # configuration only in stop mode: no response
                return True
            n = cmd - P.SET_CONFIG
            self.trigger[n] = d[1]
            self.cycle_ms[n] = max(1, d[2] << 8 | d[3])
        elif cmd == P.SET_MODE:
            self.running = d[1] == 1
        elif cmd == P.RESTART:
            self.running = True
        else:
            return True
        self.bus.send(can.Message(arbitration_id=P.RESPONSE_ID, data=bytes([0x80 | cmd]) + d[1:8],
                                  is_extended_id=False))
        return True

    def tick(self, now: float) -> None:
        if "silent" in self.faults or not self.running:
            return
        i, u1, u2, u3, t = self.source()
        if self.t_last is not None:
            dt = now - self.t_last
            self.as_ += i * dt
            self.wh += i * u1 * dt / 3600.0
        self.t_last = now
        vals = (self.sign * i, u1, u2, u3, t, i * u1, self.as_, self.wh)
        state = P.STATE_SYSTEM_ERROR if "error" in self.faults else 0
        for n in range(8):
            if self.trigger[n] != P.TRIGGER_CYCLIC or now - self.last_sent[n] < self.cycle_ms[n] / 1000.0 * 0.999:
                continue
            self.last_sent[n] = now
            if "stuck" in self.faults and self.last_frames[n] is not None:
                data = self.last_frames[n]
            else:
                raw = int(round(vals[n] / P.SCALE[n]))
                raw = max(-(1 << 31), min((1 << 31) - 1, raw))
                data = P.result_frame(n, self.counters[n], state, raw)
                self.counters[n] = (self.counters[n] + 1) & 0xF
                self.last_frames[n] = data
            self.bus.send(can.Message(arbitration_id=P.RESULT_BASE_ID + n, data=data, is_extended_id=False))
