"""The plant's strings as devices: ``mbms plant --devices DIR`` serves, for every string k,

* its LTC6813-1 chain on the emulated spidev socket ``DIR/afe{k}.sock``,
* its contactor coil and auxiliary-contact lines on the emulated GPIO chip ``DIR/gpio{k}.sock``
  (lines 0 neg, 1 pos, 2 pre coil outputs; 3 neg, 4 pos, 5 pre auxiliary contacts),
* its IVT-S and iso165C on its own sensor CAN bus: python-can ``udp_multicast`` on port
  ``can_port + k``,

next to the plant link of :class:`mbms.plant_server.PlantServer` (whose orchestration ops,
``state``, ``truth``, ``load``, keep working). The emulators read the plant's sensor model
(``Plant.measure``: noise, offsets, quantisation, the plant's own sensor and contactor faults)
once per plant step; coil and balancing commands from the device threads are applied to the
plant in the plant's own step (one thread touches the plant).

Device faults are injected over the plant link: ``{"op": "device_fault", "k": 0, "device":
"afe" | "ivt" | "imd", "kind": ..., ...}``; plant faults (a welded contactor) with
``{"op": "inject", "fault": {...}}`` (the tables of ``mbms.plant.Plant.inject``).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import threading
from typing import Any

import can
import numpy as np

from mbms.emulators.afe_chain import AfeSocketServer, Ltc6813ChainEmulator
from mbms.emulators.gpio_chip import GpioChipServer
from mbms.emulators.iso165c import Iso165cEmulator
from mbms.emulators.ivt_s import IvtSEmulator
from mbms.errors import FrameError
from mbms.plant_link import pack, unpack
from mbms.plant_server import PlantServer
from mbms.transport.can import open_bus
from mbms.config_views import CanTransport

log = logging.getLogger("mbms.emulators")

#: Line offsets on every string's emulated chip.
NEG_OUT, POS_OUT, PRE_OUT, NEG_FB, POS_FB, PRE_FB = range(6)
GPIO_LINES = 8
#: The multicast group of the emulated sensor buses: not python-can's default group, which the
#: peer transport uses between processes, so a port shared by chance never mixes the two.
SENSOR_CAN_GROUP = "239.74.163.9"
#: A healthy pack's insulation resistance (kΩ) as the emulated monitor reports it.
R_ISO_HEALTHY_KOHM = 5000.0


def chain_layout(series: int, temps: int) -> tuple[int, int, int]:
    """(ics, cells_per_ic, temps_per_ic): the fewest LTC6813 (18 inputs, 9 GPIOs) that split the
    string's cells and NTCs evenly."""
    for ics in range(max(1, math.ceil(series / 18)), series + 1):
        if series % ics == 0 and temps % ics == 0 and temps // ics <= 9:
            return ics, series // ics, temps // ics
    raise ValueError(f"no LTC6813 chain measures {series} cells and {temps} NTCs evenly")


@dataclasses.dataclass
class _String:
    k: int
    layout: tuple[int, int, int]
    afe: Ltc6813ChainEmulator
    afe_server: AfeSocketServer
    gpio: GpioChipServer
    bus: can.BusABC
    ivt: IvtSEmulator
    imd: Iso165cEmulator
    notifier: can.Notifier
    outputs: tuple[bool, bool, bool] = (False, False, False)
    balance: np.ndarray | None = None
    dirty: bool = False


