"""The JSON Schemas shipped in the package (``mbms/data/schemas/``) are generated from the Rust
config types and must not go stale: regenerate with ``python -m mbms.config``."""

from __future__ import annotations

import json

import pytest

from mbms.config import schemas
from mbms.paths import schemas_dir

KINDS = ("engine", "node", "pack", "peer", "scenario", "system")


@pytest.mark.parametrize("kind", KINDS)
def test_shipped_schema_is_current(kind: str) -> None:
    shipped = schemas_dir() / f"{kind}.json"
    assert shipped.is_file(), f"{shipped} missing: run python -m mbms.config"
    assert json.loads(shipped.read_text()) == schemas()[kind], f"{shipped} is stale: run python -m mbms.config"


def test_schemas_are_strict_and_carry_rust_defaults() -> None:
    s = schemas()
    assert set(s) == set(KINDS)
    pack = s["pack"]
    # unknown keys are errors in every table (serde deny_unknown_fields)
    assert pack["additionalProperties"] is False
    assert set(pack["required"]) >= {"pack", "protection", "limits", "node", "hardware"}
    # defaults are Rust's (the settled values of issue 9)
    assert s["peer"]["properties"]["dv_close_v"]["default"] == 3.0
    assert s["node"]["properties"]["stale_ms"]["default"] == 500


def test_shipped_files_validate_against_the_schemas() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    import tomllib

    from mbms.paths import data_dir

    s = schemas()
    for name in ("example_system", "example_system_udp"):
        doc = tomllib.loads((data_dir() / "systems" / f"{name}.toml").read_text())
        jsonschema.validate(doc, s["system"])
    doc = tomllib.loads((data_dir() / "packs" / "example_pack.toml").read_text())
    jsonschema.validate(doc, s["engine"])
    bad = dict(doc, pack=dict(doc["pack"], seriez=96))
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, s["engine"])


def test_shipped_scenarios_validate_against_the_scenario_schema() -> None:
    """The scenario schema is the simulator's Rust type (sim/src/scenario.rs): the embedded
    default file validates as written, every shipped scenario once its extends is resolved,
    and a misspelt key does not."""
    jsonschema = pytest.importorskip("jsonschema")
    import tomllib

    from mbms.paths import data_dir
    from mbms.sim.scenario import Scenario

    s = schemas()["scenario"]
    default = tomllib.loads((data_dir() / "scenarios" / "default.toml").read_text())
    jsonschema.validate(default, s)
    for path in sorted((data_dir() / "scenarios").glob("*.toml")):
        jsonschema.validate(Scenario.from_toml(path).to_dict(), s)
    bad = dict(default, scenario=dict(default["scenario"], duration=5.0))
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, s)
    bad = dict(default, system=dict(default.get("system", {}), dv_close=2.0))
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, s)
