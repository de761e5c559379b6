"""Every third-party module the package imports is declared in pyproject.toml, once; a module from
an optional extra is imported only inside the functions that need it (a headless node without
the extra must still import every module it runs)."""

from __future__ import annotations

import ast
import importlib.metadata as md
import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "python" / "mbms"


def _name(req: str) -> str:
    return re.split(r"[\s<>=!~;\[]", req, maxsplit=1)[0].lower().replace("_", "-")


def project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def imports() -> dict[str, list[tuple[str, bool]]]:
    """Top-level third-party module -> [(file, imported at module level)]."""
    out: dict[str, list[tuple[str, bool]]] = {}
    for path in PKG.rglob("*.py"):
        tree = ast.parse(path.read_text(), str(path))
        top_level = {id(n) for n in tree.body}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for n in names:
                top = n.partition(".")[0]
                if top in sys.stdlib_module_names or top == "mbms":
                    continue
                out.setdefault(top, []).append((str(path.relative_to(ROOT)), id(node) in top_level))
    return out


def test_dependencies_are_listed_once() -> None:
    deps = [_name(r) for r in project()["dependencies"]]
    assert len(deps) == len(set(deps)), deps
    for extra, reqs in project()["optional-dependencies"].items():
        names = [_name(r) for r in reqs]
        assert len(names) == len(set(names)), (extra, names)


def test_every_imported_module_is_declared() -> None:
    base = {_name(r) for r in project()["dependencies"]}
    extras = {e: {_name(r) for r in reqs} for e, reqs in project()["optional-dependencies"].items()}
    dist_of = md.packages_distributions()
    found = imports()
    # the scan sees the base imports and those of every extra's modules (gateways, campaign,
    # hardware drivers, plots): a refactor that hid them from it would make this test vacuous
    assert {"numpy", "can", "zeroconf", "ifaddr", "cantools", "msgpack"} <= set(found)
    assert {"paho", "prometheus_client", "aiohttp", "isotp", "udsoncan", "pymodbus", "sunspec2", "distributed",
            "pyarrow", "gpiod", "spidev", "matplotlib"} <= set(found), sorted(found)
    for module, sites in sorted(found.items()):
        dists = {d.lower().replace("_", "-") for d in dist_of.get(module, [])}
        assert dists, f"{module} (imported in {sites[0][0]}) is not installed: not declared?"
        if dists & base:
            continue
        in_extra = [e for e, names in extras.items() if dists & names]
        assert in_extra, f"{module} (distribution {sorted(dists)}, imported in {sites[0][0]}) is not declared"
        eager = [f for f, at_top in sites if at_top]
        assert not eager, (f"{module} is only in the extra(s) {in_extra} but imported at module level "
                           f"in {eager}: import it inside the function that needs it")
