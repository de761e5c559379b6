"""Simulation scenarios: what battery, which load, which faults, for how long.

A scenario is a TOML file (see ``examples/scenarios/``) with the tables

* ``[scenario]``: ``name``, ``description``, ``duration_s``, ``dt_s``, ``seed``, ``mode``
  (``fast`` | ``processes``), ``record_every_s``, and ``extends``: a base scenario
  (``"default"`` for the embedded one, or a path relative to this file) whose tables this file
  overrides key by key (arrays such as ``plant.strings``, ``network`` and ``events`` are
  replaced whole);
* ``[system]``: the peer coordination settings shared by all nodes (``system_id``,
  ``heartbeat_ms``, ``dv_close_v``, ``lease_ms``, ...: any field of the consensus
  ``PeerConfig``), plus ``drift_ppm`` (one clock error per node, optional);
* ``[node]``: node settings, the ``[node]`` table of a pack file (``stale_ms``, ``auto_reset_s``,
  ``feedback_mismatch_ms``, ...; schema ``schemas/node.json``), given to every node in both modes;
* ``[engine]``: ``pack`` = the pack file whose engine tables every node uses (``series``,
  ``parallel``, ``cell`` and ``temp_sensors`` are taken from the node's plant string);
* ``[plant]``: the plant description (``mbms.plant`` schema: strings, bus, load, thermal,
  scheduled plant faults);
* ``[[network]]``: network events: ``{at_s, kind = "loss", value}``, ``{kind = "delay",
  max_ms}``, ``{kind = "duplicate", value}``, ``{kind = "partition", groups = [[1,2],[3,4]]}``,
  ``{kind = "heal"}``, ``{kind = "kill", node}``, ``{kind = "restart", node}``;
* ``[[events]]``: plant faults injected at run time: ``{at_s, fault = {kind = ..., ...}}``
  (same fault schema as ``plant.faults``).

Every error names the file and the dotted field.
"""

from __future__ import annotations

import copy
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from mbms import _core
from mbms.errors import ConfigError

MODES = ("fast", "processes")
NETWORK_KINDS = ("loss", "delay", "duplicate", "partition", "heal", "kill", "restart")

_SCENARIO_KEYS = {"name", "description", "duration_s", "dt_s", "seed", "mode", "record_every_s", "extends"}
_TOP_KEYS = {"scenario", "system", "node", "engine", "plant", "network", "events"}


@dataclass(frozen=True)
class NetworkEvent:
    at_s: float
    kind: str
    value: float = 0.0
    max_ms: int = 0
    groups: tuple[tuple[int, ...], ...] = ()
    node: int = 0


