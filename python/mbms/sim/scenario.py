"""Simulation scenarios: what battery, which load, which faults, for how long.

A scenario is a TOML file (see ``mbms/data/scenarios/``). Its schema is the simulator's Rust type
``mbms_sim::scenario::Scenario`` (serde, unknown keys rejected, defaults filled and ranges checked
in Rust; JSON Schema ``schemas/scenario.json``); this module reads the file, resolves ``extends``
(file I/O) and holds a read-only view of the normalised tables:

* ``[scenario]``: ``name``, ``description``, ``duration_s``, ``dt_s``, ``seed``, ``mode``
  (``fast`` | ``processes``), ``record_every_s``, and ``extends``: a base scenario
  (``"default"`` for the embedded one, or a path relative to this file) whose tables this file
  overrides key by key (arrays such as ``plant.strings``, ``network`` and ``events`` are
  replaced whole);
* ``[system]``: the peer coordination settings shared by all nodes (any field of the consensus
  ``PeerConfig`` but ``node_id`` and ``members``), plus ``drift_ppm`` (one clock error per node);
* ``[node]``: node settings, the ``[node]`` table of a pack file (schema ``schemas/node.json``),
  given to every node in both modes;
* ``[engine]``: ``pack`` = the pack file whose engine tables every node uses (``series``,
  ``parallel``, ``cell`` and ``temp_sensors`` are taken from the node's plant string);
* ``[plant]``: the plant description (``mbms.plant`` schema: strings, bus, load, thermal,
  scheduled plant faults), checked here and kept as written;
* ``[[network]]``: network events: ``{at_s, kind = "loss", value}``, ``{kind = "delay",
  max_ms}``, ``{kind = "duplicate", value}``, ``{kind = "partition", groups = [[1,2],[3,4]]}``,
  ``{kind = "heal"}``, ``{kind = "kill", node}``, ``{kind = "restart", node}``;
* ``[[events]]``: plant faults injected at run time: ``{at_s, fault = {kind = ..., ...}}``
  (same fault schema as ``plant.faults``).

Every error is a :class:`mbms.errors.ConfigError` naming the file and the dotted field.
"""

from __future__ import annotations

import copy
import tomllib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from mbms import _core
from mbms.errors import ConfigError


@dataclass(frozen=True)
class NetworkEvent:
    """View of one ``[[network]]`` entry; only the key its kind takes is set (None otherwise)."""

    at_s: float
    kind: str
    value: float | None = None
    max_ms: int | None = None
    groups: tuple[tuple[int, ...], ...] | None = None
    node: int | None = None

    @classmethod
    def of(cls, d: dict[str, Any]) -> NetworkEvent:
        groups = d.get("groups")
        return cls(at_s=d["at_s"], kind=d["kind"], value=d.get("value"), max_ms=d.get("max_ms"),
                   groups=tuple(tuple(g) for g in groups) if groups is not None else None, node=d.get("node"))


@dataclass(frozen=True)
class PlantEvent:
    at_s: float
    fault: dict[str, Any]


