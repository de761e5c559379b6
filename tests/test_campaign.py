"""``mbms campaign``: real Dask clusters of worker processes, real Parquet files, the real CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("distributed")
import pyarrow.dataset as pads  # noqa: E402

from mbms.campaign import engine, spec as spec_mod, store  # noqa: E402
from mbms.campaign.jobs import run_job  # noqa: E402
from mbms.campaign.spec import Job, Spec  # noqa: E402
from mbms.errors import ConfigError  # noqa: E402


def mbms(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mbms", *args], capture_output=True, text=True, timeout=300, cwd=cwd)


FAST_SPEC = """
[campaign]
name = "ambient"
kind = "fast"
seeds = {seeds}
[fast]
duration_s = 60.0
[parameters]
"plant.thermal.ambient_c" = [10.0, 40.0]
"plant.strings.1.initial_soc" = [0.55]
"""


def test_fast_campaign_end_to_end_on_two_workers_then_resumes(tmp_path: Path) -> None:
    (tmp_path / "c.toml").write_text(FAST_SPEC.format(seeds=2))
    out = tmp_path / "out"
    r = mbms("campaign", "c.toml", "--workers", "2", "--out", str(out), "--quiet", cwd=tmp_path)
    assert r.returncode == 0, r.stderr + r.stdout
    assert "4 jobs run, 0 already done" in r.stdout and "on 2 worker(s)" in r.stdout
    # the folder reads as one table with one schema (what a user's pandas/pyarrow does)
    table = pads.dataset(out / "rows", format="parquet").to_table()
    rows = table.to_pylist()
    assert len(rows) == 4 and {r["status"] for r in rows} == {"ok"}
    assert sorted((r["p:plant.thermal.ambient_c"], r["seed"]) for r in rows) == [(10.0, 0), (10.0, 1), (40.0, 0), (40.0, 1)]
    assert all(r["packs"] == 4 and r["duration_s"] == 60.0 and r["max_overcurrent_a"] is not None for r in rows)
    assert len({r["worker"] for r in rows}) >= 1 and all(r["wall_s"] > 0 for r in rows)
    # the row's command reproduces the run: same figures from `mbms sim`
    one = next(r for r in rows if r["p:plant.thermal.ambient_c"] == 40.0 and r["seed"] == 1)
    rep = mbms(*one["reproduce"].split()[1:], "--json", cwd=tmp_path)
    assert rep.returncode == 0, rep.stderr
    summ = json.loads(rep.stdout)
    assert summ["seed"] == 1 and summ["duration_s"] == 60.0
    assert summ["packs"][1]["soc_start"] == pytest.approx(0.55, abs=0.01)
    assert summ["system"]["energy_discharged_kwh"] == pytest.approx(one["energy_out_kwh"])
    assert summ["system"]["max_string_overcurrent_a"] == pytest.approx(one["max_overcurrent_a"])
    report = (out / "report.html").read_text()
    assert "Violations (0)" in report and "plant.thermal.ambient_c = 40.0" in report
    first_parts = sorted(p.name for p in (out / "rows").glob("*.parquet"))

    # a third seed: a re-run runs only the two new jobs and leaves the written parts alone
    (tmp_path / "c.toml").write_text(FAST_SPEC.format(seeds=3))
    r = mbms("campaign", "c.toml", "--workers", "2", "--out", str(out), "--quiet", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "2 jobs run, 4 already done (resumed), 6 in all" in r.stdout
    rows = store.read_rows(out)
    assert len(rows) == 6 and len({r["job_id"] for r in rows}) == 6
    assert set(first_parts) < {p.name for p in (out / "rows").glob("*.parquet")}


def test_sabotage_shows_as_violations_whose_commands_reproduce_them(tmp_path: Path) -> None:
    (tmp_path / "s.toml").write_text("""
