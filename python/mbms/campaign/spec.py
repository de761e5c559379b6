"""A campaign spec: which jobs to run (``mbms campaign SPEC.toml``).

```toml
[campaign]
name = "ambient-and-loss"
kind = "fast"             # "fast": whole-system fast simulations; "protocol": seeded schedules
seeds = 10                # seeds per parameter point (fast) ...
first_seed = 0
sample = "grid"           # "grid": every combination; "random": `points` draws (seeded by `sample_seed`)
points = 0
sample_seed = 1

[fast]                    # kind = "fast"
scenario = "default"      # a shipped scenario's name or a path (relative to this spec)
duration_s = 300.0        # optional: shortens every run

[protocol]                # kind = "protocol"
schedules = 100000        # seeded fault schedules in all
schedules_per_job = 2000
peers_min = 3
peers_max = 5
duration_ms = 6000
sabotage = "none"         # a checker self-test (mbms._core.SABOTAGE_MODES): shows violations
adversary = "mixed"       # the attacker (S7): "on" in every schedule, "off", or "mixed" (drawn per seed)

[parameters]              # fast: `--set` paths of the scenario (see mbms.sim.overrides) and "packs"
"plant.thermal.ambient_c" = [10.0, 25.0, 40.0]          # grid: a list of values
"plant.strings.*.variation.resistance_sigma" = { min = 0.01, max = 0.08 }   # random: a range
```

Every key is checked: an unknown one stops the campaign naming it (``parameters`` are checked
by building each job's scenario once before anything runs).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import random
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mbms import _core
from mbms.errors import ConfigError
from mbms.sim.scenario import _table  # the scenario reader's table check: one place for both TOML readers

KINDS = ("fast", "protocol")
SAMPLES = ("grid", "random")

_KEYS: dict[str, set[str]] = {
    "": {"campaign", "fast", "protocol", "parameters"},
    "campaign": {"name", "kind", "seeds", "first_seed", "sample", "points", "sample_seed"},
    "fast": {"scenario", "duration_s"},
    "protocol": {"schedules", "schedules_per_job", "first_seed", "peers_min", "peers_max", "duration_ms", "sabotage",
                 "adversary"},
}


@dataclass(frozen=True)
class Job:
    """One run: a fast simulation of one scenario point and seed, or a block of protocol schedules."""

    kind: str
    seed: int  # fast: the scenario seed; protocol: the first schedule's seed
    params: tuple[tuple[str, Any], ...] = ()
    count: int = 1  # protocol: schedules in this job
    scenario: str = ""
    duration_s: float | None = None
    peers_min: int = 3
    peers_max: int = 5
    duration_ms: int = 6000
    sabotage: str = "none"
    adversary: str = "mixed"  # protocol: the attacker in every schedule ("on"), none ("off"), or drawn

    @property
    def job_id(self) -> str:
        """Stable over re-runs of the same spec: how a resume knows a row is done."""
        key = json.dumps([self.kind, self.seed, self.count, self.scenario, self.duration_s, list(self.params),
                          self.peers_min, self.peers_max, self.duration_ms, self.sabotage]
                         + ([self.adversary] if self.adversary != "mixed" else []), default=str)
        return hashlib.sha256(key.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Spec:
    name: str
    kind: str
    jobs: tuple[Job, ...]
    source: str
    parameters: tuple[str, ...] = field(default=())


def load(path: str | Path) -> Spec:
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text())
    except OSError as exc:
        raise ConfigError("campaign", f"cannot read campaign spec: {exc.strerror}", str(p)) from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("<toml>", f"not valid TOML: {exc}", str(p)) from exc
    return from_dict(data, source=str(p), folder=p.parent)


def from_dict(data: dict[str, Any], source: str = "<campaign>", folder: Path | None = None) -> Spec:
    def fail(fld: str, msg: str) -> ConfigError:
        return ConfigError(fld, msg, source)

    _check_keys(data, "", fail)
    c = _table(data, "campaign", fail, required=True)
    _check_keys(c, "campaign", fail)
    kind = c.get("kind", "fast")
    if kind not in KINDS:
        raise fail("campaign.kind", f"expected one of {list(KINDS)}, got {kind!r}")
    name = c.get("name", Path(source).stem)
    if not isinstance(name, str) or not name:
        raise fail("campaign.name", f"expected a non-empty string, got {name!r}")
    seeds = _int(c, "seeds", "campaign", fail, default=1, minimum=1)
    first_seed = _int(c, "first_seed", "campaign", fail, default=0, minimum=0)
    sample = c.get("sample", "grid")
    if sample not in SAMPLES:
        raise fail("campaign.sample", f"expected one of {list(SAMPLES)}, got {sample!r}")
    params = _table(data, "parameters", fail, required=False)
    points = _points(params, sample, c, fail)
    if kind == "fast":
        return _fast_spec(data, name, seeds, first_seed, points, source, folder, fail)
    return _protocol_spec(data, name, points, source, fail)


def _fast_spec(data: dict[str, Any], name: str, seeds: int, first_seed: int, points: list[tuple[tuple[str, Any], ...]],
               source: str, folder: Path | None, fail: Any) -> Spec:
    f = _table(data, "fast", fail, required=False)
    _check_keys(f, "fast", fail)
    if "protocol" in data:
        raise fail("protocol", "a table for kind = \"protocol\"; this campaign's kind is \"fast\"")
    scenario = f.get("scenario", "default")
    if not isinstance(scenario, str):
        raise fail("fast.scenario", f"expected a scenario name or path, got {scenario!r}")
    if scenario != "default" and folder is not None and (folder / scenario).is_file():
        scenario = str((folder / scenario).resolve())
    duration_s = None
    if "duration_s" in f:
        d = f["duration_s"]
        if isinstance(d, bool) or not isinstance(d, (int, float)) or d <= 0:
            raise fail("fast.duration_s", f"expected a number > 0, got {d!r}")
        duration_s = float(d)
    jobs = tuple(
        Job("fast", seed=first_seed + s, params=pt, scenario=scenario, duration_s=duration_s)
        for pt in points for s in range(seeds)
    )
    spec = Spec(name, "fast", jobs, source, tuple(k for k, _ in points[0]) if points else ())
    _check_fast_points(spec, points, fail)
    return spec


def _check_fast_points(spec: Spec, points: list[tuple[tuple[str, Any], ...]], fail: Any) -> None:
    """Build each parameter point's simulation once (plant, engines, network: every schema checks
    its part): a bad path or value stops the campaign now, not in a worker an hour later."""
    from mbms.campaign.jobs import scenario_of
    from mbms.sim import fast

    for pt in points:
        probe = next(j for j in spec.jobs if j.params == pt)
        try:
            fast.build(scenario_of(probe))
        except ConfigError as exc:
            raise fail(f"parameters.{exc.field.removeprefix('--set ')}", exc.message) from exc


def _protocol_spec(data: dict[str, Any], name: str, points: list[tuple[tuple[str, Any], ...]], source: str,
                   fail: Any) -> Spec:
    if "fast" in data:
        raise fail("fast", "a table for kind = \"fast\"; this campaign's kind is \"protocol\"")
    t = _table(data, "protocol", fail, required=False)
    _check_keys(t, "protocol", fail)
    total = _int(t, "schedules", "protocol", fail, default=1000, minimum=1)
    per_job = _int(t, "schedules_per_job", "protocol", fail, default=1000, minimum=1)
    first = _int(t, "first_seed", "protocol", fail, default=0, minimum=0)
    base = {
        "peers_min": _int(t, "peers_min", "protocol", fail, default=3, minimum=1),
        "peers_max": _int(t, "peers_max", "protocol", fail, default=5, minimum=1),
        "duration_ms": _int(t, "duration_ms", "protocol", fail, default=6000, minimum=1),
    }
    if base["peers_max"] > 64 or base["peers_min"] > base["peers_max"]:
        raise fail("protocol.peers_max", f"expected peers_min <= peers_max <= 64, got {base['peers_min']}..{base['peers_max']}")
    sabotage = t.get("sabotage", "none")
    if sabotage not in _core.SABOTAGE_MODES:
        raise fail("protocol.sabotage", f"expected one of {list(_core.SABOTAGE_MODES)}, got {sabotage!r}")
    adversary = t.get("adversary", "mixed")
    if adversary not in ("on", "off", "mixed"):
        raise fail("protocol.adversary", f"expected \"on\", \"off\" or \"mixed\", got {adversary!r}")
    jobs = []
    for pt in points:
        p = dict(base)
        for k, v in pt:
            if k not in base:
                raise fail(f"parameters.{k}", f"protocol campaigns vary {sorted(base)}")
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise fail(f"parameters.{k}", f"expected integers >= 1, got {v!r}")
            p[k] = v
        if p["peers_min"] > p["peers_max"]:
            continue  # an empty corner of the grid
        for start in range(first, first + total, per_job):
            jobs.append(Job("protocol", seed=start, count=min(per_job, first + total - start), params=pt,
                            sabotage=sabotage, adversary=adversary, peers_min=p["peers_min"],
                            peers_max=p["peers_max"], duration_ms=p["duration_ms"]))
    if not jobs:
        raise fail("parameters", "no job: every point has peers_min > peers_max")
    return Spec(name, "protocol", tuple(jobs), source, tuple(k for k, _ in points[0]) if points else ())


def _points(params: dict[str, Any], sample: str, c: dict[str, Any], fail: Any) -> list[tuple[tuple[str, Any], ...]]:
    if not params:
        if sample == "random":
            raise fail("parameters", "sample = \"random\" needs parameters to draw")
        return [()]
    keys = sorted(params)
    if sample == "grid":
        values = []
        for k in keys:
            v = params[k]
            if not isinstance(v, list) or not v:
                raise fail(f"parameters.{k}", f"grid: expected a non-empty list of values, got {v!r}")
            values.append(v)
        return [tuple(zip(keys, combo)) for combo in itertools.product(*values)]
    n = _int(c, "points", "campaign", fail, default=0, minimum=1)
    rng = random.Random(_int(c, "sample_seed", "campaign", fail, default=1, minimum=0))
    out = []
    for _ in range(n):
        pt = []
        for k in keys:
            pt.append((k, _draw(params[k], f"parameters.{k}", rng, fail)))
        out.append(tuple(pt))
    return out


def _draw(v: Any, fld: str, rng: random.Random, fail: Any) -> Any:
    if isinstance(v, list) and v:
        return v[rng.randrange(len(v))]
    if isinstance(v, dict) and set(v) == {"min", "max"}:
        lo, hi = v["min"], v["max"]
        if isinstance(lo, int) and isinstance(hi, int) and not isinstance(lo, bool):
            return rng.randint(lo, hi)
        if isinstance(lo, (int, float)) and isinstance(hi, (int, float)) and lo <= hi:
            return round(rng.uniform(float(lo), float(hi)), 6)
    raise fail(fld, f"random: expected a list of values or {{min, max}}, got {v!r}")


def _check_keys(t: dict[str, Any], table: str, fail: Any) -> None:
    bad = sorted(set(t) - _KEYS[table])
    if bad:
        where = f"{table}.{bad[0]}" if table else bad[0]
        raise fail(where, f"unknown key; expected one of {sorted(_KEYS[table])}")


def _int(t: dict[str, Any], key: str, prefix: str, fail: Any, *, default: int, minimum: int) -> int:
    v = t.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
        raise fail(f"{prefix}.{key}", f"expected an integer >= {minimum}, got {v!r}")
    return v
