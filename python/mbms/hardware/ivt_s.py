"""Driver of the Isabellenhütte IVT-S current sensor on CAN (python-can).

From the IVT-S datasheet, section 8 "CAN protocol" (default identifiers, 11 bit, big endian):

* ``IVT_Msg_Command`` 0x411 (DLC 8, host -> sensor): byte 0 is the command/mux byte.
  ``0x20 + n`` SET CONFIG RESULT n: byte 1 trigger mode (0 disabled, 1 triggered, 2 cyclic),
  bytes 2-3 the cycle time in ms. ``0x34`` SET MODE: byte 1 = 1 run / 0 stop, byte 2 the mode
  after power-up. ``0x3F`` RESTART.
* ``IVT_Msg_Response`` 0x511 (DLC 8): byte 0 = the command byte with bit 7 set (``0xA0 + n``
  for SET CONFIG, ``0xB4`` for SET MODE, ``0xBF`` the alive message after a restart).
* ``IVT_Msg_Result_I``..``_Wh`` 0x521..0x528 (DLC 6): byte 0 the mux id (0 = I, 1-3 = U1-U3,
  4 = T, 5 = W, 6 = As, 7 = Wh), byte 1 high nibble a 4-bit message counter, low nibble the
  result state (bit 0 OCS, bit 1 this result out of range/error, bit 2 any result in error,
  bit 3 system error), bytes 2-5 the value, signed 32 bit: mA, mV, mV, mV, 0.1 °C, W, As, Wh.

Every result has its own timeout (its configured cycle × ``timeout_cycles``); a result whose
counter stops advancing is stuck. Either, or an error bit, makes the reading untrusted
(:class:`DeviceFault` ``current_sensor_*``): the node then opens (it never runs on a guess).
"""

from __future__ import annotations

import dataclasses
import queue
import struct
import threading
import time
from collections.abc import Callable
from typing import Any

import can

from mbms.hardware.base import DeviceFault

CMD_ID, RESPONSE_ID, RESULT_BASE_ID = 0x411, 0x511, 0x521
RESULTS = ("I", "U1", "U2", "U3", "T", "W", "As", "Wh")
#: scale of each result's raw integer to SI (A, V, V, V, °C, W, As, Wh)
SCALE = (1e-3, 1e-3, 1e-3, 1e-3, 0.1, 1.0, 1.0, 1.0)
SET_CONFIG, SET_MODE, RESTART = 0x20, 0x34, 0x3F
TRIGGER_DISABLED, TRIGGER_TRIGGERED, TRIGGER_CYCLIC = 0, 1, 2
STATE_OCS, STATE_THIS_ERROR, STATE_ANY_ERROR, STATE_SYSTEM_ERROR = 0x1, 0x2, 0x4, 0x8
#: repeats of one counter value that make a result "stuck" (the sensor sends it fresh each cycle)
STUCK_REPEATS = 3


def result_frame(mux: int, counter: int, state: int, raw: int) -> bytes:
    return bytes([mux, ((counter & 0xF) << 4) | (state & 0xF)]) + struct.pack(">i", raw)


def parse_result(arb_id: int, data: bytes) -> tuple[int, int, int, int]:
    """(mux, counter, state, raw); ValueError for a frame that is not a result."""
    if len(data) != 6 or not RESULT_BASE_ID <= arb_id < RESULT_BASE_ID + 8 or data[0] != arb_id - RESULT_BASE_ID:
        raise ValueError(f"not an IVT-S result frame: id 0x{arb_id:03X} {data.hex()}")
    return data[0], data[1] >> 4, data[1] & 0xF, struct.unpack(">i", bytes(data[2:6]))[0]


@dataclasses.dataclass
class _Result:
    value: float = float("nan")
    t: float = float("-inf")
    counter: int = -1
    repeats: int = 0
    state: int = 0


@dataclasses.dataclass(frozen=True)
class IvtReading:
    i_a: float
    u_v: tuple[float, float, float]
    t_c: float
    w: float
    as_: float
    wh: float


