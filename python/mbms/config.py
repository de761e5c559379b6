"""The one reader of mbms's configuration files.

Every config value has one schema, the Rust serde types (``mbms._core``: engine, node, hardware,
peer protocol, transport, discovery); their JSON Schemas ship in ``mbms/data/schemas/``. This
module only does what Rust cannot (sans-IO): read files, follow a pack file's ``extends`` to its
base file, and find the cell parameter file a pack names. Parsing, defaults, ranges and
cross-checks are Rust's; a problem comes back as :class:`mbms.errors.ConfigError` naming the
file, the dotted field and what was expected, or, for ``mbms node --check``, as a list of
:class:`Finding`.

Python classes built from the normalised configs (:mod:`mbms.engine`, :mod:`mbms.config_views`,
:mod:`mbms.consensus`) are read-only views: their fields are filled from what Rust returns and
they never restate a default.
"""

from __future__ import annotations

import dataclasses
import json
import os
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, overload

from mbms import _core
from mbms.errors import ConfigError

#: Longest chain of ``extends`` (a cycle or a runaway chain is an error, not a hang).
MAX_EXTENDS = 8


@dataclass(frozen=True)
class Finding:
    """One problem found in a node's files: ``severity`` is ``error`` (a start refuses it) or
    ``warning`` (a start logs it)."""

    severity: str
    file: str
    field: str
    value: str | None
    expected: str

    def error(self) -> ConfigError:
        got = f", got {self.value}" if self.value is not None else ""
        return ConfigError(self.field, f"{self.expected}{got}", self.file)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def read_text(path: str | os.PathLike[str], field: str = "(file)") -> str:
    p = Path(path)
    try:
        return p.read_text()
    except OSError as exc:
        raise ConfigError(field, f"cannot read: {exc.strerror or exc}", str(p)) from None


def read_layers(path: str | os.PathLike[str]) -> list[tuple[str, str]]:
    """``(source, text)`` of a pack file and of the files it ``extends``, base first. A base is
    a path relative to the file that names it; a bare name not found there is looked up in the
    pack folders (``$MBMS_HW_DIR/packs``, the shipped ``packs/``), as a cell name is, so a node
    file copied out of the shipped folder keeps its base."""
    chain: list[tuple[str, str]] = []
    p = Path(path)
    seen: set[Path] = set()
    field = "(file)"
    while True:
        text = read_text(p, field)
        source = str(p)
        chain.append((source, text))
        seen.add(p.resolve())
        base = _core.config_extends(source, text)
        if base is None:
            break
        nxt = (p.parent / base) if not Path(base).is_absolute() else Path(base)
        if nxt.resolve() in seen or len(chain) > MAX_EXTENDS:
            raise ConfigError("extends", f"expected a chain of base files without a cycle (at most {MAX_EXTENDS}), "
                                         f"got {base!r} again", source)
        if not nxt.is_file() and len(Path(base).parts) == 1:
            from mbms.paths import find

            try:
                nxt = find("packs", base, field="extends", path_ok=False)
            except ConfigError as exc:
                raise ConfigError("extends", f"base pack file {str(nxt)!r} not found next to this file; {exc.message}",
                                  source) from None
        if not nxt.is_file():
            raise ConfigError("extends", f"base pack file {str(nxt)!r} not found (relative to this file)", source)
        p, field = nxt, "extends"
    chain.reverse()
    return chain


def resolve_cell(name: str, source: str | None) -> Path:
    """The cell parameter file a pack names: a path relative to the pack file, else a name in
    the cell folders (``$MBMS_HW_DIR/cells``, the shipped ``cells/``)."""
    from mbms.paths import cell_file

    if "\0" in name:  # os.stat raises ValueError on it (found by tests/test_fuzz_decoders.py)
        raise ConfigError("pack.cell", "a cell name or path without NUL characters", source)
    if source is not None:
        candidate = Path(source).parent / name
        if candidate.suffix == ".toml" and candidate.is_file():
            return candidate
    try:
        return cell_file(name, field="pack.cell")
    except ConfigError as exc:
        raise ConfigError("pack.cell", exc.message, source) from None


_View = TypeVar("_View")


@overload
def view(cls: type[_View], data: Any) -> _View: ...
@overload
def view(cls: Any, data: Any) -> Any: ...
def view(cls: Any, data: Any) -> Any:
    """A read-only view (frozen dataclass ``cls``) of normalised config data from Rust. Lists
    become tuples; nothing is validated or defaulted here (Rust did both)."""
    if isinstance(cls, type) and dataclasses.is_dataclass(cls):
        hints = typing.get_type_hints(cls)
        return cls(**{f.name: view(hints[f.name], data[f.name]) for f in dataclasses.fields(cls) if f.name in data})
    origin = typing.get_origin(cls)
    if origin is tuple and isinstance(data, list):
        args = typing.get_args(cls)
        inner = args[0] if args else Any
        return tuple(view(inner, x) for x in data)
    if isinstance(cls, types.UnionType) or origin is typing.Union:
        if data is None:
            return None
        inner = [a for a in typing.get_args(cls) if a is not type(None)]
        return view(inner[0], data) if len(inner) == 1 else data
    if cls is float and isinstance(data, int):
        return float(data)
    return data


def schemas() -> dict[str, dict[str, Any]]:
    """The JSON Schema of every config file kind, generated from the Rust types."""
    return {name: json.loads(text) for name, text in _core.config_schemas().items()}


def write_schemas(folder: str | os.PathLike[str]) -> list[Path]:
    """Write ``<kind>.json`` for every config kind into ``folder`` (``python -m mbms.config``
    regenerates the shipped ones; a test fails when they are stale)."""
    out = []
    d = Path(folder)
    d.mkdir(parents=True, exist_ok=True)
    for name, schema in sorted(schemas().items()):
        p = d / f"{name}.json"
        p.write_text(json.dumps(schema, indent=2, sort_keys=True) + "\n")
        out.append(p)
    return out


if __name__ == "__main__":  # python -m mbms.config: regenerate the shipped JSON schemas
    from mbms.paths import schemas_dir

    for written in write_schemas(schemas_dir()):
        print(written)
