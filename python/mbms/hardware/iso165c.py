"""Driver of the Bender iso165C insulation monitor on CAN (python-can).

From the iso165C manual (D00154, section 6 "CAN interface"; identifiers 11 bit):

* ``IMD_Info`` 0x37 (DLC 6, cyclic, device -> host): three little-endian 16-bit words: D_IMC_R_ISO
  (insulation resistance, kΩ), D_IMC_STATUS (bit 0 insulation fault, 1 chassis fault, 2 system
  failure, 3 calibration running, 4 self test running, 5 insulation warning), D_VIFC_STATUS
  (bit 0 insulation measurement deactivated, bit 8 resistance value outdated).
* ``IMD_Request`` 0x22 (host -> device): byte 0 the command, then data words little endian from
  byte 1. ``0x28`` set the error threshold (kΩ), ``0x29`` the warning threshold, ``0xCB`` measurement
  on (1) / off (0). ``IMD_Response`` 0x23: byte 0 the command echoed, data as in the request.

What the node trusts: an IMD_Info younger than ``timeout_ms`` with no system failure, measurement
active, a value not outdated; then an insulation fault bit, or a resistance below the configured
minimum, is an insulation fault. Anything else is a :class:`DeviceFault` too (silent or failed
monitor = the insulation is unknown: the pack does not stay on the bus on an unknown insulation).
"""

from __future__ import annotations

import dataclasses
import queue
import struct
import threading
import time
from collections.abc import Callable

import can

from mbms.hardware.base import DeviceFault

INFO_ID, REQUEST_ID, RESPONSE_ID = 0x37, 0x22, 0x23
SET_ERR_THR, SET_WRN_THR, CTL_MEASUREMENT = 0x28, 0x29, 0xCB
IMC_INSULATION_FAULT, IMC_CHASSIS_FAULT, IMC_SYSTEM_FAILURE = 0x01, 0x02, 0x04
IMC_INSULATION_WARNING = 0x20
VIFC_MEASUREMENT_OFF, VIFC_R_OUTDATED = 0x0001, 0x0100


def info_frame(r_iso_kohm: int, imc_status: int, vifc_status: int) -> bytes:
    return struct.pack("<HHH", min(0xFFFF, max(0, r_iso_kohm)), imc_status, vifc_status)


def request_frame(cmd: int, *words: int) -> bytes:
    return bytes([cmd]) + b"".join(struct.pack("<H", w) for w in words)


@dataclasses.dataclass(frozen=True)
class ImdReading:
    r_iso_kohm: float
    warning: bool


class Iso165c:
    #: Responses kept for :meth:`configure` (one request at a time): a flood of the response id
    #: must not grow memory (issue 15 item 5); beyond this they are dropped and counted.
    MAX_RESPONSES = 16

    def __init__(self, bus: can.BusABC, min_kohm: float, warning_kohm: float, timeout_ms: int = 3000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.bus = bus
        self.min_kohm = min_kohm
        self.warning_kohm = warning_kohm
        self.timeout_s = timeout_ms / 1000.0
        self.clock = clock
        self.responses: queue.Queue[bytes] = queue.Queue(maxsize=self.MAX_RESPONSES)
        self.info: tuple[int, int, int] | None = None
        self.t_info = float("-inf")
        self.malformed = 0
        self._lock = threading.Lock()

    def _request(self, cmd: int, *words: int, timeout_s: float = 0.5) -> bytes:
        self.bus.send(can.Message(arbitration_id=REQUEST_ID, data=request_frame(cmd, *words), is_extended_id=False))
        end = self.clock() + timeout_s
        while (left := end - self.clock()) > 0:
            try:
                r = self.responses.get(timeout=left)
            except queue.Empty:
                break
            if r[:1] == bytes([cmd]):
                return r
        raise DeviceFault("insulation_monitor_timeout", f"iso165C: no response to command 0x{cmd:02X}")

    def configure(self) -> None:
        """Thresholds into the device (its own fault bit then agrees with ours), measurement on."""
        self._request(SET_ERR_THR, int(self.min_kohm))
        self._request(SET_WRN_THR, int(self.warning_kohm))
        self._request(CTL_MEASUREMENT, 1)

    def on_message(self, msg: can.Message) -> bool:
        if msg.arbitration_id == RESPONSE_ID:
            try:
                self.responses.put_nowait(bytes(msg.data))
            except queue.Full:  # nobody is configuring: an unasked-for response
                self.malformed += 1
            return True
        if msg.arbitration_id != INFO_ID:
            return False
        if len(msg.data) != 6:
            self.malformed += 1
            return True
        with self._lock:
            self.info = struct.unpack("<HHH", bytes(msg.data))
            self.t_info = self.clock()
        return True

    def reading(self, now: float) -> ImdReading:
        with self._lock:
            info, t = self.info, self.t_info
        if info is None or now - t > self.timeout_s:
            age = "never" if info is None else f"{(now - t) * 1e3:.0f} ms ago"
            raise DeviceFault("insulation_monitor_timeout", f"iso165C silent: last IMD_Info {age} (timeout {self.timeout_s * 1e3:.0f} ms)")
        r, imc, vifc = info
        if imc & IMC_SYSTEM_FAILURE:
            raise DeviceFault("insulation_monitor_error", f"iso165C system failure (D_IMC_STATUS 0x{imc:04X})")
        if vifc & (VIFC_MEASUREMENT_OFF | VIFC_R_OUTDATED):
            raise DeviceFault("insulation_monitor_error", f"iso165C value not current (D_VIFC_STATUS 0x{vifc:04X})")
        if imc & IMC_INSULATION_FAULT or r < self.min_kohm:
            raise DeviceFault("insulation_fault", f"insulation fault: R_iso = {r} kΩ (minimum {self.min_kohm:.0f} kΩ)")
        return ImdReading(float(r), bool(imc & IMC_INSULATION_WARNING) or r < self.warning_kohm)
