"""Driver of a daisy chain of Analog Devices LTC6813-1 cell monitors on isoSPI, through Linux spidev.

Everything on the wire follows the LTC6813-1 datasheet (Rev. C, "Serial Programming Guide"):

* A command is 2 command bytes + their PEC15, MSB first. A write command is followed by 6 data
  bytes + PEC per IC, the data for the LAST IC in the chain first (it is shifted through the
  others). A read command is answered by 6 data bytes + PEC per IC, the FIRST IC (nearest to the
  host) first. Every frame in both directions carries a PEC15 (:func:`pec15`); an IC ignores a
  command or write data whose PEC does not match, and the host drops a register group whose PEC
  does not match (re-read once, then the sample is invalid).
* Cell and auxiliary results are 16-bit little-endian codes of 100 µV (datasheet: "1 LSB =
  100 µV"), 3 per register group: cells 1-18 in groups A-F, GPIO1-9 and VREF2 in AUX A-D.
* The ADC is polled with PLADC: in a daisy chain the chain holds SDO low until every IC has
  finished converting, so the host reads 0x00 bytes while busy and 0xFF once done.

The transport is the spidev API (``xfer2(list[int]) -> list[int]``, one call = one chip-select
frame): :class:`spidev.SpiDev` on a controller (SPI mode 3, at most 1 MHz: datasheet t_CLK ≥ 1 µs
for isoSPI), or the emulated chain of :mod:`mbms.emulators.afe_chain` behind the same three
methods. The driver never depends on which.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np

from mbms.hardware.base import DeviceFault

# ---------------------------------------------------------------------------------------------
# PEC15 (datasheet "Packet Error Code": CRC-15, polynomial x^15+x^14+x^10+x^8+x^7+x^4+x^3+1,
# seed 0b000000000010000, the 15-bit remainder shifted left by one: the PEC's LSB is always 0)
# ---------------------------------------------------------------------------------------------

PEC15_POLY = 0x4599  # x^15 + x^14 + x^10 + x^8 + x^7 + x^4 + x^3 + 1 (the x^15 term implied)
PEC15_SEED = 0x0010


def _pec15_table() -> tuple[int, ...]:
    # The datasheet's 256-entry table: the CRC of each byte value, 15 bits.
    table = []
    for i in range(256):
        rem = i << 7
        for _ in range(8):
            rem = (rem << 1) ^ PEC15_POLY if rem & 0x4000 else rem << 1
        table.append(rem & 0x7FFF)
    return tuple(table)


PEC15_TABLE = _pec15_table()


def pec15(data: bytes | Sequence[int]) -> int:
    """PEC15 of ``data`` as the 16-bit value sent MSB first (datasheet algorithm)."""
    rem = PEC15_SEED
    for b in data:
        addr = ((rem >> 7) ^ b) & 0xFF
        rem = ((rem << 8) ^ PEC15_TABLE[addr]) & 0x7FFF
    return (rem << 1) & 0xFFFF


def with_pec(data: bytes | Sequence[int]) -> bytes:
    p = pec15(data)
    return bytes(data) + bytes([p >> 8, p & 0xFF])


# ---------------------------------------------------------------------------------------------
# Command codes (datasheet Table "Command Codes"; 11-bit CC[10:0])
# ---------------------------------------------------------------------------------------------

WRCFGA, WRCFGB, RDCFGA, RDCFGB = 0x001, 0x024, 0x002, 0x026
RDCV = (0x004, 0x006, 0x008, 0x00A, 0x009, 0x00B)  # cell groups A..F
RDAUX = (0x00C, 0x00E, 0x00D, 0x00F)  # aux groups A..D
RDSTATA, RDSTATB = 0x010, 0x012
CLRCELL, CLRAUX, PLADC = 0x711, 0x712, 0x714

# MD[1:0] with ADCOPT = 0: 1 = 27 kHz, 2 = 7 kHz (normal), 3 = 26 Hz (filtered).
MD_NORMAL = 2


def adcv(md: int = MD_NORMAL, dcp: bool = False, ch: int = 0) -> int:
    """ADCV: 0 1 MD[1] MD[0] 1 1 DCP 0 CH[2:0] (CH = 0: all cells)."""
    return 0x260 | (md << 7) | (int(dcp) << 4) | ch


def adow(pup: bool, md: int = MD_NORMAL, dcp: bool = False, ch: int = 0) -> int:
    """ADOW (open-wire conversion): 0 1 MD[1] MD[0] PUP 1 DCP 1 CH[2:0]; PUP = pull-up current."""
    return 0x228 | (md << 7) | (int(pup) << 6) | (int(dcp) << 4) | ch


def adax(md: int = MD_NORMAL, chg: int = 0) -> int:
    """ADAX: 1 MD[1] MD[0] 1 1 0 CHG[2:0] (CHG = 0: GPIO1-5, 2nd ref, GPIO6-9)."""
    return 0x460 | (md << 7) | chg


def command_frame(cc: int) -> bytes:
    return with_pec(bytes([(cc >> 8) & 0x07, cc & 0xFF]))


# Timing (datasheet Electrical Characteristics / "ADC Conversion Times"), in seconds.
#: ADCV, all cells, MD = 7 kHz: the upper bound used as the PLADC polling deadline.
T_CONV_ADCV_S = 3.0e-3
#: ADAX, all GPIOs and VREF2, MD = 7 kHz.
T_CONV_ADAX_S = 3.6e-3
#: isoSPI clock: at most 1 MHz (t_CLK ≥ 1 µs).
F_SPI_MAX_HZ = 1_000_000
#: PLADC gives up after this many conversion times: an ADC that never finishes is a fault, found
#: within a control period; the margin covers a controller busy elsewhere between two polls.
POLL_MARGIN = 8
#: Core wake-up from SLEEP, per IC in the chain (t_WAKE ≤ 400 µs).
T_WAKE_S = 400e-6
#: Discharge timeout codes DCTO[3:0] -> minutes (datasheet Table "DCTO Settings"); 0 = off.
DCTO_MIN = (0, 0.5, 1, 2, 3, 4, 5, 10, 15, 20, 30, 40, 60, 75, 90, 120)
#: 1 LSB of a cell/aux code.
LSB_V = 100e-6
#: An open-wire check: ΔCell(n) = PU(n) − PD(n) < −400 mV means C(n−1) is open (datasheet "Open
#: Wire Check (ADOW Command)"); C0 is open if PU(1) = 0, C18 if PD(18) = 0.
OPEN_WIRE_DELTA_V = -0.400
CELLS_PER_IC = 18
GPIOS_PER_IC = 9


class SpiLike(Protocol):
    """The part of :class:`spidev.SpiDev` the driver uses."""

    max_speed_hz: int
    mode: int

    def xfer2(self, data: list[int]) -> list[int]: ...

    def close(self) -> None: ...


#: An acquisition the driver cannot trust (``kind``: afe_link, afe_pec, afe_chain_break, afe_adc,
#: afe_reference, afe_open_wire).
AfeError = DeviceFault


@dataclasses.dataclass
class AfeStats:
    transactions: int = 0
    bytes_on_wire: int = 0
    pec_errors: int = 0
    retries: int = 0
    chain_breaks: int = 0
    open_wire_checks: int = 0
    #: conversions found done only by the last poll after the deadline (this process was late)
    late_polls: int = 0


def open_spi(device: str, speed_hz: int) -> SpiLike:
    """``/dev/spidevB.C`` (spidev, mode 3) or ``emu:///path`` (the emulated chain's socket)."""
    if device.startswith("emu://"):
        from mbms.emulators.afe_chain import EmulatedSpiDev

        dev: SpiLike = EmulatedSpiDev(device[len("emu://"):])
    else:
        import spidev  # type: ignore[import-not-found]

        tail = device.rsplit("spidev", 1)[-1]
        bus, cs = (int(x) for x in tail.split("."))
        dev = spidev.SpiDev()
        dev.open(bus, cs)  # type: ignore[attr-defined]
    dev.mode = 3  # CPOL = 1, CPHA = 1 (datasheet "SPI mode 3")
    dev.max_speed_hz = speed_hz
    return dev


