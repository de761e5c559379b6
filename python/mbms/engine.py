"""The pack engine: typed configuration and a thin, zero-copy wrapper over the Rust core.

A pack file (``hw/packs/*.toml``) has the engine's tables ``pack``, ``estimator``,
``protection``, ``limits`` and ``balancing`` (strict: unknown keys are errors naming the
dotted field) and may carry other top-level tables (``node``, ``hardware``) that belong to the
node runtime and are ignored here.

    cfg = PackConfig.from_toml("hw/packs/example_pack.toml")
    eng = Engine(cfg)
    res = eng.step(t_s, v_cell_v, t_cell_c, i_a)     # numpy float64 arrays in
    res.soc, res.dcl_a, res.action, res.faults, res.balance ...

Current is positive when discharging. Time ``t_s`` must increase from step to step.
"""

from __future__ import annotations

import dataclasses
import json
import os
import types
import typing
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path
from typing import Any

import numpy as np

from mbms import _core
from mbms.errors import ConfigError, InputError
from mbms.paths import cell_file

import tomllib  # standard library from Python 3.11, the floor (pyproject requires-python)

#: Index of a pack-level fault (not tied to a cell or a sensor).
PACK_INDEX = 0xFFFF_FFFF

ENGINE_TABLES = ("pack", "estimator", "protection", "limits", "balancing")


# ---------------------------------------------------------------------------------------------
# Configuration dataclasses (field names and defaults mirror rust_core/src/engine.rs)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PackSection:
    cell: str
    series: int
    parallel: int
    temp_sensors: int
    r_extra_ohm: float = 0.0
    name: str = ""


@dataclass(frozen=True)
class EstimatorConfig:
    soc_process_noise: float = 1e-9
    v1_process_noise: float = 1e-7
    voltage_noise_v: float = 0.002
    model_error_v: float = 0.01
    current_noise_a: float = 0.1
    current_offset_a: float = 0.1
    initial_soc_sigma: float = 0.05
    rest_current_a: float = 0.5
    rest_time_s: float = 1800.0
    rest_ocv_sigma_v: float = 0.003
    r0_step_min_a: float = 5.0
    r0_gain: float = 0.05
    capacity_min_dsoc: float = 0.2
    capacity_forgetting: float = 0.98
    capacity_prior_sigma: float = 0.05


@dataclass(frozen=True)
class Thresholds:
    warning: float
    alarm: float
    fault: float
    hysteresis: float
    warning_delay_s: float
    alarm_delay_s: float
    fault_delay_s: float


@dataclass(frozen=True)
class SensorConfig:
    cell_v_min_v: float
    cell_v_max_v: float
    open_wire_v: float
    temp_min_c: float
    temp_max_c: float
    current_max_abs_a: float
    stuck_samples: int
    fault_delay_s: float


@dataclass(frozen=True)
class ProtectionConfig:
    cell_overvoltage_v: Thresholds
    cell_undervoltage_v: Thresholds
    overtemp_charge_c: Thresholds
    undertemp_charge_c: Thresholds
    overtemp_discharge_c: Thresholds
    undertemp_discharge_c: Thresholds
    overcurrent_charge_a: Thresholds
    overcurrent_discharge_a: Thresholds
    voltage_spread_v: Thresholds
    temp_spread_c: Thresholds
    sensors: SensorConfig


@dataclass(frozen=True)
class Derating:
    x: tuple[float, ...]
    factor: tuple[float, ...]


@dataclass(frozen=True)
class LimitsConfig:
    max_discharge_a: float
    max_charge_a: float
    max_discharge_peak_a: float
    max_charge_peak_a: float
    continuous_horizon_s: float
    peak_horizon_s: float
    voltage_margin_v: float
    recover_a_per_s: float
    warning_factor: float
    alarm_ramp_a_per_s: float
    discharge_temp_derating: Derating
    charge_temp_derating: Derating
    discharge_soc_derating: Derating
    charge_soc_derating: Derating


