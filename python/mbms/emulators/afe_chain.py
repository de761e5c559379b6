"""An emulated isoSPI daisy chain of LTC6813-1, byte for byte, behind the spidev API.

:class:`Ltc6813ChainEmulator` takes one chip-select frame (what the host clocks out) and returns
what the chain clocks back, as the datasheet's serial programming guide describes it (see
:mod:`mbms.hardware.ltc6813` for the frame format): commands and write data with a wrong PEC are
ignored, reads carry a PEC per IC, PLADC holds SDO low while converting, the discharge timer
clears the DCC bits when it runs out, and the watchdog (t_SLEEP ≈ 2 s without traffic) resets the
configuration registers. Cell voltages and temperatures come from a source callable (the plant).

Faults injected at protocol level: ``pec`` (bit flip in the replies of one IC), ``open_wire``
(a broken sense pin: ADOW readings as the datasheet describes them), ``chain_break`` (no IC from
one on answers: all-ones on MISO), ``stuck`` (results registers no longer updated).

:class:`EmulatedSpiDev` is the host side: the three spidev methods the driver uses, over a Unix
SOCK_SEQPACKET socket to :class:`AfeSocketServer` (one packet = one chip-select frame).
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from mbms.hardware import ltc6813 as L

#: Watchdog: the IC returns to SLEEP (configuration reset) after t_SLEEP without traffic (1.8-2.2 s).
T_SLEEP_S = 2.0
VREF2_V = 3.0


class _Ic:
    def __init__(self) -> None:
        self.cfga = bytearray([0x00, 0, 0, 0, 0, 0])  # power-on defaults: GPIO pull-downs on
        self.cfgb = bytearray(6)
        self.cells = np.zeros(18)
        self.aux = np.zeros(12)
        self.dcto_start = 0.0

    def dcc(self) -> int:
        a, b = self.cfga, self.cfgb
        return a[4] | ((a[5] & 0x0F) << 8) | (((b[0] >> 4) & 0x0F) << 12) | ((b[1] & 0x03) << 16)

    def clear_dcc(self) -> None:
        self.cfga[4] = 0
        self.cfga[5] &= 0xF0
        self.cfgb[0] &= 0x0F
        self.cfgb[1] &= 0xFC


class Ltc6813ChainEmulator:
    """``source()`` returns (v_cell_v per monitored cell in chain order, t_c per NTC)."""

    def __init__(self, n_ics: int, cells_per_ic: int, temps_per_ic: int,
                 source: Callable[[], tuple[np.ndarray, np.ndarray]],
                 ntc: tuple[float, float, float] = (3435.0, 10_000.0, 10_000.0),
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.n = n_ics
        self.m = cells_per_ic
        self.temps_per_ic = temps_per_ic
        self.source = source
        self.ntc = ntc
        self.clock = clock
        self.ics = [_Ic() for _ in range(n_ics)]
        self.busy_until = 0.0
        self.last_traffic = clock()
        self.faults: dict[str, Any] = {}
        self.frames = 0
        self.bad_pec_commands = 0
        self.on_balance: Callable[[np.ndarray], None] | None = None

    # ------------------------------------------------------------------ faults
    def inject(self, kind: str, **kw: Any) -> None:
        """``pec`` (ic), ``open_wire`` (ic, pin), ``chain_break`` (ic), ``stuck``; ``clear``."""
        if kind == "clear":
            self.faults.clear()
        elif kind in ("pec", "open_wire", "chain_break", "stuck"):
            self.faults[kind] = kw
        else:
            raise ValueError(f"unknown AFE fault {kind!r}")

    def _reachable(self) -> int:
        cb = self.faults.get("chain_break")
        return self.n if cb is None else int(cb.get("ic", 0))

    # ------------------------------------------------------------------ timers
    def _timers(self, now: float) -> None:
        if now - self.last_traffic > T_SLEEP_S:
            for ic in self.ics:  # watchdog: back to SLEEP, configuration registers reset
                ic.cfga[:] = bytes([0, 0, 0, 0, 0, 0])
                ic.cfgb[:] = bytes(6)
        for ic in self.ics:
            code = ic.cfga[5] >> 4
            if code and now - ic.dcto_start > L.DCTO_MIN[code] * 60:
                ic.clear_dcc()
        self.last_traffic = now

    def balance_bits(self) -> np.ndarray:
        out = np.zeros(self.n * self.m, dtype=bool)
        for i, ic in enumerate(self.ics):
            d = ic.dcc()
            for j in range(self.m):
                out[i * self.m + j] = bool(d >> j & 1)
        return out

    # ------------------------------------------------------------------ conversions
    def _convert_cells(self, pup: bool | None) -> None:
        if "stuck" in self.faults:
            return
        v, _ = self.source()
        v = np.asarray(v, dtype=float).reshape(self.n, self.m)
        ow = self.faults.get("open_wire")
        for i, ic in enumerate(self.ics[:self._reachable()]):
            cells = np.zeros(18)
            cells[:self.m] = v[i]
            if ow is not None and int(ow.get("ic", 0)) == i:
                p = int(ow.get("pin", 1))  # pin C(p): between cell p and cell p+1 (1-based)
                lo, hi = p - 1, p  # 0-based indices of cell p and p+1
                both = (cells[lo] if lo >= 0 else 0.0) + (cells[hi] if hi < self.m else 0.0)
                if pup is None:  # no pull current: the floating pin settles in between
                    if lo >= 0:
                        cells[lo] = both / 2
                    if hi < self.m:
                        cells[hi] = both / 2
                elif pup:  # pulled up towards C(p+1)
                    if lo >= 0:
                        cells[lo] = both
                    if hi < self.m:
                        cells[hi] = 0.0
                else:  # pulled down towards C(p-1)
                    if lo >= 0:
                        cells[lo] = 0.0
                    if hi < self.m:
                        cells[hi] = both
            ic.cells = np.clip(np.round(cells / L.LSB_V), 0, 0xFFFF)
        self.busy_until = self.clock() + L.T_CONV_ADCV_S * 0.8

    def _convert_aux(self) -> None:
        if "stuck" in self.faults:
            return
        _, t = self.source()
        t = np.asarray(t, dtype=float)
        ratio = L.ntc_ratio(t, *self.ntc) if t.size else t
        for i, ic in enumerate(self.ics[:self._reachable()]):
            aux = np.zeros(12)
            k = self.temps_per_ic
            if k:
                g = ratio[i * k:(i + 1) * k] * VREF2_V
                aux_gpio = np.full(9, VREF2_V * 0.999)  # unconnected GPIO: pulled up
                aux_gpio[:k] = g
                aux[0:3] = aux_gpio[0:3]
                aux[3:5] = aux_gpio[3:5]
                aux[5] = VREF2_V
                aux[6:9] = aux_gpio[5:8]
                aux[9] = aux_gpio[8]
            ic.aux = np.clip(np.round(aux / L.LSB_V), 0, 0xFFFF)
        self.busy_until = self.clock() + L.T_CONV_ADAX_S * 0.8

    # ------------------------------------------------------------------ the wire
    def transfer(self, tx: bytes) -> bytes:
        """One chip-select frame."""
        self.frames += 1
        now = self.clock()
        self._timers(now)
        if len(tx) < 4:
            return b"\xff" * len(tx)  # wake-up bytes: nothing to answer
        head = tx[:4]
        if L.pec15(head[:2]) != (head[2] << 8 | head[3]):
            self.bad_pec_commands += 1
            return b"\xff" * len(tx)
        cc = ((head[0] & 0x07) << 8) | head[1]
        body = tx[4:]
        reach = self._reachable()
        if cc in (L.WRCFGA, L.WRCFGB):
            # data for the last IC first: IC n-1 .. IC 0
            for k in range(min(self.n, len(body) // 8)):
                i = self.n - 1 - k
                frame = body[8 * k:8 * k + 8]
                if i >= reach or L.pec15(frame[:6]) != (frame[6] << 8 | frame[7]):
                    continue  # an IC past a break never sees it; a bad PEC is not written
                ic = self.ics[i]
                if cc == L.WRCFGA:
                    ic.cfga[:] = frame[:6]
                    ic.dcto_start = now  # writing DCTO restarts the discharge timer
                else:
                    ic.cfgb[:] = frame[:6]
            if self.on_balance is not None:
                self.on_balance(self.balance_bits())
            return b"\xff" * len(tx)
        regs = self._read_regs(cc)
        if regs is not None:
            out = bytearray(b"\xff" * 4)
            pec_fault = self.faults.get("pec")
            for i in range(self.n):
                if i >= reach:
                    out += b"\xff" * 8
                    continue
                f = bytearray(L.with_pec(regs[i]))
                if pec_fault is not None and int(pec_fault.get("ic", 0)) == i:
                    f[1] ^= 0x04  # one bit flipped on the isoSPI link: the PEC no longer matches
                    if "count" in pec_fault:  # a burst of `count` bad frames, then a clean link
                        pec_fault["count"] -= 1
                        if pec_fault["count"] <= 0:
                            self.faults.pop("pec", None)
                            pec_fault = None
                out += f
            return bytes(out[:len(tx)]) + b"\xff" * max(0, len(tx) - len(out))
        if cc == L.PLADC:
            done = now >= self.busy_until
            return b"\xff" * 4 + (b"\xff" if done else b"\x00") * (len(tx) - 4)
        # the conversion commands, their MD, DCP, PUP and CH/CHG bits masked out
        if cc & 0x668 == 0x260:  # ADCV
            self._convert_cells(None)
        elif cc & 0x628 == 0x228:  # ADOW
            self._convert_cells(bool(cc & 0x40))
        elif cc & 0x678 == 0x460:  # ADAX
            self._convert_aux()
        elif cc == L.CLRCELL:
            for ic in self.ics:
                ic.cells[:] = 0xFFFF
        return b"\xff" * len(tx)

    def _read_regs(self, cc: int) -> list[bytes] | None:
        if cc in L.RDCV:
            g = L.RDCV.index(cc)
            return [ic.cells[3 * g:3 * g + 3].astype("<u2").tobytes() for ic in self.ics]
        if cc in L.RDAUX:
            g = L.RDAUX.index(cc)
            return [ic.aux[3 * g:3 * g + 3].astype("<u2").tobytes() for ic in self.ics]
        if cc == L.RDCFGA:
            return [bytes(ic.cfga) for ic in self.ics]
        if cc == L.RDCFGB:
            return [bytes(ic.cfgb) for ic in self.ics]
        return None


# ---------------------------------------------------------------------------------------------
# The emulated spidev: a Unix SOCK_SEQPACKET socket, one packet per chip-select frame
# ---------------------------------------------------------------------------------------------

class AfeSocketServer:
    """Serves one emulated chain on ``path`` (one client at a time, a thread per connection)."""

    def __init__(self, chain: Ltc6813ChainEmulator, path: str, lock: threading.Lock | None = None) -> None:
        self.chain = chain
        self.path = path
        self.lock = lock or threading.Lock()
        if os.path.exists(path):
            os.unlink(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.sock.bind(path)
        self.sock.listen(4)
        self._stop = False
        self.thread = threading.Thread(target=self._accept, daemon=True, name=f"afe-emu {path}")
        self.thread.start()

    def _accept(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            while True:
                try:
                    tx = conn.recv(65536)
                except OSError:
                    return
                if not tx:
                    return
                with self.lock:
                    rx = self.chain.transfer(tx)
                try:
                    conn.send(rx)
                except OSError:
                    return

    def close(self) -> None:
        self._stop = True
        self.sock.close()
        if os.path.exists(self.path):
            os.unlink(self.path)


class EmulatedSpiDev:
    """The spidev methods the driver uses (``xfer2``, ``mode``, ``max_speed_hz``, ``close``),
    talking to :class:`AfeSocketServer`. No answer within the timeout reads as all ones (MISO
    idles high: nobody drives it), as on a real bus without a device."""

    def __init__(self, path: str, timeout_s: float = 0.25) -> None:
        self.path = path
        self.mode = 0
        self.max_speed_hz = 500_000
        self.timeout_s = timeout_s
        self._sock: socket.socket | None = None

    def _connect(self) -> socket.socket | None:
        if self._sock is None:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            s.settimeout(self.timeout_s)
            try:
                s.connect(self.path)
            except OSError:
                s.close()
                return None
            self._sock = s
        return self._sock

    def xfer2(self, data: list[int]) -> list[int]:
        # a frame takes its bits at the SPI clock on a real bus: the call returns no sooner
        # (spidev blocks for the transfer), so measured acquisition times include the wire
        done = time.perf_counter() + len(data) * 8 / max(1, self.max_speed_hz)
        rx = self._xfer(data)
        left = done - time.perf_counter()
        if left > 0:
            time.sleep(left)
        return rx

    def _xfer(self, data: list[int]) -> list[int]:
        s = self._connect()
        if s is None:
            return [0xFF] * len(data)
        try:
            s.send(bytes(data))
            rx = s.recv(65536)
        except OSError:
            self.close()
            return [0xFF] * len(data)
        if not rx:
            self.close()
            return [0xFF] * len(data)
        return list(rx)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def serve(path: str, n_ics: int, cells_per_ic: int, temps_per_ic: int) -> None:
    """Serve a chain with fixed cells (3.2..4.1 V) and NTCs (20..35 °C) on ``path`` until killed
    (a device in another process, for ``mbms bench afe``)."""
    n = n_ics * cells_per_ic
    v = np.linspace(3.2, 4.1, n)
    t = np.linspace(20.0, 35.0, n_ics * temps_per_ic)
    AfeSocketServer(Ltc6813ChainEmulator(n_ics, cells_per_ic, temps_per_ic, lambda: (v, t)), path)
    print("serving", flush=True)
    threading.Event().wait()