class DeviceServer(PlantServer):
    def __init__(self, plant: Any, n_strings: int, devices_dir: str, can_interface: str = "udp_multicast",
                 can_channel: str = SENSOR_CAN_GROUP, can_port: int = 45000, **kw: Any) -> None:
        super().__init__(plant, n_strings, **kw)
        os.makedirs(devices_dir, exist_ok=True)
        self.dir = devices_dir
        self.meas = [plant.measure(k) for k in range(n_strings)]
        self.lock = threading.Lock()
        self.strings: list[_String] = []
        for k in range(n_strings):
            m = self.meas[k]
            layout = chain_layout(len(m.v_cell_v), len(m.t_cell_c))
            afe = Ltc6813ChainEmulator(*layout, source=self._cells(k))
            afe.on_balance = self._on_balance(k)
            afe_server = AfeSocketServer(afe, os.path.join(devices_dir, f"afe{k}.sock"))
            gpio = GpioChipServer(os.path.join(devices_dir, f"gpio{k}.sock"), GPIO_LINES,
                                  inputs=self._feedback(k), on_outputs=self._on_outputs(k))
            bus = open_bus(CanTransport(interface=can_interface, channel=can_channel, port=can_port + k,
                                        bitrate=500_000, fd=False))
            ivt = IvtSEmulator(bus, self._ivt_source(k))
            imd = Iso165cEmulator(bus, lambda: R_ISO_HEALTHY_KOHM)

            def dispatch(msg: can.Message, ivt: IvtSEmulator = ivt, imd: Iso165cEmulator = imd) -> None:
                with self.lock:
                    ivt.on_message(msg) or imd.on_message(msg)

            notifier = can.Notifier(bus, [dispatch], timeout=0.1)
            self.strings.append(_String(k, layout, afe, afe_server, gpio, bus, ivt, imd, notifier))

    # ------------------------------------------------------------------ sources and sinks
    def _cells(self, k: int) -> Any:
        return lambda: (self.meas[k].v_cell_v, self.meas[k].t_cell_c)

    def _ivt_source(self, k: int) -> Any:
        def src() -> tuple[float, float, float, float, float]:
            m = self.meas[k]
            t = float(np.mean(m.t_cell_c)) if len(m.t_cell_c) else 25.0
            return (m.i_a, m.v_string_v, m.v_bus_v, m.v_bus_v, t)
        return src

    def _feedback(self, k: int) -> Any:
        def fb(line: int) -> bool:
            f = self.meas[k].feedback
            state: bool = {NEG_FB: f.neg, POS_FB: f.pos, PRE_FB: f.pre}.get(line, False)
            return state
        return fb

    def _on_outputs(self, k: int) -> Any:
        def out(levels: dict[int, bool]) -> None:
            s = self.strings[k] if k < len(self.strings) else None
            if s is None:
                return
            with self.lock:
                s.outputs = (levels[NEG_OUT], levels[POS_OUT], levels[PRE_OUT])
                s.dirty = True
        return out

    def _on_balance(self, k: int) -> Any:
        def bal(bits: np.ndarray) -> None:
            if k < len(self.strings):
                s = self.strings[k]
                s.balance = bits
                s.dirty = True
        return bal

    # ------------------------------------------------------------------ the plant's step
    def tick(self) -> None:
        now = self.clock()
        with self.lock:
            for s in self.strings:
                if s.dirty:
                    neg, pos, pre = s.outputs
                    self.plant.set_command(s.k, neg=neg, pos=pos, pre=pre, balance=s.balance)
                    self.contactors[s.k] = s.outputs
                    s.dirty = False
                self.last_cmd[s.k] = now  # the coils hold while the lines are held (GPIO, not a watchdog)
        super().tick()
        self.meas = [self.plant.measure(k) for k in range(self.n)]
        with self.lock:
            for s in self.strings:
                m = self.meas[s.k]
                if m.valid and all(np.isfinite([m.i_a, m.v_string_v, m.v_bus_v])):
                    s.ivt.tick(now)
                s.imd.tick(now)

    # ------------------------------------------------------------------ the plant link's extra ops
    def handle(self, raw: bytes) -> bytes | None:
        try:
            obj = unpack(raw)
        except FrameError:
            return super().handle(raw)
        op = obj.get("op")
        if op == "device_fault":
            try:
                k = obj.get("k")
                if not isinstance(k, int) or not 0 <= k < self.n:
                    raise FrameError(f"'device_fault': k must be a string index 0..{self.n - 1}")
                devs: dict[str, Any] = {"afe": self.strings[k].afe, "ivt": self.strings[k].ivt, "imd": self.strings[k].imd}
                dev = devs.get(str(obj.get("device")))
                if dev is None:
                    raise FrameError("'device_fault': device must be afe, ivt or imd")
                args = {a: v for a, v in obj.items() if a not in ("op", "k", "device", "kind")}
                with self.lock:
                    dev.inject(str(obj.get("kind")), **args)
                log.warning("device fault injected: string %d %s %s %s", k, obj.get("device"), obj.get("kind"), args)
                return pack({"op": "device_fault", "ok": True})
            except (FrameError, ValueError, TypeError) as exc:
                self.malformed += 1
                return pack({"op": "error", "msg": str(exc)})
        if op == "inject":
            try:
                plant: Any = self.plant
                plant.inject(obj.get("fault"))
                log.warning("plant fault injected: %s", obj.get("fault"))
                return pack({"op": "inject", "ok": True})
            except Exception as exc:  # noqa: BLE001 - a bad fault table is answered, never kills the plant
                self.malformed += 1
                return pack({"op": "error", "msg": f"{type(exc).__name__}: {exc}"})
        if op == "devices":
            return pack({"op": "devices", "strings": [
                {"k": s.k, "layout": list(s.layout), "afe_frames": s.afe.frames, "gpio_requests": s.gpio.requests,
                 "gpio_releases": s.gpio.releases, "ivt_commands": s.ivt.commands, "imd_measuring": s.imd.measuring,
                 "outputs": list(s.outputs)} for s in self.strings]})
        return super().handle(raw)

    def close(self) -> None:
        for s in self.strings:
            s.notifier.stop()
            s.bus.shutdown()
            s.afe_server.close()
            s.gpio.close()

