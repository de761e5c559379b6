"""The pack engine: typed configuration and a thin, zero-copy wrapper over the Rust core.

A pack file (``mbms/data/packs/*.toml`` or your own) has the engine's tables ``pack``, ``estimator``,
``protection``, ``limits`` and ``balancing`` (strict: unknown keys are errors naming the
dotted field) and may carry other top-level tables (``node``, ``hardware``) that belong to the
node runtime and are ignored here.

    cfg = PackConfig.from_toml(mbms.paths.pack_file("example_pack"))
    eng = Engine(cfg)
    res = eng.step(t_s, v_cell_v, t_cell_c, i_a)     # numpy float64 arrays in
    res.soc, res.dcl_a, res.action, res.faults, res.balance ...

Current is positive when discharging. Time ``t_s`` must increase from step to step.
"""

from __future__ import annotations

import dataclasses
import os
import typing
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path
from typing import Any, Literal, overload

import numpy as np

from mbms import _core
from mbms.config import read_layers, resolve_cell, view
from mbms.errors import ConfigError, InputError
from mbms.types import Fault  # the one fault form (rule, level name, index) in every mode

#: Index of a pack-level fault (not tied to a cell or a sensor).
PACK_INDEX = 0xFFFF_FFFF

ENGINE_TABLES = ("pack", "estimator", "protection", "limits", "balancing")


# ---------------------------------------------------------------------------------------------
# Configuration: read-only views of the engine config as the Rust core normalised it (schema,
# defaults and ranges in rust_core/src/engine.rs and the modules it names). No field has a
# default here: every value comes from Rust.
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PackSection:
    name: str
    cell: str
    series: int
    parallel: int
    temp_sensors: int
    r_extra_ohm: float


@dataclass(frozen=True)
class EstimatorConfig:
    soc_process_noise: float
    v1_process_noise: float
    voltage_noise_v: float
    model_error_v: float
    current_noise_a: float
    current_offset_a: float
    current_offset_tau_s: float
    initial_soc_sigma: float
    rest_current_a: float
    rest_time_s: float
    rest_end_min_s: float
    rest_ocv_sigma_v: float
    r0_gain: float
    capacity_min_dsoc: float
    capacity_forgetting: float
    capacity_prior_sigma: float
    capacity_prior_ratio: float


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
    mode: typing.Literal["off", "voltage", "soc"]
    threshold: float
    hysteresis: float
    min_cell_v: float
    inhibit_temp_c: float
    max_current_a: float
    max_cells: int
    active_plan: bool
    decision_period_s: float


@dataclass(frozen=True)
class PackConfig:
    """The engine's part of a pack file, normalised and validated by the Rust core."""

    pack: PackSection
    estimator: EstimatorConfig
    protection: ProtectionConfig
    limits: LimitsConfig
    balancing: BalancingConfig
    #: the file the config came from (for error messages), if any
    source: str | None = field(default=None, compare=False)
    #: the resolved cell parameter file
    cell_path: Path | None = field(default=None, compare=False)

    @classmethod
    def from_toml(cls, path: str | os.PathLike[str]) -> PackConfig:
        """The engine tables of a pack file (following ``extends``); other tables (``node``,
        ``hardware``) belong to the node runtime and are skipped."""
        layers = read_layers(path)
        return cls._from_normalised(_core.engine_config_layers(layers), layers[-1][0])

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str | None = None) -> PackConfig:
        """Engine tables given as data (``pack``, ``estimator``, ``protection``, ``limits``,
        ``balancing``); other top-level keys are errors."""
        if not isinstance(d, dict):
            raise ConfigError("<root>", f"expected a table, got {type(d).__name__}", source)
        return cls._from_normalised(_core.engine_config(d, source), source)

    @classmethod
    def _from_normalised(cls, data: dict[str, Any], source: str | None) -> PackConfig:
        cell_path = resolve_cell(data["pack"]["cell"], source)
        try:
            _core.CellModel.from_toml(cell_path.read_text())
        except ValueError as exc:
            raise ConfigError("pack.cell", f"{cell_path}: {exc}", source) from None
        parts = {name: view(typing.get_type_hints(cls)[name], data[name]) for name in ENGINE_TABLES}
        return cls(**parts, source=source, cell_path=cell_path)

    def engine_dict(self) -> dict[str, Any]:
        """The engine tables as plain data (what the Rust core deserialises). Every field is
        there (the view is complete), so a ``dataclasses.replace``-d copy keeps its changes."""
        return {name: _plain(getattr(self, name)) for name in ENGINE_TABLES}


def _plain(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: _plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, tuple):
        return [_plain(x) for x in obj]
    return obj


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
    """Severity order of the protection levels; a fault carries the level's name
    (``mbms.types.LEVELS``), ``Level[f.level.upper()]`` orders it."""

    WARNING = 0
    ALARM = 1
    FAULT = 2


RULES: tuple[str, ...] = tuple(_core.engine_rules())


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
    # 1σ of each cell's SOC: the filter's P_zz plus the capacity estimate's own variance over
    # the charge counted since the last anchor (engine/cells.rs, the consider term)
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
        return np.ascontiguousarray(x)
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
        # config errors arrive as mbms.errors.ConfigError, raised by the core
        self._core = _core.Engine(config.engine_dict(), config.cell_path.read_text(), config.source)
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
            # the core's one fault form: {"rule", "level" (name), "index"}
            faults=tuple(Fault.from_dict(f) for f in d["faults"]),
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

    @overload
    def step_many(self, t_s: np.ndarray, v_cell_v: np.ndarray, t_cell_c: np.ndarray, i_a: np.ndarray,
                  record_soc: Literal[False] = False) -> None: ...
    @overload
    def step_many(self, t_s: np.ndarray, v_cell_v: np.ndarray, t_cell_c: np.ndarray, i_a: np.ndarray,
                  record_soc: Literal[True]) -> np.ndarray: ...
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