@dataclass(frozen=True)
class Scenario:
    """Read-only view of a normalised scenario (``raw``: the tables as the core returned them)."""

    raw: dict[str, Any]
    source: str | None = None

    # views of the normalised tables: nothing here restates a default
    @property
    def name(self) -> str:
        return str(self.raw["scenario"]["name"])

    @property
    def description(self) -> str:
        return str(self.raw["scenario"]["description"])

    @property
    def duration_s(self) -> float:
        return float(self.raw["scenario"]["duration_s"])

    @property
    def dt_s(self) -> float:
        return float(self.raw["scenario"]["dt_s"])

    @property
    def seed(self) -> int:
        return int(self.raw["scenario"]["seed"])

    @property
    def mode(self) -> str:
        return str(self.raw["scenario"]["mode"])

    @property
    def record_every_s(self) -> float:
        return float(self.raw["scenario"]["record_every_s"])

    @property
    def system(self) -> dict[str, Any]:
        """Every PeerConfig setting shared by the nodes (``drift_ppm`` apart)."""
        return {k: v for k, v in _present(self.raw["system"]).items() if k != "drift_ppm"}

    @property
    def system_given(self) -> frozenset[str]:
        """The ``[system]`` keys the scenario stated (the rest are the core's defaults): what a
        system file written from it states, so that what such a file derives unless stated (the
        join hold lead and lease of an ``[inverter]``) is derived."""
        return frozenset(self.raw["system_given"])

    @property
    def drift_ppm(self) -> tuple[float, ...]:
        return tuple(float(x) for x in self.raw["system"].get("drift_ppm", ()))

    @property
    def node(self) -> dict[str, Any]:
        return _present(self.raw["node"])

    @property
    def engine_pack(self) -> str:
        return str(self.raw["engine"]["pack"])

    @property
    def plant(self) -> dict[str, Any]:
        return copy.deepcopy(self.raw["plant"])

    @property
    def network(self) -> tuple[NetworkEvent, ...]:
        return tuple(NetworkEvent.of(e) for e in self.raw["network"])

    @property
    def events(self) -> tuple[PlantEvent, ...]:
        return tuple(PlantEvent(float(e["at_s"]), _present(e["fault"])) for e in self.raw["events"])

    @property
    def n_packs(self) -> int:
        return len(self.raw["plant"]["strings"])

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_toml(cls, path: str | Path) -> Scenario:
        p = Path(path)
        try:
            text = p.read_text()
        except OSError as exc:
            raise ConfigError("scenario", f"cannot read scenario file: {exc.strerror}", str(p)) from exc
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError("<toml>", f"not valid TOML: {exc}", str(p)) from exc
        data = _resolve_extends(data, p.parent, str(p), depth=0)
        return cls.from_dict(data, source=str(p))

    @classmethod
    def default(cls) -> Scenario:
        """The embedded default scenario (the README's main job)."""
        return cls.from_dict(_default_data(), source="<embedded default scenario>")

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str | None = None) -> Scenario:
        """Check and normalise a scenario's tables (``extends`` resolved) in the core."""
        if not isinstance(data, dict):
            raise ConfigError("<root>", f"expected a table, got {type(data).__name__}", source)
        return cls(raw=_core.scenario_config(data, source), source=source)

    # ---------------------------------------------------------------- overrides
    def with_overrides(
        self,
        *,
        packs: int | None = None,
        duration_s: float | None = None,
        seed: int | None = None,
        mode: str | None = None,
    ) -> Scenario:
        """The same scenario with command-line overrides applied (and re-validated)."""
        data = self.to_dict()
        if packs is not None:
            if packs < 1 or packs > 64:
                raise ConfigError("--packs", f"expected 1..64, got {packs}", self.source)
            strings = data["plant"]["strings"]
            data["plant"]["strings"] = [copy.deepcopy(strings[k % len(strings)]) for k in range(packs)]
            data["system"].pop("drift_ppm", None)
            data["network"] = [e for e in data["network"] if e.get("node", 1) <= packs and all(
                m <= packs for g in e.get("groups", []) for m in g)]
            data["events"] = [e for e in data["events"] if e["fault"].get("string", 0) < packs]
            data["plant"]["faults"] = [f for f in data["plant"].get("faults", []) if f["fault"].get("string", 0) < packs]
        if duration_s is not None:
            data["scenario"]["duration_s"] = duration_s
            data["network"] = [e for e in data["network"] if e["at_s"] <= duration_s]
            data["events"] = [e for e in data["events"] if e["at_s"] <= duration_s]
        if seed is not None:
            data["scenario"]["seed"] = seed
        if mode is not None:
            data["scenario"]["mode"] = mode
        return Scenario.from_dict(data, source=self.source)

    def to_dict(self) -> dict[str, Any]:
        """The normalised tables (a copy, TOML-writable: an absent optional setting is left
        out), ``[system]`` as stated: ``from_dict(to_dict())`` gives the same scenario."""
        out = _present(self.raw)
        given = set(out.pop("system_given"))
        out["system"] = {k: v for k, v in out["system"].items() if k in given or k == "drift_ppm"}
        return out


def _present(d: dict[str, Any]) -> dict[str, Any]:
    """A copy of a table without the optional settings that are absent (None): TOML has no
    null, and an absent key means the same to the schema."""
    def clean(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items() if x is not None}
        if isinstance(v, list):
            return [clean(x) for x in v]
        return v
    out: dict[str, Any] = clean(d)
    return out


def _table(data: dict[str, Any], name: str, fail: Any, required: bool = True) -> dict[str, Any]:
    t = data.get(name)
    if t is None:
        if required:
            raise fail(name, "missing table")
        return {}
    if not isinstance(t, dict):
        raise fail(name, f"expected a table, got {type(t).__name__}")
    return t


def _default_data() -> dict[str, Any]:
    text = resources.files("mbms").joinpath("data/scenarios/default.toml").read_text()
    return tomllib.loads(text)


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _resolve_extends(data: dict[str, Any], folder: Path, source: str, depth: int) -> dict[str, Any]:
    sc = data.get("scenario")
    if not isinstance(sc, dict) or "extends" not in sc:
        return data
    if depth > 8:
        raise ConfigError("scenario.extends", "more than 8 levels of extends (a cycle?)", source)
    ref = sc["extends"]
    if not isinstance(ref, str):
        raise ConfigError("scenario.extends", "expected \"default\" or a path to a scenario file", source)
    if ref == "default":
        base = _default_data()
    else:
        bp = (folder / ref).resolve()
        try:
            base = tomllib.loads(bp.read_text())
        except OSError as exc:
            raise ConfigError("scenario.extends", f"cannot read {bp}: {exc.strerror}", source) from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError("scenario.extends", f"{bp} is not valid TOML: {exc}", source) from exc
        base = _resolve_extends(base, bp.parent, str(bp), depth + 1)
    over = copy.deepcopy(data)
    del over["scenario"]["extends"]
    merged = _deep_merge(base, over)
    merged["scenario"].pop("extends", None)
    return merged
