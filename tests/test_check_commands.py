"""``mbms sim --check`` and ``mbms campaign --check`` (issue 10: every shipped example is checked,
.ci/wheel runs them on the installed wheel): the load a run starts with, without the run; 0 for
the shipped files, 2 in one line naming the file and the field for a broken one."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from mbms.paths import data_dir

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "campaigns"


def _mbms(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mbms", *args], capture_output=True, text=True, cwd=cwd, timeout=300)


@pytest.mark.parametrize("scenario", sorted(p.stem for p in (data_dir() / "scenarios").glob("*.toml")))
def test_every_shipped_scenario_checks_clean(scenario: str, tmp_path: Path) -> None:
    r = _mbms("sim", "--scenario", scenario, "--check", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert f"{scenario}.toml: scenario " in r.stdout


def test_sim_check_refuses_a_bad_scenario_and_a_bad_setting(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[scenario]\nextends = "default"\nduration_s = -5\n')
    r = _mbms("sim", "--scenario", str(bad), "--check", cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.strip() == f"mbms sim: error: {bad}: scenario.duration_s: expected a number > 0.0, got -5"
    r = _mbms("sim", "--check", "--set", "plant.strings.0.no_such_key=1", cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "no_such_key" in r.stderr


@pytest.mark.parametrize("spec", sorted(EXAMPLES.glob("*.toml")), ids=lambda p: p.stem)
def test_every_example_campaign_spec_checks_clean(spec: Path, tmp_path: Path) -> None:
    r = _mbms("campaign", str(spec), "--check", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert " jobs" in r.stdout and not list(tmp_path.iterdir())  # nothing run, nothing written


def test_campaign_check_refuses_an_unknown_parameter(tmp_path: Path) -> None:
    spec = tmp_path / "bad.toml"
    spec.write_text('[campaign]\nname = "x"\nkind = "fast"\nseeds = 1\n[fast]\nscenario = "default"\n'
                    'duration_s = 10.0\n[parameters]\n"plant.no_such_key" = [1.0, 2.0]\n')
    r = _mbms("campaign", str(spec), "--check", cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.startswith(f"mbms campaign: error: {spec}: parameters.plant") and "no_such_key" in r.stderr
