"""The IVT-S and iso165C drivers against their emulators on a real python-can ``udp_multicast``
bus (two bus objects, as two devices on one wire): configuration handshakes, values, and every
injected fault becomes the matching DeviceFault."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import can
import pytest
from conftest import free_udp_port, wait_for

from mbms.emulators.iso165c import Iso165cEmulator
from mbms.emulators.ivt_s import IvtSEmulator
from mbms.hardware import ivt_s
from mbms.hardware.base import DeviceFault
from mbms.hardware.iso165c import Iso165c, info_frame

GROUP = "239.74.163.2"


class Wire:
    """Driver bus + device bus on one udp_multicast port; the device ticks in a thread."""

    def __init__(self) -> None:
        port = free_udp_port()
        self.host = can.Bus(interface="udp_multicast", channel=GROUP, port=port, fd=False)
        self.dev = can.Bus(interface="udp_multicast", channel=GROUP, port=port, fd=False)
        self.devices: list = []
        self.host_sensors: list = []
        self.stop = threading.Event()
        self.n1 = can.Notifier(self.host, [ivt_s.handle(self.host_sensors)], timeout=0.05)
        self.n2 = can.Notifier(self.dev, [self._dev_rx], timeout=0.05)
        self.t = threading.Thread(target=self._tick, daemon=True)
        self.t.start()

    def _dev_rx(self, msg: can.Message) -> None:
        for d in self.devices:
            if d.on_message(msg):
                return

    def _tick(self) -> None:
        while not self.stop.is_set():
            for d in list(self.devices):
                d.tick(time.monotonic())
            time.sleep(0.002)

    def close(self) -> None:
        self.stop.set()
        self.t.join()
        self.n1.stop()
        self.n2.stop()
        self.host.shutdown()
        self.dev.shutdown()


@pytest.fixture
def wire() -> Iterator[Wire]:
    w = Wire()
    yield w
    w.close()


def test_ivt_result_frame_layout() -> None:
    # datasheet 8.2: mux, counter<<4 | state, signed 32 bit big endian; -12.345 A = -12345 mA
    f = ivt_s.result_frame(0, 5, 0, -12345)
    assert f == bytes([0x00, 0x50, 0xFF, 0xFF, 0xCF, 0xC7])
    assert ivt_s.parse_result(0x521, f) == (0, 5, 0, -12345)
    with pytest.raises(ValueError):
        ivt_s.parse_result(0x522, f)  # mux 0 on the U1 identifier


def test_ivt_configures_reads_and_trips_on_each_fault(wire: Wire) -> None:
    vals = {"i": 42.5, "u1": 355.2, "u2": 354.9}
    emu = IvtSEmulator(wire.dev, lambda: (vals["i"], vals["u1"], vals["u2"], 0.0, 31.0))
    wire.devices.append(emu)
    drv = ivt_s.IvtS(wire.host, cycle_ms=20, timeout_cycles=5)
    wire.host_sensors.append(drv)
    drv.configure()
    assert emu.running and emu.cycle_ms[:4] == [20] * 4 and emu.cycle_ms[4:] == [100] * 4

    def reading() -> ivt_s.IvtReading | None:
        try:
            return drv.reading(time.monotonic())
        except DeviceFault:
            return None

    r = wait_for(reading, 3, "every IVT-S result")
    assert r.i_a == pytest.approx(42.5, abs=1e-3) and r.u_v[0] == pytest.approx(355.2, abs=1e-3)
    assert r.u_v[1] == pytest.approx(354.9, abs=1e-3) and r.t_c == pytest.approx(31.0, abs=0.1)

    def fault() -> str | None:
        try:
            drv.reading(time.monotonic())
            return None
        except DeviceFault as f:
            return f.kind

    for kind, want in (("silent", "current_sensor_timeout"), ("stuck", "current_sensor_stuck"),
                       ("error", "current_sensor_error")):
        emu.inject(kind)
        assert wait_for(fault, 3, f"IVT-S {kind}") == want
        emu.inject("clear")
        wait_for(lambda: fault() is None, 3, f"IVT-S recovered from {kind}")


def test_ivt_configuration_without_a_sensor_times_out(wire: Wire) -> None:
    drv = ivt_s.IvtS(wire.host)
    with pytest.raises(DeviceFault) as e:
        drv.configure(timeout_s=0.1)
    assert e.value.kind == "current_sensor_timeout"


def test_imd_info_layout() -> None:
    # manual 6.1: IMD_Info words little endian: R_ISO, D_IMC_STATUS, D_VIFC_STATUS
    assert info_frame(1234, 0x21, 0x0100) == bytes([0xD2, 0x04, 0x21, 0x00, 0x00, 0x01])


def test_iso165c_configures_reads_and_trips_on_each_fault(wire: Wire) -> None:
    r = {"kohm": 3000.0}
    emu = Iso165cEmulator(wire.dev, lambda: r["kohm"], period_s=0.05)
    wire.devices.append(emu)
    drv = Iso165c(wire.host, min_kohm=100, warning_kohm=300, timeout_ms=1000)
    wire.host_sensors.append(drv)

    def state() -> str:
        try:
            rd = drv.reading(time.monotonic())
            return "warning" if rd.warning else "ok"
        except DeviceFault as f:
            return f.kind

    # before it is switched on the monitor reports "measurement deactivated": not trusted
    assert wait_for(lambda: state() == "insulation_monitor_error", 3, "monitor off = untrusted")
    drv.configure()
    assert emu.measuring and emu.err_kohm == 100 and emu.wrn_kohm == 300
    wait_for(lambda: state() == "ok", 3, "healthy insulation")
    r["kohm"] = 250.0
    wait_for(lambda: state() == "warning", 3, "insulation warning")
    emu.inject("insulation", r_kohm=40)
    wait_for(lambda: state() == "insulation_fault", 3, "insulation fault")
    emu.inject("clear")
    emu.inject("failure")
    wait_for(lambda: state() == "insulation_monitor_error", 3, "monitor failure")
    emu.inject("clear")
    emu.inject("silent")
    wait_for(lambda: state() == "insulation_monitor_timeout", 3, "monitor silent")