[campaign]
name = "no-dwell"
kind = "protocol"
[protocol]
schedules = 60
schedules_per_job = 20
sabotage = "no_dwell"
""")
    out = tmp_path / "out"
    r = mbms("campaign", "s.toml", "--workers", "2", "--out", str(out), "--quiet", cwd=tmp_path)
    assert r.returncode == 1, r.stderr
    rows = store.read_rows(out)
    assert len(rows) == 3 and all(row["status"] == "violation" and row["violations"] > 0 for row in rows)
    assert "Violations (3)" in (out / "report.html").read_text()
    for row in rows:
        cmd = row["reproduce"].split()
        assert cmd[:3] == ["mbms", "sim", "--protocol"] and "no_dwell" in cmd
        rep = mbms(*cmd[1:], "--quiet", cwd=tmp_path)
        assert rep.returncode == 1
        # the same first violation, word for word
        assert row["first_violation"].split(": ", 1)[1] in rep.stderr
    # the same schedules without the sabotage: no violation (the check is the sabotage, not luck)
    (tmp_path / "s.toml").write_text((tmp_path / "s.toml").read_text().replace('"no_dwell"', '"none"'))
    r = mbms("campaign", "s.toml", "--workers", "1", "--out", str(tmp_path / "clean"), "--quiet", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert all(row["status"] == "ok" for row in store.read_rows(tmp_path / "clean"))


def test_adversary_on_runs_the_attacker_in_every_schedule_and_reproduces_with_it(tmp_path: Path) -> None:
    spec = spec_mod.from_dict({"campaign": {"name": "adv", "kind": "protocol"},
                               "protocol": {"schedules": 40, "schedules_per_job": 20, "first_seed": 10018931,
                                            "adversary": "on"}})
    assert [j.adversary for j in spec.jobs] == ["on", "on"]
    row = run_job(spec.jobs[0])
    # seed 10018931 (S4 on the merged code before the silence rule, see sim_schedules.rs) is clean
    assert row["status"] == "ok" and row["violations"] == 0 and row["schedules"] == 20
    from mbms.campaign.jobs import reproduce

    cmd = reproduce(spec.jobs[0], seed=10018931).split()
    assert cmd[cmd.index("--adversary") + 1] == "on"
    rep = mbms(*cmd[1:], cwd=tmp_path)
    assert rep.returncode == 0, rep.stderr
    assert "attack " in rep.stdout  # the trace shows the attacker's injections
    assert "schedule seed 10018931: 0 violation(s)" in rep.stdout


def test_a_worker_killed_mid_campaign_loses_no_row(tmp_path: Path) -> None:
    spec = spec_mod.from_dict({"campaign": {"name": "kill", "kind": "protocol"},
                               "protocol": {"schedules": 2400, "schedules_per_job": 200}})
    assert len(spec.jobs) == 12
    killed: list[int] = []
    with engine.client(workers=2) as c:
        pids_before = set(c.run(os.getpid).values())

        def on_row(done: int, total: int, row: dict[str, Any]) -> None:
            if not killed:  # the other worker is busy with its next job now: kill it mid-job
                victim = next(pid for pid in pids_before if not row["worker"].endswith(f":{pid}"))
                os.kill(victim, signal.SIGKILL)
                killed.append(victim)

        res = engine.run(spec, tmp_path, c, progress=on_row, flush_rows=1)
    assert killed and res.ran == 12 and res.errors == 0
    rows = store.read_rows(tmp_path)
    assert sorted(r["seed"] for r in rows) == list(range(0, 2400, 200))
    assert all(r["status"] == "ok" and r["schedules"] == 200 for r in rows)
    # the killed worker ran no row to its end after the kill; its job was redone elsewhere
    assert sum(r["worker"].endswith(f":{killed[0]}") for r in rows) <= 1


def test_a_failing_job_is_a_row_with_its_error_never_lost(tmp_path: Path) -> None:
    good = Job("protocol", seed=0, count=5)
    bad = Job("fast", seed=0, scenario="no-such-scenario")
    row = run_job(bad)
    assert row["status"] == "error" and "no-such-scenario" in row["error"] and row["reproduce"].startswith("mbms sim")
    with engine.client(workers=1) as c:
        res = engine.run(Spec("mixed", "protocol", (good, bad), "<test>"), tmp_path, c)
    assert res.ran == 2 and res.errors == 1
    by_kind = {r["kind"]: r for r in store.read_rows(tmp_path)}
    assert by_kind["protocol"]["status"] == "ok" and by_kind["fast"]["status"] == "error"


@pytest.mark.parametrize("text, field", [
    ('[campaign]\nkind = "fast"\nseedz = 3\n', "campaign.seedz"),
    ('[campaign]\nkind = "fast"\n[parameters]\n"plant.thermal.bogus" = [1.0]\n', "bogus"),
    ('[campaign]\nkind = "protocol"\n[protocol]\nsabotage = "everything"\n', "protocol.sabotage"),
    ('[campaign]\nkind = "protocol"\n[protocol]\nadversary = "sometimes"\n', "protocol.adversary"),
    ('[campaign]\nkind = "protocol"\n[parameters]\n"plant.thermal.ambient_c" = [1]\n', "parameters.plant.thermal.ambient_c"),
    ('[campaign]\nkind = "fast"\nsample = "random"\npoints = 2\n[parameters]\npacks = "many"\n', "parameters.packs"),
])
def test_a_bad_spec_is_rejected_naming_the_key(tmp_path: Path, text: str, field: str) -> None:
    (tmp_path / "bad.toml").write_text(text)
    with pytest.raises(ConfigError) as ei:
        spec_mod.load(tmp_path / "bad.toml")
    assert field in str(ei.value)
    r = mbms("campaign", "bad.toml", "--quiet", cwd=tmp_path)
    assert r.returncode == 2 and field in r.stderr and "Traceback" not in r.stderr


def test_random_sample_is_seeded_and_within_ranges() -> None:
    data = {"campaign": {"kind": "fast", "sample": "random", "points": 5, "sample_seed": 7},
            "fast": {"duration_s": 10.0},
            "parameters": {"plant.thermal.ambient_c": {"min": 0.0, "max": 45.0}, "packs": [2, 3]}}
    a, b = spec_mod.from_dict(data), spec_mod.from_dict(data)
    assert [j.params for j in a.jobs] == [j.params for j in b.jobs] and len(a.jobs) == 5
    for j in a.jobs:
        p = dict(j.params)
        assert 0.0 <= p["plant.thermal.ambient_c"] <= 45.0 and p["packs"] in (2, 3)
    data["campaign"]["sample_seed"] = 8
    assert [j.params for j in spec_mod.from_dict(data).jobs] != [j.params for j in a.jobs]


def test_set_paths_reach_list_elements_and_name_what_is_wrong() -> None:
    from mbms.sim.overrides import apply_settings, parse_setting
    from mbms.sim.scenario import Scenario

    sc = apply_settings(Scenario.default(), [parse_setting("plant.strings.*.initial_soc=0.4"),
                                             parse_setting("plant.strings.2.initial_soc=0.7")])
    assert [s["initial_soc"] for s in sc.plant["strings"]] == [0.4, 0.4, 0.7, 0.4]
    for text, words in [("plant.strings.9.initial_soc=1", "position 9 outside the list of 4"),
                        ("plant.strings.x.initial_soc=1", "expected a position or '*'"),
                        ("scenario.duration_s", "expected PATH=VALUE"),
                        ("scenario.duration_s=-5", "scenario.duration_s")]:
        with pytest.raises(ConfigError) as ei:
            apply_settings(Scenario.default(), [parse_setting(text)])
        assert words in str(ei.value)


@pytest.mark.parametrize("name", ["protocol_100k", "default_story_sweep", "ageing_random"])
def test_shipped_example_specs_are_valid(name: str) -> None:
    path = Path(__file__).resolve().parents[1] / "examples" / "campaigns" / f"{name}.toml"
    spec = spec_mod.load(path)  # every key checked, every fast point's simulation built once
    assert spec.jobs and len({j.job_id for j in spec.jobs}) == len(spec.jobs)
