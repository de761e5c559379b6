"""`mbms demo` runs the engine end to end and shows the injected fault opening the pack."""

from __future__ import annotations

import re

import pytest

from mbms.cli import main


def test_demo_timeline_shows_the_open_and_the_recovery(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--every", "1200", "--fault-at", "3000", "--fault-cell", "7"]) == 0
    out = capsys.readouterr().out
    m = re.search(r"contactors OPEN at t=(\d+) s", out)
    assert m, out
    # the fault is confirmed at the first sample at least the 0.3 s debounce after 3000 s
    assert int(m.group(1)) == 3001
    assert "voltage_sensor[7]:fault" in out
    assert "faults reset" in out
    err = re.search(r"final SOC error vs the simulated pack: mean ([\d.]+) %, max ([\d.]+) %", out)
    assert err and float(err.group(2)) < 1.0