@dataclass(frozen=True)
class PlantEvent:
    at_s: float
    fault: dict[str, Any]


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    duration_s: float
    dt_s: float
    seed: int
    mode: str
    record_every_s: float
    system: dict[str, Any]
    node: dict[str, Any]
    engine_pack: str
    plant: dict[str, Any]
    network: tuple[NetworkEvent, ...] = ()
    events: tuple[PlantEvent, ...] = ()
    source: str | None = None
    drift_ppm: tuple[float, ...] = field(default=())

    @property
    def n_packs(self) -> int:
        return len(self.plant["strings"])

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
        def fail(fld: str, msg: str) -> ConfigError:
            return ConfigError(fld, msg, source)

        unknown = set(data) - _TOP_KEYS
        if unknown:
            raise fail(sorted(unknown)[0], f"unknown table; expected one of {sorted(_TOP_KEYS)}")
        for required in ("scenario", "plant"):
            if required not in data:
                raise fail(required, "missing table")
        sc = _table(data, "scenario", fail)
        bad = set(sc) - _SCENARIO_KEYS
        if bad:
            raise fail(f"scenario.{sorted(bad)[0]}", f"unknown key; expected one of {sorted(_SCENARIO_KEYS)}")
        duration_s = _number(sc, "duration_s", "scenario", fail, required=True, minimum=0.0, exclusive=True)
        dt_s = _number(sc, "dt_s", "scenario", fail, default=0.1, minimum=0.001)
        if dt_s > 1.0:
            raise fail("scenario.dt_s", f"expected at most 1.0 s (the control period), got {dt_s}")
        record_every_s = _number(sc, "record_every_s", "scenario", fail, default=1.0, minimum=dt_s)
        seed = sc.get("seed", 0)
        if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
            raise fail("scenario.seed", f"expected a non-negative integer, got {seed!r}")
        mode = sc.get("mode", "fast")
        if mode not in MODES:
            raise fail("scenario.mode", f"expected one of {list(MODES)}, got {mode!r}")

        plant = _table(data, "plant", fail)
        strings = plant.get("strings")
        if not isinstance(strings, list) or not strings:
            raise fail("plant.strings", "expected a non-empty array of tables (one per pack)")
        if len(strings) > 64:
            raise fail("plant.strings", f"expected at most 64 packs, got {len(strings)}")

        system = dict(_table(data, "system", fail, required=False))
        drift = system.pop("drift_ppm", [])
        if not isinstance(drift, list) or not all(isinstance(x, (int, float)) for x in drift):
            raise fail("system.drift_ppm", "expected an array of numbers (ppm, one per node)")
        if drift and len(drift) != len(strings):
            raise fail("system.drift_ppm", f"expected {len(strings)} values (one per pack), got {len(drift)}")
        if "members" in system or "node_id" in system:
            raise fail("system.members", "members and node ids come from plant.strings (1..N); remove it")

        node = dict(_table(data, "node", fail, required=False))
        # the [node] table's schema is the node's own (rust_core NodeConfig): checked by the core,
        # the same table a pack file's [node] is
        try:
            _core.node_config(node)
        except ConfigError as exc:
            raise fail(exc.field, exc.message) from None

        engine = _table(data, "engine", fail, required=False)
        bad = set(engine) - {"pack"}
        if bad:
            raise fail(f"engine.{sorted(bad)[0]}", "unknown key; expected only 'pack'")
        engine_pack = engine.get("pack", "example_pack")
        if not isinstance(engine_pack, str):
            raise fail("engine.pack", "expected a pack file name or path")

        n = len(strings)
        network = tuple(_network_event(i, ev, n, duration_s, fail) for i, ev in enumerate(data.get("network", [])))
        events = []
        for i, ev in enumerate(data.get("events", [])):
            if not isinstance(ev, dict) or set(ev) != {"at_s", "fault"} or not isinstance(ev["fault"], dict):
                raise fail(f"events[{i}]", "expected a table with at_s and fault = {kind = ..., ...}")
            at = ev["at_s"]
            if not isinstance(at, (int, float)) or not 0 <= at <= duration_s:
                raise fail(f"events[{i}].at_s", f"expected a time in 0..{duration_s} s, got {at!r}")
            events.append(PlantEvent(float(at), dict(ev["fault"])))

        return cls(
            name=str(sc.get("name", "unnamed")),
            description=str(sc.get("description", "")),
            duration_s=duration_s,
            dt_s=dt_s,
            seed=seed,
            mode=mode,
            record_every_s=record_every_s,
            system=system,
            node=node,
            engine_pack=engine_pack,
            plant=copy.deepcopy(plant),
            network=network,
            events=tuple(sorted(events, key=lambda e: e.at_s)),
            source=source,
            drift_ppm=tuple(float(x) for x in drift),
        )

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
        system = dict(self.system)
        if self.drift_ppm:
            system["drift_ppm"] = list(self.drift_ppm)
        net = []
        for e in self.network:
            d: dict[str, Any] = {"at_s": e.at_s, "kind": e.kind}
            if e.kind in ("loss", "duplicate"):
                d["value"] = e.value
            elif e.kind == "delay":
                d["max_ms"] = e.max_ms
            elif e.kind == "partition":
                d["groups"] = [list(g) for g in e.groups]
            elif e.kind in ("kill", "restart"):
                d["node"] = e.node
            net.append(d)
        return {
            "scenario": {
                "name": self.name,
                "description": self.description,
                "duration_s": self.duration_s,
                "dt_s": self.dt_s,
                "seed": self.seed,
                "mode": self.mode,
                "record_every_s": self.record_every_s,
            },
            "system": system,
            "node": dict(self.node),
            "engine": {"pack": self.engine_pack},
            "plant": copy.deepcopy(self.plant),
            "network": net,
            "events": [{"at_s": e.at_s, "fault": dict(e.fault)} for e in self.events],
        }


