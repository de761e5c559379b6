"""The package's layers: data flows one way.

Every module of ``mbms`` is imported (so a broken import fails here), and its source is scanned
with ``ast`` for every import it makes, including imports inside functions. Modules below the node
runtime (transports, hardware adapters, telemetry, discovery, the plant link, the typed APIs over
the core, the simulators, ...) must not import the runtime (``mbms.node``) or the command line
(``mbms.commands``, ``mbms.cli``); the runtime must not import the command line; the shared types
(``mbms.types``) and errors sit at the very bottom.
"""

from __future__ import annotations

import ast
import enum
import importlib
import pkgutil
from pathlib import Path

import pytest

import mbms
from mbms import _core

PKG_DIR = Path(mbms.__file__).parent


def _modules() -> list[str]:
    names = ["mbms"]
    for info in pkgutil.walk_packages([str(PKG_DIR)], prefix="mbms."):
        names.append(info.name)
    return sorted(n for n in names if n != "mbms._core")


def _source(name: str) -> Path:
    rel = Path(*name.split(".")[1:])
    pkg = PKG_DIR / rel / "__init__.py"
    return pkg if pkg.exists() else (PKG_DIR / rel).with_suffix(".py")


def _imports(name: str, path: Path | None = None) -> set[str]:
    """Every ``mbms...`` module ``name`` imports (absolute or relative, anywhere in the file)."""
    path = path or _source(name)
    tree = ast.parse(path.read_text(), str(path))
    is_pkg = path.name == "__init__.py"
    here = name.split(".") if is_pkg else name.split(".")[:-1]
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(here[: len(here) - node.level + 1])
                mod = f"{base}.{node.module}" if node.module else base
            else:
                mod = node.module or ""
            out.add(mod)
            # "from mbms import _core, registry": the names may be modules
            out.update(f"{mod}.{a.name}" for a in node.names)
    return {m for m in out if m == "mbms" or m.startswith("mbms.")}


def _within(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


RUNTIME = ("mbms.node",)
COMMAND_LINE = ("mbms.commands", "mbms.cli", "mbms.__main__")
BOTTOM = ("mbms.types", "mbms.errors")

MODULES = _modules()


def test_the_scan_sees_the_package() -> None:
    # the scan must find the layers it checks, or every test below would pass vacuously
    for expected in ("mbms.types", "mbms.node.runtime", "mbms.transport.can", "mbms.hardware.sim_link",
                     "mbms.telemetry", "mbms.discovery", "mbms.plant_link", "mbms.commands.node"):
        assert expected in MODULES
    assert "mbms.types" in _imports("mbms.telemetry")
    assert "mbms.node.logic" in _imports("mbms.node.runtime")


@pytest.mark.parametrize("name", MODULES)
def test_module_imports_and_respects_layers(name: str) -> None:
    if name != "mbms.__main__":  # running it is `python -m mbms`; it is scanned, not imported
        importlib.import_module(name)
    imported = _imports(name)
    if not _within(name, RUNTIME + COMMAND_LINE):
        upward = sorted(m for m in imported if _within(m, RUNTIME + COMMAND_LINE))
        assert not upward, f"{name} (below the runtime) imports {upward}"
    if _within(name, RUNTIME):
        upward = sorted(m for m in imported if _within(m, COMMAND_LINE))
        assert not upward, f"{name} (the runtime) imports the command line {upward}"
    if _within(name, BOTTOM):
        allowed = {"mbms", "mbms._core", *BOTTOM}
        extra = sorted(imported - allowed)
        assert not extra, f"{name} (bottom layer) imports {extra}"


def test_a_violation_is_seen(tmp_path: Path) -> None:
    """The scan catches upward imports inside a function and relative ones (sabotage check)."""
    fake = tmp_path / "telemetry.py"
    fake.write_text("def f():\n    from mbms.node.runtime import NodeRuntime\n    from .commands import node\n"
                    "    return NodeRuntime, node\n")
    found = _imports("mbms.telemetry", fake)
    assert "mbms.node.runtime" in found and "mbms.commands.node" in found


def test_one_contactors_and_one_phase() -> None:
    """The shared types are defined once: every module that uses them has the same object."""
    from mbms import consensus, plant, plant_link, telemetry, types
    from mbms.hardware import base
    from mbms.node import logic

    for mod in (consensus, plant, plant_link, base, logic):
        assert mod.Contactors is types.Contactors, mod.__name__
    for mod in (consensus, telemetry, logic):
        assert mod.Phase is types.Phase, mod.__name__
    assert plant.Measurement is types.Measurement is logic.Measurement


def test_phase_is_the_rust_enum_plus_fail_safe() -> None:
    from mbms.types import Phase

    rust = [str(n) for n in _core.PHASE_NAMES]
    assert [p.name.lower() for p in Phase][: len(rust)] == rust
    assert [int(p) for p in Phase] == list(range(len(rust) + 1))
    assert Phase(len(rust)) is Phase.FAIL_SAFE


def test_phase_for_type_checkers_matches_the_runtime_enum() -> None:
    """``mbms.types`` spells Phase out for type checkers only (TYPE_CHECKING); it must list the
    members the runtime class (built from the Rust enum) has, in order."""
    from mbms.types import Phase

    tree = ast.parse((PKG_DIR / "types.py").read_text())
    static: list[tuple[str, int]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and node.name == "Phase":
            for stmt in node.body:
                if isinstance(stmt, ast.Assign) and isinstance(stmt.value, ast.Constant):
                    static.append((stmt.targets[0].id, stmt.value.value))  # type: ignore[attr-defined]
    assert static == [(p.name, int(p)) for p in Phase]
    assert issubclass(Phase, enum.IntEnum)