class IvtS:
    """The sensor's state as its frames arrive (:meth:`on_message`, from a python-can Notifier)."""

    #: Responses kept for :meth:`configure` (which waits for one at a time): a device or a
    #: fault flooding the response id must not grow memory (issue 15 item 5, found by
    #: tests/test_fuzz_decoders.py); beyond this they are dropped and counted as malformed.
    MAX_RESPONSES = 16

    def __init__(self, bus: can.BusABC, cycle_ms: int = 20, timeout_cycles: int = 5,
                 current_sign: float = 1.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.bus = bus
        self.cycle_ms = cycle_ms
        self.timeout_s = cycle_ms * timeout_cycles / 1000.0
        self.sign = current_sign
        self.clock = clock
        self.results = [_Result() for _ in RESULTS]
        self.responses: queue.Queue[bytes] = queue.Queue(maxsize=self.MAX_RESPONSES)
        self.malformed = 0
        self.frames = 0
        self._lock = threading.Lock()
        # I, U1..U3 every cycle; T, W, As, Wh five times slower (they change slowly)
        self.cycles_ms = [cycle_ms] * 4 + [cycle_ms * 5] * 4

    # ------------------------------------------------------------------ configuration
    def _command(self, data: bytes, expect: int, timeout_s: float) -> bytes:
        self.bus.send(can.Message(arbitration_id=CMD_ID, data=data.ljust(8, b"\x00"), is_extended_id=False))
        end = self.clock() + timeout_s
        while True:
            left = end - self.clock()
            if left <= 0:
                raise DeviceFault("current_sensor_timeout", f"IVT-S: no response 0x{expect:02X} to command {data.hex()}")
            try:
                r = self.responses.get(timeout=left)
            except queue.Empty:
                continue
            if r[0] == expect:
                return r

    def configure(self, timeout_s: float = 0.5) -> None:
        """Stop, set every result cyclic at its cycle time, run (the datasheet's order: the
        configuration is only accepted in stop mode)."""
        self._command(bytes([SET_MODE, 0, 1]), 0x80 | SET_MODE, timeout_s)
        for n, cyc in enumerate(self.cycles_ms):
            self._command(bytes([SET_CONFIG + n, TRIGGER_CYCLIC, cyc >> 8, cyc & 0xFF]), 0x80 | (SET_CONFIG + n), timeout_s)
        self._command(bytes([SET_MODE, 1, 1]), 0x80 | SET_MODE, timeout_s)

    # ------------------------------------------------------------------ frames
    def on_message(self, msg: can.Message) -> bool:
        """Handle one frame; False if it is not the sensor's."""
        arb = msg.arbitration_id
        if arb == RESPONSE_ID:
            try:
                self.responses.put_nowait(bytes(msg.data))
            except queue.Full:  # nobody is configuring: an unasked-for response
                self.malformed += 1
            return True
        if not RESULT_BASE_ID <= arb < RESULT_BASE_ID + 8:
            return False
        try:
            mux, counter, state, raw = parse_result(arb, bytes(msg.data))
        except ValueError:
            self.malformed += 1
            return True
        now = self.clock()
        with self._lock:
            r = self.results[mux]
            r.repeats = r.repeats + 1 if counter == r.counter else 0
            r.counter, r.state, r.t = counter, state, now
            r.value = raw * SCALE[mux]
            self.frames += 1
        return True

    def reading(self, now: float) -> IvtReading:
        """The latest values, or DeviceFault naming the first result that cannot be trusted."""
        with self._lock:
            for n in range(8):
                r = self.results[n]
                limit = max(self.timeout_s, self.cycles_ms[n] * 3 / 1000.0)
                if now - r.t > limit:
                    age = "never" if r.t == float("-inf") else f"{(now - r.t) * 1e3:.0f} ms ago"
                    raise DeviceFault("current_sensor_timeout", f"IVT-S result {RESULTS[n]}: last frame {age} (timeout {limit * 1e3:.0f} ms)")
                if r.repeats >= STUCK_REPEATS:
                    raise DeviceFault("current_sensor_stuck", f"IVT-S result {RESULTS[n]}: message counter stuck at {r.counter}")
                if r.state & (STATE_THIS_ERROR | STATE_ANY_ERROR | STATE_SYSTEM_ERROR):
                    raise DeviceFault("current_sensor_error", f"IVT-S result {RESULTS[n]}: error state 0x{r.state:X}")
            v = [r.value for r in self.results]
        return IvtReading(self.sign * v[0], (v[1], v[2], v[3]), v[4], v[5], v[6], v[7])


def handle(sensors: list[Any]) -> Callable[[can.Message], None]:
    """A Notifier callback dispatching each frame to the first sensor that takes it."""
    def cb(msg: can.Message) -> None:
        for s in sensors:
            if s.on_message(msg):
                return
    return cb
