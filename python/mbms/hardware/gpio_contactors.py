"""Contactors, precharge relay and their auxiliary contacts through libgpiod (``gpiod`` v2 API).

Three output lines drive the coil drivers of main negative, main positive and precharge; three
input lines read the auxiliary (mirror) contacts. The outputs are requested INACTIVE (coil off:
contactor open) and set INACTIVE again before the request is released, at :meth:`close` and at
process exit (``atexit``); if the process dies without that, the kernel releases the lines with
its file descriptor and the coil driver's pull-down keeps the contactor open: the hardware
default is open (a design rule of the board, stated here because the driver relies on it).

Beyond the feedback-versus-command check of the node (rust_core ``feedback_mismatch_ms``), this
module checks the contactors against the string's own measurements (:class:`ContactorCheck`):

* welded: both the main positive and the precharge relay commanded open, yet the string carries
  current (``|I| > i_open_a``) for ``confirm_ms``: a contact conducts that should not;
* stuck open: main positive commanded closed and reported closed, yet the voltage across it
  (``|V_bus − V_string|``) stays above ``dv_closed_v`` for ``confirm_ms``: the feedback reports a
  contact that does not conduct.

The line backend is ``gpiod.request_lines`` on ``/dev/gpiochipN``, or for ``emu:///path`` the
emulated chip of :mod:`mbms.emulators.gpio_chip`, which has the same call shape.
"""

from __future__ import annotations

import atexit
import dataclasses
from typing import Any

from mbms.hardware.base import DeviceFault
from mbms.types import Contactors


def request_lines_for(chip: str) -> tuple[Any, str]:
    """``(gpiod.request_lines, chip)`` for a character device; the emulated chip's function and
    socket path for ``emu:///PATH``."""
    if chip.startswith("emu://"):
        from mbms.emulators.gpio_chip import request_lines

        return request_lines, chip[len("emu://"):]
    import gpiod

    return gpiod.request_lines, chip


@dataclasses.dataclass(frozen=True)
class LineMap:
    """Line offsets on the chip: outputs (coils) and inputs (auxiliary contacts)."""

    neg_out: int
    pos_out: int
    pre_out: int
    neg_fb: int
    pos_fb: int
    pre_fb: int


class GpioContactors:
    def __init__(self, chip: str, lines: LineMap, consumer: str = "mbms") -> None:
        self.chip = chip
        self.lines = lines
        self.consumer = consumer
        self._req: Any = None
        self.commanded = Contactors()

    def open(self) -> None:
        from gpiod import LineSettings
        from gpiod.line import Direction, Value

        ln = self.lines
        request_lines, path = request_lines_for(self.chip)
        self._req = request_lines(
            path, consumer=self.consumer,
            config={
                (ln.neg_out, ln.pos_out, ln.pre_out): LineSettings(direction=Direction.OUTPUT, output_value=Value.INACTIVE),
                (ln.neg_fb, ln.pos_fb, ln.pre_fb): LineSettings(direction=Direction.INPUT),
            })
        atexit.register(self.close)

    def set(self, c: Contactors) -> None:
        from gpiod.line import Value

        if self._req is None:
            return
        ln = self.lines
        v = {True: Value.ACTIVE, False: Value.INACTIVE}
        try:
            self._req.set_values({ln.neg_out: v[c.neg], ln.pos_out: v[c.pos], ln.pre_out: v[c.pre]})
        except OSError as exc:
            raise DeviceFault("contactor_driver", f"GPIO {self.chip}: setting the coils failed: {exc}") from None
        self.commanded = c

    def feedback(self) -> Contactors:
        from gpiod.line import Value

        if self._req is None:
            raise DeviceFault("contactor_driver", f"GPIO {self.chip}: lines not requested")
        ln = self.lines
        try:
            vals = self._req.get_values([ln.neg_fb, ln.pos_fb, ln.pre_fb])
        except OSError as exc:
            raise DeviceFault("contactor_driver", f"GPIO {self.chip}: reading the auxiliary contacts failed: {exc}") from None
        return Contactors(*(x == Value.ACTIVE for x in vals))

    def close(self) -> None:
        """All coils off, then release the lines."""
        if self._req is None:
            return
        try:
            self.set(Contactors())
        except DeviceFault:
            pass
        try:
            self._req.release()
        except OSError:
            pass
        self._req = None
        atexit.unregister(self.close)


class ContactorCheck:
    """The measurement cross-checks of the contactors (welded / stuck open), debounced."""

    def __init__(self, i_open_a: float, dv_closed_v: float, confirm_ms: float) -> None:
        self.i_open_a = i_open_a
        self.dv_closed_v = dv_closed_v
        self.confirm_s = confirm_ms / 1000.0
        self._since: dict[str, float] = {}

    def _hold(self, key: str, cond: bool, now: float) -> bool:
        if not cond:
            self._since.pop(key, None)
            return False
        t0 = self._since.setdefault(key, now)
        return now - t0 >= self.confirm_s

    def check(self, now: float, cmd: Contactors, fb: Contactors, i_a: float, v_string_v: float, v_bus_v: float) -> None:
        if self._hold("welded", not cmd.pos and not cmd.pre and abs(i_a) > self.i_open_a, now):
            raise DeviceFault("contactor_welded", f"contactor welded: {i_a:.1f} A flow with main positive and "
                                                  f"precharge commanded open (limit {self.i_open_a} A)")
        dv = abs(v_bus_v - v_string_v)
        if self._hold("stuck_open", cmd.main_closed and fb.main_closed and dv > self.dv_closed_v, now):
            raise DeviceFault("contactor_stuck_open", f"contactor stuck open: {dv:.1f} V across the main contactors "
                                                      f"commanded and reported closed (limit {self.dv_closed_v} V)")
