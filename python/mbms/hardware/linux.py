"""Hardware adapter ``linux``: a pack on a Linux controller, through its real device drivers.

* cells and temperatures: an LTC6813-1 isoSPI chain on spidev (:mod:`mbms.hardware.ltc6813`);
* string current, string voltage (U1, inside the contactors) and bus voltage (U2, outside):
  an IVT-S on the pack's sensor CAN bus (:mod:`mbms.hardware.ivt_s`);
* insulation: an iso165C on the same bus (:mod:`mbms.hardware.iso165c`), if configured;
* contactors and their auxiliary contacts: GPIO lines (:mod:`mbms.hardware.gpio_contactors`).

Every :meth:`command` sets the coils at once and starts one acquisition in the acquisition
thread (the SPI and CAN calls block; they never run on the node's event loop): configuration
write with the balancing switches, cell conversion and read, GPIO/NTC conversion and read, every
``open_wire_every`` acquisitions the open-wire check, then the latest current sensor and
insulation values, the auxiliary contacts and the contactor cross-checks. Any
:class:`DeviceFault` makes the sample invalid; :meth:`diagnosis` names the device and the
protection, and the runtime's fail-safe opens the contactors with that reason. A device is
never trusted on a guess: a silent sensor is a fault, not a zero.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from typing import Any

import can
import numpy as np

from mbms.config_views import HardwareSection
from mbms.hardware import ivt_s
from mbms.hardware.base import DeviceFault, Hardware
from mbms.hardware.gpio_contactors import ContactorCheck, GpioContactors, LineMap
from mbms.hardware.iso165c import Iso165c
from mbms.hardware.ltc6813 import Ltc6813Chain, SpiLike, open_spi
from mbms.transport.can import open_bus
from mbms.types import Contactors, Measurement

log = logging.getLogger("mbms.hardware.linux")


class LinuxHardware(Hardware):
    @classmethod
    def from_config(cls, cfg: HardwareSection) -> LinuxHardware:
        """The ``mbms.hardware`` entry point ``linux`` (tables checked by the core)."""
        assert cfg.afe and cfg.sensor_can and cfg.current_sensor and cfg.contactors
        return cls(cfg)

    def __init__(self, cfg: HardwareSection, clock: Any = time.monotonic) -> None:
        assert cfg.afe and cfg.sensor_can and cfg.current_sensor and cfg.contactors
        self.cfg = cfg
        self.clock = clock
        self.timeout_s = cfg.link_timeout_ms / 1000.0
        a, c = cfg.afe, cfg.contactors
        self.n_cells = a.ics * a.cells_per_ic
        self.n_temps = a.ics * a.temps_per_ic
        self.spi: SpiLike | None = None
        self.chain: Ltc6813Chain | None = None
        self.bus: can.BusABC | None = None
        self.notifier: can.Notifier | None = None
        self.ivt: ivt_s.IvtS | None = None
        self.imd: Iso165c | None = None
        self.gpio = GpioContactors(c.chip, LineMap(c.neg_out, c.pos_out, c.pre_out, c.neg_fb, c.pos_fb, c.pre_fb))
        self.check = ContactorCheck(c.i_open_a, c.dv_closed_v, c.confirm_ms)
        self._gpio_lock = threading.Lock()
        self._kick = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._latest: tuple[Measurement, float] | None = None
        self._diag: str | None = None
        self._last_valid: Measurement | None = None
        self._balance = np.zeros(self.n_cells, dtype=bool)
        self._commanded = Contactors()
        self._configured = False
        self._started_at = 0.0
        self.acquisitions = 0
        self.faults: dict[str, int] = {}
        self.acq_ms: list[float] = []  # time of each chain acquisition (the measured budget)
        self.cycle_ms: list[float] = []  # the whole acquisition incl. CAN, GPIO and checks

    @property
    def name(self) -> str:
        assert self.cfg.afe and self.cfg.sensor_can and self.cfg.contactors
        return f"linux(afe {self.cfg.afe.device}, can {self.cfg.sensor_can.interface}:{self.cfg.sensor_can.channel}, gpio {self.cfg.contactors.chip})"

    async def start(self) -> None:
        a, sc = self.cfg.afe, self.cfg.sensor_can
        assert a and sc and self.cfg.current_sensor
        self.gpio.open()  # outputs requested inactive: contactors open from the first instant
        self.spi = open_spi(a.device, a.spi_hz)
        self.chain = Ltc6813Chain(self.spi, a.ics, a.cells_per_ic, a.temps_per_ic, a.dcto_code,
                                  (a.ntc_beta_k, a.ntc_r25_ohm, a.ntc_pullup_ohm))
        self.bus = open_bus(sc)
        cs = self.cfg.current_sensor
        self.ivt = ivt_s.IvtS(self.bus, cs.cycle_ms, cs.timeout_cycles, cs.current_sign, clock=self.clock)
        sensors: list[Any] = [self.ivt]
        if self.cfg.insulation is not None:
            ins = self.cfg.insulation
            self.imd = Iso165c(self.bus, ins.min_kohm, ins.warning_kohm, ins.timeout_ms, clock=self.clock)
            sensors.append(self.imd)
        self.notifier = can.Notifier(self.bus, [ivt_s.handle(sensors)], timeout=0.1)
        self._started_at = self.clock()
        self._thread = threading.Thread(target=self._run, daemon=True, name="mbms-acquisition")
        self._thread.start()

    # ------------------------------------------------------------------ acquisition thread
    def _configure(self) -> None:
        assert self.ivt is not None
        self.ivt.configure(timeout_s=0.2)
        if self.imd is not None:
            self.imd.configure()
        self._configured = True

    def _run(self) -> None:
        while not self._stop.is_set():
            self._kick.wait(timeout=0.5)
            self._kick.clear()
            if self._stop.is_set():
                return
            try:
                self._acquire_once()
            except Exception:  # noqa: BLE001 - never let the thread die: a dead thread = stale = open
                log.exception("acquisition failed")
                self._publish(None, "acquisition error (see log)")

    def _acquire_once(self) -> None:
        assert self.chain is not None and self.ivt is not None and self.cfg.afe is not None
        t0 = time.perf_counter()
        try:
            if not self._configured:
                self._configure()
            self.chain.balance = self._balance.copy()
            s = self.chain.acquire()
            self.acq_ms.append(s.t_acq_s * 1000)
            every = self.cfg.afe.open_wire_every
            if every and self.acquisitions % every == 0:
                opens = self.chain.open_wire_check()
                if opens:
                    where = ", ".join(f"IC {i} pin C{p}" for i, p in opens)
                    raise DeviceFault("afe_open_wire", f"AFE open sense wire: {where}")
            now = self.clock()
            cur = self.ivt.reading(now)
            if self.imd is not None:
                self.imd.reading(now)
            with self._gpio_lock:
                fb = self.gpio.feedback()
                cmd = self._commanded
            self.check.check(now, cmd, fb, cur.i_a, cur.u_v[0], cur.u_v[1])
            meas = Measurement(t_s=now, v_cell_v=s.v_cell_v, t_cell_c=s.t_c, i_a=cur.i_a,
                               v_string_v=cur.u_v[0], v_bus_v=cur.u_v[1], feedback=fb, valid=True)
            self._publish(meas, None)
        except DeviceFault as f:
            self.faults[f.kind] = self.faults.get(f.kind, 0) + 1
            self._publish(None, f"{f.kind}: {f}")
        finally:
            self.acquisitions += 1
            self.cycle_ms.append((time.perf_counter() - t0) * 1000)
            if len(self.cycle_ms) > 100_000:
                del self.cycle_ms[:50_000], self.acq_ms[:50_000]

    def _publish(self, meas: Measurement | None, diag: str | None) -> None:
        """A valid sample, or (``meas`` None) the last one marked invalid with ``diag``. Before the
        first valid sample nothing is published (no reading to show): the runtime's "no
        measurement" fail-safe then carries ``diag`` as its reason."""
        if diag != self._diag and diag is not None:
            log.warning("sample invalid: %s", diag)
        self._diag = diag
        if meas is not None:
            self._last_valid = meas
        else:
            if self._last_valid is None:
                return
            meas = dataclasses.replace(self._last_valid, t_s=self.clock(), valid=False)
        self._latest = (meas, self.clock())

    # ------------------------------------------------------------------ the Hardware interface
    def read(self) -> tuple[Measurement, float] | None:
        return self._latest

    def command(self, contactors: Contactors, balance: np.ndarray) -> None:
        with self._gpio_lock:
            try:
                self.gpio.set(contactors)
                self._commanded = contactors
            except DeviceFault as f:
                self._diag = f"{f.kind}: {f}"
        if len(balance) == self.n_cells:
            self._balance = np.asarray(balance, dtype=bool)
        self._kick.set()

    def request_sample(self) -> None:
        self._kick.set()

    def taken_after(self, sample: tuple[Measurement, float], after: float) -> bool:
        # An acquisition already under way when the fresh sample was asked for publishes after
        # the request, but may have read the IVT (string current, string and bus voltage) before
        # it: its t_s is the instant of that read, on this driver's clock.
        return sample[0].t_s > after

    def diagnosis(self) -> str | None:
        return self._diag

    def link_ok(self, now: float) -> bool:
        return self._latest is not None and now - self._latest[1] <= self.timeout_s

    def close(self) -> None:
        self._stop.set()
        self._kick.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
        with self._gpio_lock:
            self.gpio.close()  # coils off, lines released
        if self.notifier is not None:
            self.notifier.stop()
        if self.bus is not None:
            self.bus.shutdown()
        if self.spi is not None:
            self.spi.close()

    def summary(self) -> dict[str, Any]:
        """Acquisitions, faults by kind and the measured acquisition times (ms)."""
        out: dict[str, Any] = {"acquisitions": self.acquisitions, "faults": dict(self.faults)}
        for name, xs in (("afe_acq_ms", self.acq_ms), ("cycle_ms", self.cycle_ms)):
            if xs:
                arr = np.asarray(xs)
                out[name] = {"mean": float(arr.mean()), "p99": float(np.percentile(arr, 99)), "max": float(arr.max())}
        if self.chain is not None:
            out["afe"] = vars(self.chain.stats)
        return out