@dataclass(frozen=True)
class BalancingConfig:
    mode: typing.Literal["off", "voltage", "soc"] = "soc"
    threshold: float = 0.02
    hysteresis: float = 0.01
    min_cell_v: float = 3.3
    inhibit_temp_c: float = 50.0
    max_current_a: float = 1e9
    max_cells: int = 0
    active_plan: bool = False
    decision_period_s: float = 0.0


@dataclass(frozen=True)
class PackConfig:
    """The engine's part of a pack file, validated (structure here, semantics by the core)."""

    pack: PackSection
    protection: ProtectionConfig
    limits: LimitsConfig
    estimator: EstimatorConfig = field(default_factory=EstimatorConfig)
    balancing: BalancingConfig = field(default_factory=BalancingConfig)
    #: the file the config came from (for error messages), if any
    source: str | None = field(default=None, compare=False)
    #: the resolved cell parameter file
    cell_path: Path | None = field(default=None, compare=False)

    @classmethod
    def from_toml(cls, path: str | os.PathLike[str]) -> PackConfig:
        p = Path(path)
        try:
            text = p.read_text()
        except OSError as exc:
            raise ConfigError("<file>", f"cannot read pack file: {exc}", str(p)) from exc
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError("<toml>", str(exc), str(p)) from exc
        return cls.from_dict(data, source=str(p))

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str | None = None) -> PackConfig:
        if not isinstance(d, dict):
            raise ConfigError("<root>", f"expected a table, got {type(d).__name__}", source)
        engine_part = {k: v for k, v in d.items() if k in ENGINE_TABLES}
        kwargs = _build_fields(cls, engine_part, "", source, skip=("source", "cell_path"))
        cfg = cls(**kwargs, source=source)
        # semantic validation (threshold order, ranges) by the core, which names the field
        try:
            _core.validate_engine_config(json.dumps(cfg.engine_dict()))
        except ValueError as exc:
            fld, msg = _split_core_error(exc)
            raise ConfigError(fld, msg, source) from None
        cell_path = _resolve_cell(cfg.pack.cell, source)
        try:
            _core.CellModel.from_toml(cell_path.read_text())
        except ValueError as exc:
            raise ConfigError("pack.cell", f"{cell_path}: {exc}", source) from None
        return dataclasses.replace(cfg, cell_path=cell_path)

    def engine_dict(self) -> dict[str, Any]:
        """The engine tables as plain data (what the Rust core deserialises)."""
        out = {}
        for name in ENGINE_TABLES:
            out[name] = _to_plain(getattr(self, name))
        return out


def _resolve_cell(name: str, source: str | None) -> Path:
    # a relative path is relative to the pack file first, then a name in hw/cells
    if source is not None:
        candidate = Path(source).parent / name
        if candidate.suffix == ".toml" and candidate.is_file():
            return candidate
    try:
        return cell_file(name)
    except ConfigError as exc:
        msg = str(exc).split(": ", 1)[-1]
        raise ConfigError("pack.cell", msg, source) from None


def _split_core_error(exc: ValueError) -> tuple[str, str]:
    if len(exc.args) == 2 and all(isinstance(a, str) for a in exc.args):
        return exc.args[0], exc.args[1]
    return "<config>", str(exc)


def _to_plain(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return {f.name: _to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, tuple):
        return [_to_plain(x) for x in obj]
    return obj


def _build_fields(
    cls: type, data: Any, prefix: str, source: str | None, skip: tuple[str, ...] = ()
) -> dict[str, Any]:
    """Strictly convert a table to the keyword arguments of dataclass ``cls``."""
    where = prefix.rstrip(".") or "<root>"
    if not isinstance(data, dict):
        raise ConfigError(where, f"expected a table, got {type(data).__name__}", source)
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name not in skip}
    for key in data:
        if key not in fields:
            raise ConfigError(
                f"{prefix}{key}", f"unknown key; expected one of {sorted(fields)}", source
            )
    kwargs: dict[str, Any] = {}
    for name, f in fields.items():
        dotted = f"{prefix}{name}"
        if name not in data:
            required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
            if required:
                raise ConfigError(dotted, "missing required key", source)
            continue
        kwargs[name] = _convert(hints[name], data[name], dotted, source)
    return kwargs


