"""Fast mode: plant, N nodes and the peer network in one Rust loop on a virtual clock.

The node logic is ``NodeCore``, the same Rust object ``mbms node`` drives in real time; the
peer network is simulated (loss, delay/reordering, duplication, partitions, kill/restart,
clock drift) and deterministic for a seed.
"""

from __future__ import annotations

import copy
import functools
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mbms import _core
from mbms.config import read_layers
from mbms.errors import ConfigError
from mbms import paths
from mbms.paths import cell_file
from mbms.sim.scenario import Scenario

ENGINE_TABLES = ("pack", "estimator", "protection", "limits", "balancing")


@dataclass
class RunResult:
    scenario: Scenario
    system: np.ndarray  # (rows, len(system_channels))
    strings: np.ndarray  # (rows, n, len(string_channels))
    system_channels: list[str]
    string_channels: list[str]
    report: dict[str, Any]
    wall_s: float

    def sys(self, name: str) -> np.ndarray:
        return self.system[:, self.system_channels.index(name)]

    def per_string(self, name: str) -> np.ndarray:
        return self.strings[:, :, self.string_channels.index(name)]


def pack_file(name: str) -> Path:
    """The scenario's pack file: a path, or a name in the pack folders (:func:`mbms.paths.pack_file`)."""
    return paths.pack_file(name, field="engine.pack")


def engine_configs(scenario: Scenario) -> list[dict[str, Any]]:
    """Per string: the engine tables of the scenario's pack file, with the string's own
    series, parallel, cell and temperature-sensor count from the plant description."""
    path = pack_file(scenario.engine_pack)
    # the one config reader (follows extends; defaults and ranges from the core)
    base = _core.engine_config_layers(read_layers(path))
    out = []
    for k, s in enumerate(scenario.plant["strings"]):
        cfg = copy.deepcopy(base)
        pack = cfg.setdefault("pack", {})
        pack["series"] = s["series"]
        pack["parallel"] = s["parallel"]
        pack["cell"] = s["cell"]
        sensors = s.get("sensors", {})
        pack["temp_sensors"] = sensors.get("temp_sensors", s["series"]) if isinstance(sensors, dict) else s["series"]
        if "r_extra_ohm" in s:
            pack["r_extra_ohm"] = s["r_extra_ohm"]
        out.append(cfg)
    return out


def build(scenario: Scenario) -> Any:
    """The ``_core.FastSim`` for a scenario (configs resolved, errors named by field)."""
    try:
        return _build(scenario)
    except ConfigError as exc:
        if exc.source is None:
            raise ConfigError(exc.field, exc.message, scenario.source) from exc
        raise


def _check_events(scenario: Scenario) -> None:
    """Run-time plant faults are checked up front, as scheduled faults of the plant would be."""
    if not scenario.events:
        return
    plant = dict(scenario.plant)
    plant["faults"] = [{"at_s": e.at_s, "fault": e.fault} for e in scenario.events]
    try:
        _core.plant_config_normalize(json.dumps(plant))
    except ValueError as exc:
        field, msg = _split(exc)
        raise ConfigError(field.replace("faults[", "events[", 1), msg, scenario.source) from exc


def _split(exc: ValueError) -> tuple[str, str]:
    """(field, message) of a ValueError from the core: args (field, message) or "field: msg"."""
    if len(exc.args) == 2 and all(isinstance(a, str) for a in exc.args):
        return exc.args[0], exc.args[1]
    field, _, msg = str(exc).partition(": ")
    return (field, msg) if msg else ("scenario", str(exc))


def _build(scenario: Scenario) -> Any:
    strings = scenario.plant["strings"]
    for k, s in enumerate(strings):
        for key in ("series", "parallel", "cell"):
            if key not in s:
                raise ConfigError(f"plant.strings[{k}].{key}", "missing", scenario.source)
    cells = [cell_file(s["cell"]).read_text() for s in strings]
    _check_events(scenario)
    engines = engine_configs(scenario)
    dt_ms = round(scenario.dt_s * 1000)
    record_every = max(1, round(scenario.record_every_s / scenario.dt_s))
    try:
        return _core.FastSim(
            json.dumps(scenario.plant),
            cells,
            engines,
            dict(scenario.system),
            dict(scenario.node),
            list(scenario.drift_ppm),
            scenario.seed,
            dt_ms,
            record_every,
        )
    except ConfigError as exc:  # raised by the core, naming the field
        raise ConfigError(exc.field, exc.message, exc.source or scenario.source) from None
    except ValueError as exc:
        field, msg = _split(exc)
        raise ConfigError(field, msg, scenario.source) from exc


def run(
    scenario: Scenario,
    progress: Callable[[float, Any], None] | None = None,
    chunk_s: float = 10.0,
) -> RunResult:
    """Run a scenario in fast mode; ``progress(t_s, sim)`` is called between chunks."""
    import time

    sim = build(scenario)
    # timeline of actions: (t_ms, order, callable)
    actions: list[tuple[int, int, Callable[[], None]]] = []
    for i, ev in enumerate(scenario.network):
        actions.append((round(ev.at_s * 1000), i, _network_action(sim, ev, scenario.n_packs)))
    for i, pe in enumerate(scenario.events):
        fault_json = json.dumps(pe.fault)
        actions.append((round(pe.at_s * 1000), 10_000 + i, functools.partial(sim.inject, fault_json)))
    actions.sort(key=lambda a: (a[0], a[1]))
    end_ms = round(scenario.duration_s * 1000)
    chunk_ms = max(round(chunk_s * 1000), round(scenario.dt_s * 1000))
    t0 = time.perf_counter()
    t = 0
    ai = 0
    while t < end_ms:
        nxt = min(end_ms, t + chunk_ms)
        if ai < len(actions) and actions[ai][0] < nxt:
            nxt = max(actions[ai][0], t)
        sim.run_until(nxt)
        t = nxt
        while ai < len(actions) and actions[ai][0] <= t:
            try:
                actions[ai][2]()
            except ValueError as exc:
                raise ConfigError("events", str(exc), scenario.source) from exc
            ai += 1
        if progress is not None:
            progress(t / 1000, sim)
        if t >= end_ms:
            break
    wall = time.perf_counter() - t0
    system, strings = sim.records()
    report = sim.report()
    return RunResult(
        scenario=scenario,
        system=np.asarray(system),
        strings=np.asarray(strings),
        system_channels=list(_core.FastSim.system_channels()),
        string_channels=list(_core.FastSim.string_channels()),
        report=dict(report),
        wall_s=wall,
    )


def _network_action(sim: Any, ev: Any, n: int) -> Callable[[], None]:
    if ev.kind == "loss":
        return lambda: sim.set_loss(ev.value)
    if ev.kind == "duplicate":
        return lambda: sim.set_duplicate(ev.value)
    if ev.kind == "delay":
        return lambda: sim.set_delay(ev.max_ms)
    if ev.kind == "partition":
        groups = [0] * n
        for g, members in enumerate(ev.groups):
            for m in members:
                groups[m - 1] = g
        return lambda: sim.set_groups(groups)
    if ev.kind == "heal":
        def heal() -> None:
            sim.set_groups([0] * n)
            sim.set_loss(0.0)
            sim.set_delay(0)
            sim.set_duplicate(0.0)

        return heal
    if ev.kind == "kill":
        return lambda: sim.kill(ev.node - 1)
    if ev.kind == "restart":
        return lambda: sim.restart(ev.node - 1)
    raise ConfigError("network.kind", f"unknown kind {ev.kind!r}")
