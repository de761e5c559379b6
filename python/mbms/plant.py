"""The plant: a simulated battery of parallel strings on one DC bus (Rust: ``mbms._core.Plant``).

The plant holds the "true" cells; each string's BMU sees them only through :meth:`Plant.measure`
(noisy, offset, quantised, sampled, possibly faulty sensors). The description is a TOML file
or a dict (schema: ``sim/src/plant/config.rs``; example: ``mbms/data/systems/example_plant.toml``).
The Rust core checks it and fills in the defaults; the typed dataclasses below mirror the
result. Cell names are resolved with :func:`mbms.paths.cell_file`; a CSV load profile is read
here (the Rust core does no I/O) and handed over as a ``table`` profile.

Units are in the names; current and power are positive when discharging.
"""

from __future__ import annotations

import copy
import json
import math
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from mbms import _core
from mbms.errors import ConfigError, InputError
from mbms.paths import cell_file
# a plant sample is the Measurement a hardware adapter delivers (one type for both)
from mbms.types import Contactors, Measurement

FloatArray = npt.NDArray[np.float64]

__all__ = [
    "BusConfig",
    "ContactorConfig",
    "Contactors",
    "EnergyCounters",
    "LoadProfile",
    "Measurement",
    "Plant",
    "PlantDescription",
    "ScheduledFault",
    "SensorConfig",
    "SensorSpec",
    "StringDescription",
    "ThermalConfig",
    "VariationConfig",
]


# --------------------------------------------------------------------------------------------
# Description (mirrors sim/src/plant/config.rs)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VariationConfig:
    capacity_sigma: float
    resistance_sigma: float
    soc_sigma: float
    self_discharge_a: float
    self_discharge_sigma_a: float
    capacity_scale: float
    resistance_scale: float


@dataclass(frozen=True)
class ContactorConfig:
    close_time_s: float
    open_time_s: float
    r_precharge_ohm: float


@dataclass(frozen=True)
class SensorSpec:
    """``reading = quantise(true·(1+gain_error) + offset + N(0,offset_sigma) + noise·N(0,1), lsb)``."""

    noise: float
    offset: float
    offset_sigma: float
    gain_error: float
    lsb: float
    period_s: float


@dataclass(frozen=True)
class SensorConfig:
    temp_sensors: int | None
    cell_voltage: SensorSpec
    cell_temp: SensorSpec
    current: SensorSpec
    string_voltage: SensorSpec
    bus_voltage: SensorSpec


@dataclass(frozen=True)
class StringDescription:
    series: int
    parallel: int
    cell: str
    cell_path: Path
    initial_soc: float
    r_extra_ohm: float
    initial_temp_c: float | None
    variation: VariationConfig
    contactors: ContactorConfig
    balancing_r_bleed_ohm: float
    sensors: SensorConfig
    dcdc_max_a: float | None
    dcdc_efficiency: float | None


@dataclass(frozen=True)
class BusConfig:
    capacitance_f: float
    r_bleed_ohm: float | None
    v_initial_v: float


@dataclass(frozen=True)
class ThermalConfig:
    coolant_c: float
    ambient_c: float
    g_cool_w_per_k: float
    g_ambient_w_per_k: float
    g_neighbour_w_per_k: float


@dataclass(frozen=True)
class LoadProfile:
    """``kind``: constant | steps | table | drive (a CSV file arrives as ``table``);
    ``quantity``: current_a | power_w; ``params``: the other keys of the profile."""

    kind: str
    quantity: str
    params: Mapping[str, Any]


@dataclass(frozen=True)
class ScheduledFault:
    at_s: float
    fault: Mapping[str, Any]