def _convert(tp: Any, value: Any, dotted: str, source: str | None) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return tp(**_build_fields(tp, value, dotted + ".", source))
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(dotted, f"expected a number, got {value!r}", source)
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(dotted, f"expected an integer, got {value!r}", source)
        if value < 0:
            raise ConfigError(dotted, f"expected an integer >= 0, got {value}", source)
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(dotted, f"expected true or false, got {value!r}", source)
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(dotted, f"expected a string, got {value!r}", source)
        return value
    if origin is typing.Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise ConfigError(dotted, f"expected one of {list(allowed)}, got {value!r}", source)
        return value
    if origin is tuple:
        if not isinstance(value, list):
            raise ConfigError(dotted, f"expected an array of numbers, got {value!r}", source)
        return tuple(_convert(float, x, f"{dotted}[{i}]", source) for i, x in enumerate(value))
    if isinstance(tp, types.UnionType):  # pragma: no cover - not used by the engine tables
        raise ConfigError(dotted, "unsupported type", source)
    raise TypeError(f"unsupported config field type {tp!r} at {dotted}")  # pragma: no cover


# ---------------------------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------------------------


class Action(IntEnum):
    """What the pack must do, ordered by severity."""

    NONE = 0
    DERATE = 1
    RAMP_DOWN = 2
    OPEN = 3


class Level(IntEnum):
    WARNING = 0
    ALARM = 1
    FAULT = 2


RULES: tuple[str, ...] = tuple(_core.engine_rules())


@dataclass(frozen=True)
class Fault:
    """An active condition: the highest confirmed level of ``rule`` at ``index`` (cell,
    temperature sensor, or :data:`PACK_INDEX` for pack-level rules)."""

    rule: str
    level: Level
    index: int

    @property
    def pack_level(self) -> bool:
        return self.index == PACK_INDEX


@dataclass(frozen=True)
class Transfer:
    """Active balancing: move ``amount_ah`` from cell ``src`` to cell ``dst``."""

    src: int
    dst: int
    amount_ah: float


@dataclass(frozen=True)
class StepResult:
    t_s: float
    action: Action
    faults: tuple[Fault, ...]
    soc: np.ndarray
    soc_sigma: np.ndarray
    soc_cc: np.ndarray
    soc_min: float
    soc_max: float
    soc_mean: float
    soe_wh: float
    ocv_string_v: float
    r_string_ohm: float
    dcl_a: float
    ccl_a: float
    dcl_peak_a: float
    ccl_peak_a: float
    balance: np.ndarray
    soh_capacity: float
    soh_resistance: float
    capacity_ah: np.ndarray
    transfers: tuple[Transfer, ...]


def _as_f64_1d(x: Any, name: str, n: int) -> np.ndarray:
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{name}: expected a numpy float64 array, got {type(x).__name__}")
    if x.dtype != np.float64:
        raise TypeError(f"{name}: expected dtype float64, got {x.dtype}")
    if x.ndim != 1:
        raise InputError(f"{name}: expected a 1-d array, got shape {x.shape}")
    if x.shape[0] != n:
        raise InputError(f"{name}: expected {n} values, got {x.shape[0]}")
    if not x.flags.c_contiguous:
        x = np.ascontiguousarray(x)
    return x


def _as_float(x: Any, name: str) -> float:
    if isinstance(x, bool) or not isinstance(x, (int, float, np.floating, np.integer)):
        raise TypeError(f"{name}: expected a number, got {type(x).__name__}")
    return float(x)


