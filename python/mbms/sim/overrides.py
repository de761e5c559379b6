"""``--set PATH=VALUE``: one scenario setting changed from the command line.

A path is the dotted key of the scenario's TOML tables (``plant.thermal.ambient_c``); a list is
indexed by position (``plant.strings.2.initial_soc``, 0-based) or by ``*`` for every element
(``plant.strings.*.variation.resistance_sigma``). The value is a TOML value (``40``, ``0.5``,
``"lfp"``, ``[1, 2]``, ``true``); a bare word is taken as a string. The changed scenario is
validated again as a whole, so a setting the schema does not know is rejected naming it.

It is how ``mbms campaign`` varies parameters, and so every campaign row is reproduced by one
``mbms sim ... --set ...`` command.
"""

from __future__ import annotations

import copy
import tomllib
from collections.abc import Iterable
from typing import Any

from mbms.errors import ConfigError
from mbms.sim.scenario import Scenario


def parse_setting(text: str) -> tuple[str, Any]:
    """``"a.b=1.5"`` -> ``("a.b", 1.5)``; ConfigError naming the setting if it has no ``=``."""
    path, sep, raw = text.partition("=")
    path = path.strip()
    if not sep or not path:
        raise ConfigError("--set", f"expected PATH=VALUE (e.g. plant.thermal.ambient_c=40), got {text!r}")
    return path, parse_value(raw.strip())


def parse_value(raw: str) -> Any:
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw  # a bare word: a string (cell names, modes)


def format_value(value: Any) -> str:
    """The TOML text of a value, as ``--set`` reads it back (the inverse of :func:`parse_value`)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return value if value and parse_value(value) == value and value.isidentifier() else _toml_string(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(format_value(v) for v in value) + "]"
    raise ConfigError("--set", f"cannot write a {type(value).__name__} as a setting value")


def _toml_string(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def set_path(data: dict[str, Any], path: str, value: Any) -> None:
    """Set one dotted path in a scenario's tables (in place)."""
    keys = path.split(".")
    targets: list[Any] = [data]
    for depth, key in enumerate(keys[:-1]):
        here = ".".join(keys[: depth + 1])
        nxt: list[Any] = []
        for t in targets:
            nxt.extend(_step(t, key, here, path))
        targets = nxt
    last = keys[-1]
    for t in targets:
        if isinstance(t, list):
            for idx in _indices(t, last, path, path):
                t[idx] = copy.deepcopy(value)
        elif isinstance(t, dict):
            t[last] = copy.deepcopy(value)
        else:
            raise ConfigError(f"--set {path}", f"{'.'.join(keys[:-1])} is a value, not a table")


def _step(t: Any, key: str, here: str, path: str) -> Iterable[Any]:
    if isinstance(t, dict):
        if key not in t:
            t[key] = {}  # a table the file left to its defaults; the schema checks the key
        return [t[key]]
    if isinstance(t, list):
        return [t[i] for i in _indices(t, key, here, path)]
    raise ConfigError(f"--set {path}", f"{here.rsplit('.', 1)[0]} is a value, not a table")


def _indices(t: list[Any], key: str, here: str, path: str) -> list[int]:
    if key == "*":
        return list(range(len(t)))
    try:
        i = int(key)
    except ValueError:
        raise ConfigError(f"--set {path}", f"{here} indexes a list: expected a position or '*', got {key!r}") from None
    if not 0 <= i < len(t):
        raise ConfigError(f"--set {path}", f"{here}: position {i} outside the list of {len(t)}")
    return [i]


def apply_settings(sc: Scenario, settings: Iterable[tuple[str, Any]]) -> Scenario:
    """The scenario with each ``(path, value)`` set, validated again as a whole."""
    pairs = list(settings)
    if not pairs:
        return sc
    data = sc.to_dict()
    for path, value in pairs:
        set_path(data, path, value)
    try:
        return Scenario.from_dict(data, source=sc.source)
    except ConfigError as exc:
        changed = ", ".join(p for p, _ in pairs)
        raise ConfigError(exc.field, f"{exc.message} (after --set {changed})", exc.source) from exc