def _table(data: dict[str, Any], name: str, fail: Any, required: bool = True) -> dict[str, Any]:
    t = data.get(name)
    if t is None:
        if required:
            raise fail(name, "missing table")
        return {}
    if not isinstance(t, dict):
        raise fail(name, f"expected a table, got {type(t).__name__}")
    return t


def _number(
    t: dict[str, Any],
    key: str,
    prefix: str,
    fail: Any,
    *,
    required: bool = False,
    default: float | None = None,
    minimum: float | None = None,
    exclusive: bool = False,
) -> float:
    if key not in t:
        if required:
            raise fail(f"{prefix}.{key}", "missing; expected a number")
        assert default is not None
        return default
    v = t[key]
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise fail(f"{prefix}.{key}", f"expected a number, got {v!r}")
    if minimum is not None and (v <= minimum if exclusive else v < minimum):
        op = ">" if exclusive else ">="
        raise fail(f"{prefix}.{key}", f"expected a number {op} {minimum}, got {v}")
    return float(v)


def _network_event(i: int, ev: Any, n: int, duration_s: float, fail: Any) -> NetworkEvent:
    f = f"network[{i}]"
    if not isinstance(ev, dict):
        raise fail(f, "expected a table")
    kind = ev.get("kind")
    if kind not in NETWORK_KINDS:
        raise fail(f"{f}.kind", f"expected one of {list(NETWORK_KINDS)}, got {kind!r}")
    at = ev.get("at_s")
    if isinstance(at, bool) or not isinstance(at, (int, float)) or not 0 <= at <= duration_s:
        raise fail(f"{f}.at_s", f"expected a time in 0..{duration_s} s, got {at!r}")
    allowed = {"at_s", "kind"} | {
        "loss": {"value"}, "duplicate": {"value"}, "delay": {"max_ms"}, "partition": {"groups"},
        "heal": set(), "kill": {"node"}, "restart": {"node"},
    }[kind]
    extra = set(ev) - allowed
    if extra:
        raise fail(f"{f}.{sorted(extra)[0]}", f"unknown key for kind {kind!r}; expected {sorted(allowed)}")
    if kind in ("loss", "duplicate"):
        v = ev.get("value")
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v <= 1.0:
            raise fail(f"{f}.value", f"expected a probability in 0..1, got {v!r}")
        return NetworkEvent(float(at), kind, value=float(v))
    if kind == "delay":
        v = ev.get("max_ms")
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise fail(f"{f}.max_ms", f"expected a non-negative integer (ms), got {v!r}")
        return NetworkEvent(float(at), kind, max_ms=v)
    if kind == "partition":
        groups = ev.get("groups")
        if not isinstance(groups, list) or not all(isinstance(g, list) for g in groups):
            raise fail(f"{f}.groups", "expected an array of arrays of node ids, e.g. [[1, 2], [3, 4]]")
        seen: list[int] = [m for g in groups for m in g]
        if sorted(seen) != list(range(1, n + 1)):
            raise fail(f"{f}.groups", f"expected every node id 1..{n} exactly once, got {groups}")
        return NetworkEvent(float(at), kind, groups=tuple(tuple(g) for g in groups))
    if kind in ("kill", "restart"):
        v = ev.get("node")
        if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= n:
            raise fail(f"{f}.node", f"expected a node id in 1..{n}, got {v!r}")
        return NetworkEvent(float(at), kind, node=v)
    return NetworkEvent(float(at), kind)


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