class Engine:
    """The pack engine of one pack."""

    def __init__(self, config: PackConfig) -> None:
        if config.cell_path is None:
            raise ConfigError("pack.cell", "config has no resolved cell file; use PackConfig.from_*")
        self.config = config
        try:
            self._core = _core.Engine(
                json.dumps(config.engine_dict()), config.cell_path.read_text()
            )
        except ValueError as exc:
            fld, msg = _split_core_error(exc)
            raise ConfigError(fld, msg, config.source) from None
        self._t_s = float("nan")

    @property
    def n_cells(self) -> int:
        return int(self._core.n_cells)

    @property
    def n_temps(self) -> int:
        return int(self._core.n_temps)

    def step(self, t_s: float, v_cell_v: np.ndarray, t_cell_c: np.ndarray, i_a: float) -> StepResult:
        """One step: cell voltages (V), sensor temperatures (°C), string current (A,
        discharge positive) at time ``t_s`` (s). NaN readings are failed sensors (they trip
        protection); wrong lengths raise InputError, wrong types TypeError."""
        t = _as_float(t_s, "t_s")
        i = _as_float(i_a, "i_a")
        v = _as_f64_1d(v_cell_v, "v_cell_v", self.n_cells)
        tc = _as_f64_1d(t_cell_c, "t_cell_c", self.n_temps)
        try:
            self._core.step(t, v, tc, i)
        except ValueError as exc:
            raise InputError(str(exc)) from None
        self._t_s = t
        return self.result()

    def result(self) -> StepResult:
        """The outputs of the last step."""
        d = self._core.output()
        return StepResult(
            t_s=self._t_s,
            action=Action(d["action"]),
            faults=tuple(Fault(r, Level(lv), ix) for r, lv, ix in d["faults"]),
            soc=d["soc"],
            soc_sigma=d["soc_sigma"],
            soc_cc=d["soc_cc"],
            soc_min=d["soc_min"],
            soc_max=d["soc_max"],
            soc_mean=d["soc_mean"],
            soe_wh=d["soe_wh"],
            ocv_string_v=d["ocv_string_v"],
            r_string_ohm=d["r_string_ohm"],
            dcl_a=d["dcl_a"],
            ccl_a=d["ccl_a"],
            dcl_peak_a=d["dcl_peak_a"],
            ccl_peak_a=d["ccl_peak_a"],
            balance=d["balance"],
            soh_capacity=d["soh_capacity"],
            soh_resistance=d["soh_resistance"],
            capacity_ah=d["capacity_ah"],
            transfers=tuple(Transfer(a, b, q) for a, b, q in d["transfers"]),
        )

    def step_many(
        self,
        t_s: np.ndarray,
        v_cell_v: np.ndarray,
        t_cell_c: np.ndarray,
        i_a: np.ndarray,
        record_soc: bool = False,
    ) -> np.ndarray | None:
        """Replay many steps in Rust (rows are steps); returns the SOC history if asked."""
        arrays = {"t_s": t_s, "v_cell_v": v_cell_v, "t_cell_c": t_cell_c, "i_a": i_a}
        for name, a in arrays.items():
            if not isinstance(a, np.ndarray) or a.dtype != np.float64:
                raise TypeError(f"{name}: expected a numpy float64 array")
        try:
            out = self._core.step_many(
                np.ascontiguousarray(t_s),
                np.ascontiguousarray(v_cell_v),
                np.ascontiguousarray(t_cell_c),
                np.ascontiguousarray(i_a),
                record_soc,
            )
        except ValueError as exc:
            raise InputError(str(exc)) from None
        if len(t_s):
            self._t_s = float(t_s[-1])
        return out

    def reset_faults(self, t_s: float) -> None:
        """Clear latched faults whose condition has cleared."""
        self._core.reset_faults(_as_float(t_s, "t_s"))

    def export_state(self) -> bytes:
        return bytes(self._core.export_state())

    def import_state(self, data: bytes) -> list[str]:
        """Restore an exported state; returns what was dropped as implausible (SOC outside the
        filter's range, capacity or resistance outside the estimators' bands of the cell file):
        empty if everything was restored. A structurally bad blob raises InputError."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"data: expected bytes, got {type(data).__name__}")
        try:
            return list(self._core.import_state(bytes(data)))
        except ValueError as exc:
            raise InputError(str(exc)) from None
