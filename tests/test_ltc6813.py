"""The LTC6813-1 driver against the datasheet's numbers and against the byte-level chain emulator
(every frame goes through the emulated spidev's bytes, PEC included)."""

from __future__ import annotations

import numpy as np
import pytest

from mbms.emulators.afe_chain import AfeSocketServer, EmulatedSpiDev, Ltc6813ChainEmulator
from mbms.hardware import ltc6813 as L
from mbms.hardware.base import DeviceFault


def test_pec15_of_the_datasheet_examples() -> None:
    # LTC6813-1 datasheet, PEC calculation: the command WRCFGA (0x0001) carries PEC 0x3D6E,
    # RDCFGA (0x0002) 0x2B0A; ADCV at 7 kHz, all cells (0x0360) 0xF46C
    assert L.pec15(bytes([0x00, 0x01])) == 0x3D6E
    assert L.pec15(bytes([0x00, 0x02])) == 0x2B0A
    assert L.command_frame(L.adcv()) == bytes([0x03, 0x60, 0xF4, 0x6C])
    # the PEC's LSB is always 0 (15-bit CRC shifted left), and one flipped bit changes it
    rng = np.random.default_rng(1)
    for _ in range(200):
        data = bytes(rng.integers(0, 256, 6, dtype=np.uint8))
        p = L.pec15(data)
        assert p & 1 == 0
        flipped = bytearray(data)
        flipped[int(rng.integers(0, 6))] ^= 1 << int(rng.integers(0, 8))
        assert L.pec15(bytes(flipped)) != p


def test_command_codes_follow_the_datasheet_bit_layout() -> None:
    assert L.adcv(md=2, dcp=False, ch=0) == 0x360
    assert L.adcv(md=1, dcp=True, ch=3) == 0x2F3
    assert L.adow(pup=True) == 0x368 and L.adow(pup=False) == 0x328
    assert L.adax() == 0x560


class _Direct:
    """spidev shape over an in-process emulator (unit tests of the driver logic)."""

    mode = 0
    max_speed_hz = 0

    def __init__(self, emu: Ltc6813ChainEmulator) -> None:
        self.emu = emu

    def xfer2(self, d: list[int]) -> list[int]:
        return list(self.emu.transfer(bytes(d)))

    def close(self) -> None:
        pass


def _chain(n: int = 6, m: int = 16, k: int = 4, clock=None):  # type: ignore[no-untyped-def]
    v = np.linspace(3.2, 4.1, n * m)
    t = np.linspace(-5.0, 45.0, n * k)
    kw = {"clock": clock} if clock else {}
    emu = Ltc6813ChainEmulator(n, m, k, lambda: (v, t), **kw)
    return emu, L.Ltc6813Chain(_Direct(emu), n, m, k), v, t


def test_acquisition_reads_cells_and_ntcs_through_the_bytes() -> None:
    emu, ch, v, t = _chain()
    s = ch.acquire()
    assert np.max(np.abs(s.v_cell_v - v)) <= L.LSB_V  # 100 µV quantisation
    assert np.max(np.abs(s.t_c - t)) < 0.05
    assert ch.stats.pec_errors == 0 and emu.bad_pec_commands == 0


def test_configuration_bits_balancing_and_thresholds() -> None:
    emu, ch, _, _ = _chain()
    ch.balance[[0, 8, 12, 15, 16 + 5]] = True
    ch.write_config()
    a, b = ch.read_config()  # read back through the chain (PEC-checked)
    assert emu.balance_bits().nonzero()[0].tolist() == [0, 8, 12, 15, 21]
    # IC 0: DCC1 in CFGAR4 bit 0, DCC9 in CFGAR5 bit 0, DCC13 and DCC16 in CFGBR0 bits 4 and 7
    assert a[0][4] == 0x01 and a[0][5] & 0x0F == 0x01 and b[0][0] >> 4 == 0b1001
    assert a[0][5] >> 4 == 2  # DCTO = 1 min
    # VUV: (VUV+1)·1.6 mV = 2.0 V; VOV: VOV·1.6 mV = 4.5 V
    vuv = a[0][1] | (a[0][2] & 0x0F) << 8
    vov = a[0][3] << 4 | a[0][2] >> 4
    assert (vuv + 1) * 16 * L.LSB_V == pytest.approx(2.0, abs=1e-3)
    assert vov * 16 * L.LSB_V == pytest.approx(4.5, abs=1e-3)


def test_write_data_for_the_last_ic_comes_first() -> None:
    emu, ch, _, _ = _chain(n=3, m=4, k=0)
    ch.write(L.WRCFGA, [bytes([0x04, 0, 0, 0, i + 1, 0]) for i in range(3)])
    assert [ic.cfga[4] for ic in emu.ics] == [1, 2, 3]