@dataclasses.dataclass
class ChainSample:
    v_cell_v: np.ndarray  # one per monitored cell, chain order (IC 0 first)
    t_c: np.ndarray  # one per temperature sensor
    t_acq_s: float  # wall time of this acquisition (the measured budget)


def ntc_temp_c(ratio: np.ndarray, beta_k: float, r25_ohm: float, r_pullup_ohm: float) -> np.ndarray:
    """Temperature of an NTC at the bottom of a divider from VREF2: ratio = V_gpio / VREF2."""
    ratio = np.clip(ratio, 1e-6, 1 - 1e-6)
    r = r_pullup_ohm * ratio / (1.0 - ratio)
    return 1.0 / (1.0 / 298.15 + np.log(r / r25_ohm) / beta_k) - 273.15


def ntc_ratio(t_c: np.ndarray, beta_k: float, r25_ohm: float, r_pullup_ohm: float) -> np.ndarray:
    """Inverse of :func:`ntc_temp_c` (used by the emulator)."""
    r = r25_ohm * np.exp(beta_k * (1.0 / (np.asarray(t_c) + 273.15) - 1.0 / 298.15))
    return r / (r + r_pullup_ohm)


class Ltc6813Chain:
    """One isoSPI daisy chain of ``n_ics`` LTC6813-1, ``cells_per_ic`` cells on inputs 1.. of each
    and ``temps_per_ic`` NTCs on GPIO1.. of each."""

    def __init__(self, spi: SpiLike, n_ics: int, cells_per_ic: int, temps_per_ic: int,
                 dcto_code: int = 2, ntc: tuple[float, float, float] = (3435.0, 10_000.0, 10_000.0),
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> None:
        if not 1 <= cells_per_ic <= CELLS_PER_IC or not 0 <= temps_per_ic <= GPIOS_PER_IC:
            raise ValueError("cells_per_ic 1..18, temps_per_ic 0..9")
        self.spi = spi
        self.n = n_ics
        self.cells_per_ic = cells_per_ic
        self.temps_per_ic = temps_per_ic
        self.dcto_code = dcto_code
        self.ntc = ntc
        self.clock = clock
        self.sleep = sleep
        self.stats = AfeStats()
        self.balance = np.zeros(n_ics * cells_per_ic, dtype=bool)

    # ------------------------------------------------------------------ frames
    def _xfer(self, tx: bytes) -> bytes:
        self.stats.transactions += 1
        self.stats.bytes_on_wire += len(tx)
        rx = bytes(self.spi.xfer2(list(tx)))
        if len(rx) != len(tx):
            raise AfeError("afe_link", f"spi returned {len(rx)} bytes for {len(tx)}")
        return rx

    def wake(self) -> None:
        """Wake every IC: one dummy byte per IC, isoSPI passes the wake-up pulse along the chain
        (datasheet "Waking a Daisy Chain")."""
        for _ in range(self.n):
            self._xfer(b"\xff")
        self.sleep(T_WAKE_S)

    def command(self, cc: int) -> None:
        self._xfer(command_frame(cc))

    def write(self, cc: int, per_ic: Sequence[bytes]) -> None:
        """A write command; ``per_ic[0]`` is for IC 0 (nearest); sent last-IC first."""
        frame = bytearray(command_frame(cc))
        for data in reversed(per_ic):
            frame += with_pec(data)
        self._xfer(bytes(frame))

    def read(self, cc: int, what: str) -> list[bytes]:
        """A read command: 6 data bytes per IC (IC 0 first), each PEC-checked; one re-read on a
        PEC error, then AfeError. All-0xFF frames from an IC on to the end: the chain is broken
        there (no IC answers past it)."""
        for attempt in range(2):
            rx = self._xfer(command_frame(cc) + b"\xff" * (8 * self.n))[4:]
            frames = [rx[8 * i:8 * i + 8] for i in range(self.n)]
            bad = [i for i, f in enumerate(frames) if pec15(f[:6]) != (f[6] << 8 | f[7])]
            if not bad:
                return [f[:6] for f in frames]
            self.stats.pec_errors += len(bad)
            silent = [i for i, f in enumerate(frames) if f == b"\xff" * 8]
            if silent and silent == list(range(silent[0], self.n)) and set(bad) == set(silent):
                self.stats.chain_breaks += 1
                raise AfeError("afe_chain_break", f"AFE chain break: no answer from IC {silent[0]} on "
                                                  f"({self.n - silent[0]} of {self.n} ICs silent, {what})")
            if attempt == 0:
                self.stats.retries += 1
        raise AfeError("afe_pec", f"AFE PEC error: {what} of IC {', '.join(map(str, bad))} (after a re-read)")

    def poll_adc(self, deadline_s: float) -> None:
        """PLADC: clock bytes until the chain releases SDO (0xFF), at most ``deadline_s``."""
        end = self.clock() + deadline_s
        while True:
            rx = self._xfer(command_frame(PLADC) + b"\x00")
            if rx[4] == 0xFF:
                return
            if self.clock() > end:
                # One more look before calling the ADC stuck: if this process was descheduled
                # between the poll and the clock read (a loaded controller, a GC pause), the
                # conversion most likely ended meanwhile; only the chip's answer says it did not.
                if self._xfer(command_frame(PLADC) + b"\x00")[4] == 0xFF:
                    self.stats.late_polls += 1
                    return
                raise AfeError("afe_adc", f"AFE ADC busy beyond {deadline_s * 1e3:.1f} ms (PLADC)")
            self.sleep(min(200e-6, deadline_s / 10))

    # ------------------------------------------------------------------ configuration
    def config_frames(self, vuv_v: float = 2.0, vov_v: float = 4.5) -> tuple[list[bytes], list[bytes]]:
        """CFGA and CFGB per IC: GPIO pull-downs off (all 1: the NTC inputs), REFON = 1 (the
        reference stays up between conversions), the cell under/over-voltage comparison codes, the
        discharge switches of :attr:`balance` and the discharge timeout DCTO."""
        vuv = max(0, min(0xFFF, round(vuv_v / (16 * LSB_V)) - 1))  # V_UV = (VUV + 1)·16·100 µV
        vov = max(0, min(0xFFF, round(vov_v / (16 * LSB_V))))  # V_OV = VOV·16·100 µV
        a, b = [], []
        for i in range(self.n):
            dcc = 0
            for j, on in enumerate(self.balance[i * self.cells_per_ic:(i + 1) * self.cells_per_ic]):
                if on:
                    dcc |= 1 << j  # DCC(j+1)
            a.append(bytes([
                0xF8 | 0x04,  # GPIO5..1 = 1 (pull-down off), REFON = 1, DTEN (read only), ADCOPT = 0
                vuv & 0xFF,
                ((vov & 0x0F) << 4) | (vuv >> 8),
                vov >> 4,
                dcc & 0xFF,  # DCC8..1
                (self.dcto_code << 4) | ((dcc >> 8) & 0x0F),  # DCTO, DCC12..9
            ]))
            b.append(bytes([
                (((dcc >> 12) & 0x0F) << 4) | 0x0F,  # DCC16..13, GPIO9..6 = 1
                (dcc >> 16) & 0x03,  # MUTE 0, FDRF 0, PS 00, DTMEN 0, DCC0 0, DCC18..17
                0, 0, 0, 0,
            ]))
        return a, b

    def write_config(self) -> None:
        a, b = self.config_frames()
        self.write(WRCFGA, a)
        self.write(WRCFGB, b)

    def read_config(self) -> tuple[list[bytes], list[bytes]]:
        return self.read(RDCFGA, "CFGA"), self.read(RDCFGB, "CFGB")

    # ------------------------------------------------------------------ measurements
    def _read_cells(self) -> np.ndarray:
        """Cell codes (n_ics × 18) in volts."""
        out = np.zeros((self.n, CELLS_PER_IC))
        for g, cc in enumerate(RDCV):
            for i, data in enumerate(self.read(cc, f"cell group {'ABCDEF'[g]}")):
                out[i, 3 * g:3 * g + 3] = np.frombuffer(data, dtype="<u2") * LSB_V
        return out

    def _read_aux(self) -> np.ndarray:
        """GPIO1..9 and VREF2 per IC (n_ics × 10) in volts: AUX A = G1-3, B = G4, G5, REF,
        C = G6-8, D = G9 (then reserved/flags)."""
        out = np.zeros((self.n, 10))
        order = ((0, 1, 2), (3, 4, 9), (5, 6, 7), (8, None, None))
        for g, cc in enumerate(RDAUX):
            if g == 3 and self.temps_per_ic < 9:
                continue
            if g == 2 and self.temps_per_ic < 6:
                continue
            for i, data in enumerate(self.read(cc, f"aux group {'ABCD'[g]}")):
                vals = np.frombuffer(data, dtype="<u2") * LSB_V
                for k, dst in enumerate(order[g]):
                    if dst is not None:
                        out[i, dst] = vals[k]
        return out

    def acquire(self) -> ChainSample:
        """One acquisition: wake, configuration (balancing + DCTO), ADCV, cells, ADAX, GPIOs."""
        t0 = self.clock()
        self.wake()
        self.write_config()
        self.command(adcv())
        self.poll_adc(POLL_MARGIN * T_CONV_ADCV_S)
        cells = self._read_cells()
        temps = np.zeros(0)
        if self.temps_per_ic:
            self.command(adax())
            self.poll_adc(POLL_MARGIN * T_CONV_ADAX_S)
            aux = self._read_aux()
            ref = aux[:, 9:10]
            if np.any(ref < 2.5) or np.any(ref > 3.5):  # VREF2 = 3 V nominal
                raise AfeError("afe_reference", f"AFE second reference out of range: {ref.ravel().round(3).tolist()} V")
            temps = ntc_temp_c(aux[:, :self.temps_per_ic] / ref, *self.ntc).ravel()
        v = cells[:, :self.cells_per_ic].ravel()
        return ChainSample(v, temps, self.clock() - t0)

    def open_wire_check(self) -> list[tuple[int, int]]:
        """ADOW with pull-up then pull-down, twice each (datasheet procedure); returns the open
        (IC, pin C(n)) found. Only the inputs 0..cells_per_ic of each IC carry cells."""
        self.stats.open_wire_checks += 1
        res = {}
        for pup in (True, False):
            for _ in range(2):
                self.command(adow(pup))
                self.poll_adc(POLL_MARGIN * T_CONV_ADCV_S)
            res[pup] = self._read_cells()
        pu, pd = res[True], res[False]
        opens = []
        m = self.cells_per_ic
        for i in range(self.n):
            if pu[i, 0] == 0.0:
                opens.append((i, 0))
            for n in range(1, m):  # cell n+1 (1-based) -> pin C(n)
                if pu[i, n] - pd[i, n] < OPEN_WIRE_DELTA_V:
                    opens.append((i, n))
            if pd[i, m - 1] == 0.0:
                opens.append((i, m))
        return opens


# ---------------------------------------------------------------------------------------------
# Acquisition budget (stated): bits on the isoSPI wire per control period
# ---------------------------------------------------------------------------------------------

def wire_bytes_per_acquisition(n_ics: int, temps_per_ic: int, polls: int = 2) -> int:
    """Bytes clocked in one :meth:`Ltc6813Chain.acquire` (wake, CFGA/B writes, ADCV, PLADC
    polls, 6 cell reads, ADAX, aux reads)."""
    frame = 4 + 8 * n_ics
    aux_groups = 2 + (temps_per_ic >= 6) + (temps_per_ic >= 9) if temps_per_ic else 0
    n = n_ics  # wake bytes
    n += 2 * frame  # WRCFGA, WRCFGB
    n += 4 + polls * 5  # ADCV + PLADC
    n += 6 * frame
    if temps_per_ic:
        n += 4 + polls * 5 + aux_groups * frame
    return n


def stated_budget_s(n_cells: int, cells_per_ic: int, temps_per_ic: int, f_spi_hz: float = F_SPI_MAX_HZ) -> dict[str, Any]:
    """The acquisition time a real chain needs: wire time at ``f_spi_hz`` plus the datasheet
    conversion times (ADCV and ADAX run once for the whole chain, in parallel in every IC)."""
    n_ics = math.ceil(n_cells / cells_per_ic)
    nbytes = wire_bytes_per_acquisition(n_ics, temps_per_ic)
    wire = nbytes * 8 / f_spi_hz
    conv = T_CONV_ADCV_S + (T_CONV_ADAX_S if temps_per_ic else 0.0)
    wake = T_WAKE_S
    return {"n_ics": n_ics, "bytes": nbytes, "wire_s": wire, "conversion_s": conv, "wake_s": wake,
            "total_s": wire + conv + wake}