@dataclass(frozen=True)
class PlantDescription:
    strings: tuple[StringDescription, ...]
    bus: BusConfig
    load: LoadProfile
    thermal: ThermalConfig
    faults: tuple[ScheduledFault, ...]
    source: str | None = None
    #: The normalised description as the Rust core reads it (defaults filled in).
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False)
    cell_texts: tuple[str, ...] = field(default=(), repr=False)

    @classmethod
    def from_toml(cls, path: str | Path) -> PlantDescription:
        p = Path(path)
        try:
            data = tomllib.loads(p.read_text())
        except OSError as exc:
            raise ConfigError("<file>", f"cannot read: {exc}", str(p)) from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError("<toml>", str(exc), str(p)) from exc
        return cls.from_dict(data, source=str(p))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: str | None = None) -> PlantDescription:
        """Check a description; relative cell and CSV paths are taken from ``source``'s folder."""
        if not isinstance(d, Mapping):
            raise ConfigError("<root>", f"expected a table, got {type(d).__name__}", source)
        base = Path(source).parent if source else Path.cwd()
        data = copy.deepcopy(dict(d))
        load = data.get("load")
        if isinstance(load, Mapping) and load.get("kind") == "csv":
            data["load"] = _csv_to_table(load, base, source)
        try:
            text = json.dumps(data, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise ConfigError("<root>", f"expected plain numbers, strings, tables and lists: {exc}", source) from exc
        try:
            raw = json.loads(_core.plant_config_normalize(text))
        except ValueError as exc:
            raise _config_error(exc, source) from None
        strings = []
        texts = []
        for k, s in enumerate(raw["strings"]):
            path = _resolve_cell(s["cell"], base, f"strings[{k}].cell", source)
            cell_text = path.read_text()
            try:
                _core.CellModel.from_toml(cell_text)
            except ValueError as exc:
                raise ConfigError(f"strings[{k}].cell", f"{path}: {exc}", source) from None
            texts.append(cell_text)
            sens = s["sensors"]
            dcdc = s["dcdc"]
            strings.append(
                StringDescription(
                    series=s["series"],
                    parallel=s["parallel"],
                    cell=s["cell"],
                    cell_path=path,
                    initial_soc=s["initial_soc"],
                    r_extra_ohm=s["r_extra_ohm"],
                    initial_temp_c=s["initial_temp_c"],
                    variation=VariationConfig(**s["variation"]),
                    contactors=ContactorConfig(**s["contactors"]),
                    balancing_r_bleed_ohm=s["balancing"]["r_bleed_ohm"],
                    sensors=SensorConfig(
                        temp_sensors=sens["temp_sensors"],
                        **{
                            name: SensorSpec(**sens[name])
                            for name in ("cell_voltage", "cell_temp", "current", "string_voltage", "bus_voltage")
                        },
                    ),
                    dcdc_max_a=dcdc["max_a"] if dcdc else None,
                    dcdc_efficiency=dcdc["efficiency"] if dcdc else None,
                )
            )
        ld = dict(raw["load"])
        kind = ld.pop("kind")
        quantity = ld.pop("quantity")
        return cls(
            strings=tuple(strings),
            bus=BusConfig(**raw["bus"]),
            load=LoadProfile(kind=kind, quantity=quantity, params=ld),
            thermal=ThermalConfig(**raw["thermal"]),
            faults=tuple(ScheduledFault(at_s=f["at_s"], fault=f["fault"]) for f in raw["faults"]),
            source=source,
            raw=raw,
            cell_texts=tuple(texts),
        )

    @property
    def n_strings(self) -> int:
        return len(self.strings)


def _config_error(exc: ValueError | TypeError, source: str | None) -> ConfigError:
    args = exc.args[0] if len(exc.args) == 1 and isinstance(exc.args[0], tuple) else exc.args
    if len(args) == 2 and all(isinstance(a, str) for a in args):
        fld, msg = args
        return ConfigError(fld, msg, source)
    return ConfigError("<root>", str(exc), source)


def _resolve_cell(name: str, base: Path, fld: str, source: str | None) -> Path:
    p = Path(name)
    if p.suffix == ".toml" and not p.is_absolute() and (base / p).exists():
        return base / p
    try:
        return cell_file(name)
    except ConfigError as exc:
        raise ConfigError(fld, str(exc).split(": ", 1)[-1], source) from None


def _csv_to_table(load: Mapping[str, Any], base: Path, source: str | None) -> dict[str, Any]:
    """Read a ``kind = "csv"`` profile (columns ``t_s,value``, optional header, ``#`` comments)."""
    unknown = set(load) - {"kind", "quantity", "path", "repeat"}
    if unknown:
        raise ConfigError(f"load.{sorted(unknown)[0]}", "unknown field; expected quantity, path, repeat", source)
    if not isinstance(load.get("path"), str):
        raise ConfigError("load.path", "expected the path of a CSV file (columns t_s,value)", source)
    path = Path(load["path"])
    if not path.is_absolute():
        path = base / path
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise ConfigError("load.path", f"cannot read {path}: {exc}", source) from exc
    t_s: list[float] = []
    value: list[float] = []
    header_seen = False
    for n, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        cols = [c.strip() for c in line.split(",")]
        try:
            t, v = float(cols[0]), float(cols[1])
        except (ValueError, IndexError):
            if not t_s and not header_seen:
                header_seen = True
                continue
            raise ConfigError("load.path", f"{path} line {n}: expected two numbers `t_s,value`, got {line!r}", source) from None
        t_s.append(t)
        value.append(v)
    if not t_s:
        raise ConfigError("load.path", f"{path}: no data rows", source)
    out: dict[str, Any] = {"kind": "table", "t_s": t_s, "value": value}
    for key in ("quantity", "repeat"):
        if key in load:
            out[key] = load[key]
    return out


# --------------------------------------------------------------------------------------------
# Simulation
# --------------------------------------------------------------------------------------------




@dataclass(frozen=True)
class MainClose:
    """One physical close of a string's main path (plant truth)."""

    t_s: float
    string: int
    dv_true_v: float  # |V_bus - V_string| just before the contact closed
    inrush_a: float  # largest |string current| in the step starting at the close (NaN: not yet)


@dataclass(frozen=True)
class EnergyCounters:
    """Cumulative energies (J); ``residual`` = cells_out − everything it went into (≈ 0)."""

    cells_out: float
    load: float
    loss_cells: float
    loss_wiring: float
    loss_internal: float
    loss_bus_bleed: float
    loss_dcdc: float
    bus_capacitor: float
    bus_capacitor_initial: float
    residual: float


class Plant:
    """The simulated battery. ``desc``: a :class:`PlantDescription`, a dict or a TOML path."""

    def __init__(self, desc: PlantDescription | Mapping[str, Any] | str | Path, seed: int = 0) -> None:
        if isinstance(desc, (str, Path)):
            desc = PlantDescription.from_toml(desc)
        elif not isinstance(desc, PlantDescription):
            desc = PlantDescription.from_dict(desc)
        if not (isinstance(seed, int) and 0 <= seed < 2**64):
            raise InputError(f"seed: expected an integer in 0..2**64, got {seed!r}")
        self.desc = desc
        try:
            self._p = _core.Plant(json.dumps(desc.raw), list(desc.cell_texts), seed)
        except ValueError as exc:
            raise _config_error(exc, desc.source) from None

    # ---- driving it ----

    @property
    def n_strings(self) -> int:
        return int(self._p.n_strings)

    @property
    def t_s(self) -> float:
        return float(self._p.t_s)

    def series(self, k: int) -> int:
        return int(self._p.series(k))

    def step(self, dt_s: float) -> None:
        """Advance by ``dt_s`` seconds (GIL released)."""
        _positive_dt(dt_s)
        self._p.step(float(dt_s))

    def run(self, dt_s: float, n_steps: int, measure_all: bool = False) -> None:
        """``n_steps`` steps with commands and load unchanged (one call into Rust); with
        ``measure_all`` every string's sensors are also sampled after each step."""
        _positive_dt(dt_s)
        if n_steps < 0:
            raise InputError(f"n_steps: expected >= 0, got {n_steps}")
        self._p.run(float(dt_s), int(n_steps), bool(measure_all))

    def set_command(
        self,
        k: int,
        neg: bool = False,
        pos: bool = False,
        pre: bool = False,
        balance: Sequence[bool] | npt.NDArray[np.bool_] | None = None,
        dcdc_setpoint_a: float | None = None,
    ) -> None:
        """Contactor coils, balance switches (one per series element) and DC/DC set-point."""
        bal = None if balance is None else [bool(b) for b in balance]
        try:
            self._p.set_command(int(k), bool(neg), bool(pos), bool(pre), bal, dcdc_setpoint_a)
        except ValueError as exc:
            raise InputError(str(exc)) from None

    def set_load_a(self, i_a: float) -> None:
        """Override the load: a current (A, discharge positive) until cleared."""
        try:
            self._p.set_load_a(float(i_a))
        except ValueError as exc:
            raise InputError(str(exc)) from None

    def set_load_w(self, p_w: float) -> None:
        """Override the load: a power (W, discharge positive) until cleared."""
        try:
            self._p.set_load_w(float(p_w))
        except ValueError as exc:
            raise InputError(str(exc)) from None

    def clear_load_override(self) -> None:
        self._p.clear_load_override()

    def inject(self, fault: Mapping[str, Any] | None = None, /, **kw: Any) -> None:
        """Inject a fault now: ``inject(kind="sensor_stuck", string=0, sensor="cell_voltage",
        channel=3)`` or ``inject({...})`` (the tables of ``[[faults]].fault``)."""
        f = dict(fault or {}, **kw)
        try:
            self._p.inject(json.dumps(f, allow_nan=False))
        except (TypeError, ValueError) as exc:
            raise _config_error(exc, None) from None

    def measure(self, k: int, fresh: bool = False) -> Measurement:
        """What string ``k``'s BMU sees; ``fresh``: current, string and bus voltage converted now
        (the on-demand sample a node takes before it closes a main contactor)."""
        t, v, tc, i, vs, vb, fb, valid = self._p.measure(int(k), bool(fresh))
        return Measurement(t, v, tc, i, vs, vb, Contactors(*fb), valid)

    def arm_join_load_step(self, k: int | None, after_s: float, delta_a: float) -> None:
        """When string ``k`` (any if None) closes its precharge relay, change the load by
        ``delta_a`` (A) ``after_s`` later; fires once (a load stepping during a join)."""
        try:
            self._p.arm_join_load_step(None if k is None else int(k), float(after_s), float(delta_a))
        except ValueError as exc:
            raise InputError(str(exc)) from None

    def clear_join_load_steps(self) -> None:
        """Remove the join load steps, armed and applied."""
        self._p.clear_join_load_steps()

    def join_steps_fired(self) -> list[tuple[float, float]]:
        """(plant time s, ΔA) of every join load step applied so far."""
        return [(float(t), float(a)) for t, a in self._p.join_steps_fired()]

    def main_close_events(self) -> list[MainClose]:
        """Every physical main close so far, recorded by the plant at the instant it happened:
        the true |V_bus - V_string| just before it and the inrush (S3 on the truth)."""
        return [MainClose(*e) for e in self._p.main_close_events()]

    # ---- truth (tests, plots) ----

    def v_bus_v(self) -> float:
        return float(self._p.v_bus_v())

    def string_current_a(self) -> FloatArray:
        """Step-average current of each string in the last step (A, discharge positive)."""
        return self._p.string_current_a()

    def string_peak_current_a(self) -> FloatArray:
        """Largest |current| of each string within the last step (inrush)."""
        return self._p.string_peak_current_a()

    def string_ocv_v(self) -> FloatArray:
        return self._p.string_ocv_v()

    def string_voltage_v(self) -> FloatArray:
        return self._p.string_voltage_v()

    def string_thevenin(self) -> tuple[FloatArray, FloatArray]:
        """(E_v, R_ohm) of each string in the last step (R: cells + r_extra, no precharge)."""
        e, r = self._p.string_thevenin()
        return e, r

    def cell_soc(self, k: int) -> FloatArray:
        return self._p.cell_soc(int(k))

    def cell_temp_c(self, k: int) -> FloatArray:
        return self._p.cell_temp_c(int(k))

    def cell_capacity_scale(self, k: int) -> FloatArray:
        return self._p.cell_capacity_scale(int(k))

    def contactor_state(self, k: int) -> Contactors:
        return Contactors(*self._p.contactor_state(int(k)))

    def load_a(self) -> float:
        """Load current of the last step (0 while no main contactor is closed)."""
        return float(self._p.load_a())

    def load_limited(self) -> bool:
        return bool(self._p.load_limited())

    def capacitor_current_a(self) -> float:
        return float(self._p.capacitor_current_a())

    def bleed_current_a(self) -> float:
        return float(self._p.bleed_current_a())

    def energy(self) -> EnergyCounters:
        return EnergyCounters(**self._p.energy())


def _positive_dt(dt_s: float) -> None:
    if not (isinstance(dt_s, (int, float)) and math.isfinite(dt_s) and dt_s > 0):
        raise InputError(f"dt_s: expected a positive finite number of seconds, got {dt_s!r}")
