"""Plant descriptions: the example system, CSV profiles, and bad input named by field."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mbms.errors import ConfigError, InputError
from mbms.paths import data_dir
from mbms.plant import Plant, PlantDescription

EXAMPLE = data_dir() / "systems" / "example_plant.toml"


def base() -> dict[str, Any]:
    return {
        "strings": [
            {"series": 8, "parallel": 2, "cell": "lg_m50_nmc", "initial_soc": 0.5},
            {"series": 8, "parallel": 2, "cell": "a123_anr26650_lfp", "initial_soc": 0.7},
        ],
        "load": {"kind": "constant", "value": 10.0},
    }


def test_example_system_loads_and_runs() -> None:
    d = PlantDescription.from_toml(EXAMPLE)
    assert d.n_strings == 4 and all(s.series == 96 for s in d.strings)
    assert d.strings[3].variation.capacity_scale < 1.0, "one weaker string"
    assert len({s.initial_soc for s in d.strings}) == 4
    assert d.strings[0].sensors.cell_voltage.lsb == pytest.approx(1e-4)
    p = Plant(d, seed=7)
    for k in range(4):
        p.set_command(k, neg=True, pre=True)
    p.run(0.01, 100)
    assert p.v_bus_v() > 300.0
    for k in range(4):
        p.set_command(k, neg=True, pos=True)
    p.run(0.1, 600)
    # the drive profile draws and regenerates; the aged string carries less
    i = p.string_current_a()
    assert np.isfinite(i).all() and p.measure(3).valid
    assert d.strings[3].variation.resistance_scale > 1.0


def test_defaults_are_filled_in() -> None:
    d = PlantDescription.from_dict(base())
    s = d.strings[0]
    assert s.r_extra_ohm > 0 and s.contactors.r_precharge_ohm > 0
    assert s.sensors.cell_voltage.noise == 0.0 and s.sensors.temp_sensors is None
    assert d.bus.capacitance_f > 0 and d.load.kind == "constant" and d.load.quantity == "current_a"
    assert s.cell_path.name == "lg_m50_nmc.toml"


def test_csv_profile(tmp_path: Path) -> None:
    (tmp_path / "profile.csv").write_text("t_s,value\n0,0\n10,100\n20,100\n")
    d = base()
    d["load"] = {"kind": "csv", "path": "profile.csv", "quantity": "current_a"}
    src = tmp_path / "system.toml"
    desc = PlantDescription.from_dict(d, source=str(src))
    assert desc.load.kind == "table" and list(desc.load.params["t_s"]) == [0.0, 10.0, 20.0]
    p = Plant(desc)
    for k in range(2):
        p.set_command(k, neg=True, pos=True)
    p.run(0.1, 50)  # the 51st step starts at t = 5 s: 50 A
    p.step(0.1)
    assert p.load_a() == pytest.approx(50.0, rel=1e-9)
    (tmp_path / "bad.csv").write_text("t_s,value\n0,0\n1,abc\n")
    d["load"]["path"] = "bad.csv"
    with pytest.raises(ConfigError) as e:
        PlantDescription.from_dict(d, source=str(src))
    assert e.value.field == "load.path" and "line 3" in str(e.value)


@pytest.mark.parametrize(
    ("edit", "field", "words"),
    [
        (lambda d: d["strings"][1].update(series=0), "strings[1].series", "at least 1"),
        (lambda d: d["strings"][0].update(initial_soc=1.5), "strings[0].initial_soc", "0..1"),
        (lambda d: d["strings"][0].update(parallel="two"), "strings[0].parallel", "invalid type"),
        (lambda d: d["strings"][0].update(colour="red"), "strings[0].colour", "unknown field"),
        (lambda d: d["strings"][1].update(cell="no_such_cell"), "strings[1].cell", "not found"),
        (lambda d: d["strings"][0].update(sensors={"current": {"noise": -1.0}}), "strings[0].sensors.current.noise", ">= 0"),
        (lambda d: d["strings"][0].update(sensors={"temp_sensors": 99}), "strings[0].sensors.temp_sensors", "1..=8"),
        (lambda d: d.update(bus={"capacitance_f": 0.0}), "bus.capacitance_f", "positive"),
        (lambda d: d.update(load={"kind": "drive"}), "load", "peak"),
        (lambda d: d.update(load={"kind": "steps", "t_s": [0, 1], "value": [1.0]}), "load.t_s", "as many"),
        (lambda d: d.update(strings=[]), "strings", "at least one"),
        (
            lambda d: d.update(faults=[{"at_s": 5, "fault": {"kind": "capacity_fade", "string": 0, "element": 3, "factor": 2}}]),
            "faults[0].fault.factor",
            "(0, 1]",
        ),
    ],
)
def test_bad_descriptions_name_the_field(edit: Any, field: str, words: str) -> None:
    d = copy.deepcopy(base())
    edit(d)
    with pytest.raises(ConfigError) as e:
        PlantDescription.from_dict(d, source="test.toml")
    assert e.value.field.startswith(field), str(e.value)
    assert words in str(e.value)
    assert e.value.source == "test.toml"


def test_bad_toml_file(tmp_path: Path) -> None:
    p = tmp_path / "x.toml"
    p.write_text("[[strings]\nseries = 1\n")
    with pytest.raises(ConfigError) as e:
        PlantDescription.from_toml(p)
    assert e.value.field == "<toml>"


def test_bad_step_inputs() -> None:
    p = Plant(base())
    with pytest.raises(InputError):
        p.step(0.0)
    with pytest.raises(InputError):
        p.step(float("nan"))
    with pytest.raises(InputError, match="balance"):
        p.set_command(0, balance=[True] * 3)
    with pytest.raises(IndexError):
        p.measure(5)