def test_a_command_with_a_bad_pec_is_ignored() -> None:
    emu, ch, _, _ = _chain(n=2, m=4, k=0)
    frame = bytearray(L.command_frame(L.WRCFGA)) + L.with_pec(bytes([0x04, 0, 0, 0, 0xFF, 0])) * 2
    frame[3] ^= 0x02
    emu.transfer(bytes(frame))
    assert emu.bad_pec_commands == 1 and all(ic.cfga[4] == 0 for ic in emu.ics)


def test_discharge_timer_and_watchdog_clear_the_switches() -> None:
    now = [0.0]
    emu, ch, _, _ = _chain(clock=lambda: now[0])
    ch.clock, ch.sleep = (lambda: now[0]), (lambda s: None)
    ch.balance[3] = True
    ch.write_config()
    assert emu.balance_bits()[3]
    # the host keeps talking (every second, inside t_SLEEP) but stops rewriting the configuration
    for t in np.arange(1.0, 60.0, 1.0):
        now[0] = float(t)
        emu.transfer(L.command_frame(L.PLADC) + b"\x00")
    assert emu.balance_bits()[3]  # DCTO = 1 min has not run out
    now[0] = 61.0
    emu.transfer(L.command_frame(L.PLADC) + b"\x00")
    assert not emu.balance_bits().any()  # ... now it has
    ch.write_config()
    assert emu.balance_bits()[3]
    now[0] += 2.5  # silence longer than t_SLEEP (2 s): the watchdog resets the configuration
    emu.transfer(b"\xff")
    assert not emu.balance_bits().any()


@pytest.mark.parametrize("pin", [0, 1, 7, 15, 16])
def test_open_wire_check_finds_the_broken_pin(pin: int) -> None:
    emu, ch, _, _ = _chain(n=3, m=16, k=0)
    assert ch.open_wire_check() == []
    emu.inject("open_wire", ic=1, pin=pin)
    assert ch.open_wire_check() == [(1, pin)]


def test_chain_break_is_named_at_the_first_silent_ic() -> None:
    emu, ch, _, _ = _chain()
    emu.inject("chain_break", ic=4)
    with pytest.raises(DeviceFault) as e:
        ch.acquire()
    assert e.value.kind == "afe_chain_break" and "IC 4" in str(e.value)


def test_pec_errors_are_retried_once_then_untrusted() -> None:
    emu, ch, v, _ = _chain()
    emu.inject("pec", ic=2, count=1)  # one corrupted frame: the re-read is clean
    s = ch.acquire()
    assert np.max(np.abs(s.v_cell_v - v)) <= L.LSB_V and ch.stats.retries == 1 and ch.stats.pec_errors == 1
    emu.inject("pec", ic=2)  # persistent
    with pytest.raises(DeviceFault) as e:
        ch.acquire()
    assert e.value.kind == "afe_pec" and "IC 2" in str(e.value)


def test_stuck_results_do_not_change() -> None:
    emu, ch, v, _ = _chain()
    first = ch.acquire().v_cell_v
    v += 0.01
    emu.inject("stuck")
    assert np.array_equal(ch.acquire().v_cell_v, first)
    emu.inject("clear")
    assert np.max(np.abs(ch.acquire().v_cell_v - v)) <= L.LSB_V


def test_driver_over_the_emulated_spidev_socket(tmp_path) -> None:  # type: ignore[no-untyped-def]
    emu, _, v, t = _chain()
    server = AfeSocketServer(emu, str(tmp_path / "afe.sock"))
    try:
        spi = L.open_spi(f"emu://{tmp_path}/afe.sock", 1_000_000)
        assert spi.mode == 3 and spi.max_speed_hz == 1_000_000
        ch = L.Ltc6813Chain(spi, 6, 16, 4)
        s = ch.acquire()
        assert np.max(np.abs(s.v_cell_v - v)) <= L.LSB_V
        server.close()  # the chain is gone: MISO reads all ones -> a chain break at IC 0
        spi.close()
        with pytest.raises(DeviceFault) as e:
            ch.acquire()
        assert e.value.kind == "afe_chain_break" and "IC 0" in str(e.value)
    finally:
        server.close()


def test_stated_budget_per_control_period() -> None:
    b96 = L.stated_budget_s(96, 16, 4)
    b400 = L.stated_budget_s(400, 18, 4)
    assert b96["n_ics"] == 6 and b400["n_ics"] == 23
    # both fit a 100 ms control period with room for the open-wire check
    assert b96["total_s"] < 0.1 and b400["total_s"] < 0.1
    emu, ch, _, _ = _chain()
    ch.acquire()
    # wake 6 + WRCFGA/B 2 + ADCV + 6 cell reads + ADAX + 2 aux reads; the rest are PLADC polls
    pladc = ch.stats.transactions - (6 + 2 + 1 + 6 + 1 + 2)
    assert pladc >= 2
    assert ch.stats.bytes_on_wire == L.wire_bytes_per_acquisition(6, 4, polls=0) + 5 * pladc
