"""mbms._core.SafetyMonitor, the safety monitor processes mode uses (sim/src/monitor.rs): the
same rules and margins as the protocol and fast simulators, fed from outside."""

from typing import Any

import pytest

from mbms import _core
from mbms.consensus import ConsensusConfig
from mbms.types import Violation

OPEN = (False, False, False)
PRE = (True, False, True)
CLOSED = (True, True, False)


def monitor(n: int = 3) -> _core.SafetyMonitor:
    return _core.SafetyMonitor(ConsensusConfig.of(node_id=1, members=tuple(range(1, n + 1))).to_dict())


def rules(found: list[dict[str, Any]]) -> list[str]:
    return [Violation.from_dict(v).rule for v in found]


def test_s2_two_precharge_relays_at_once() -> None:
    m = monitor()
    for k in range(3):
        m.node_report(k, True)
    assert m.plant_step(0.0, 400.0, [PRE, OPEN, OPEN], [400.0] * 3, [0.0] * 3, False) == []
    found = m.plant_step(0.01, 400.0, [PRE, PRE, OPEN], [400.0] * 3, [0.0] * 3, False)
    assert rules(found) == ["S2"] and found[0]["t_s"] == pytest.approx(0.01)


def test_s3_close_at_a_true_mismatch_beyond_the_margin() -> None:
    m = monitor()
    limit = ConsensusConfig.of().dv_close_v + _core.SafetyMonitor.margins()["s3_dv_margin_v"]
    v = [400.0 - (limit - 0.2), 390.0, 390.0]  # string 1 matched within the margin
    m.plant_step(0.0, 400.0, [PRE, OPEN, OPEN], v, [0.0] * 3, False)
    assert m.plant_step(0.01, 400.0, [CLOSED, OPEN, OPEN], v, [0.0] * 3, False) == []
    v2 = [400.0, 400.0 - (limit + 0.5), 390.0]  # string 2 closes 0.5 V beyond it
    m.plant_step(0.02, 400.0, [CLOSED, OPEN, OPEN], v2, [0.0] * 3, False)
    found = m.plant_step(0.03, 400.0, [CLOSED, CLOSED, OPEN], v2, [0.0] * 3, False)
    assert rules(found) == ["S3"] and "string 2" in found[0]["detail"] and found[0]["what"]["kind"] == "closed_on_mismatch"
    assert found[0]["what"]["string"] == 1
    assert [k for _, k, _ in m.figures()["closes"]] == [0, 1]


def test_s3_uses_the_plants_close_event_when_given() -> None:
    m = monitor()
    m.plant_step(0.0, 400.0, [PRE, OPEN, OPEN], [399.9, 0.0, 0.0], [0.0] * 3, False)
    m.main_close_event(0, 6.0)  # the plant saw 6 V at the instant of contact
    found = m.plant_step(0.01, 400.0, [CLOSED, OPEN, OPEN], [399.9, 0.0, 0.0], [0.0] * 3, False)
    assert rules(found) == ["S3"]


def test_s1_killed_node_string_must_open_within_the_deadline() -> None:
    m = monitor()
    deadline = _core.SafetyMonitor.margins()["s1_open_deadline_s"]
    m.node_report(0, False)  # killed
    v = [400.0] * 3
    assert m.plant_step(0.0, 400.0, [CLOSED, OPEN, OPEN], v, [0.0] * 3, False) == []
    assert m.plant_step(deadline, 400.0, [CLOSED, OPEN, OPEN], v, [0.0] * 3, False) == []
    assert rules(m.plant_step(deadline + 0.01, 400.0, [CLOSED, OPEN, OPEN], v, [0.0] * 3, False)) == ["S1"]
    assert rules(m.violations()) == ["S1"]


def test_s5_telemetry_disagreement_longer_than_the_bound() -> None:
    m = monitor(2)
    bound_s = _core.SafetyMonitor.margins()["s5_bound_periods"] * ConsensusConfig.of().heartbeat_ms / 1000
    m.node_report(0, True, phase=4, system_dcl_a=100.0, system_ccl_a=50.0, closed_count=2)
    m.node_report(1, True, phase=4, system_dcl_a=90.0, system_ccl_a=50.0, closed_count=2)
    t, found = 0.0, []
    while t < bound_s + 0.5:
        found += m.plant_step(t, 400.0, [CLOSED, CLOSED], [400.0] * 2, [0.0] * 2, True)
        t += 0.1
    assert rules(found) == ["S5"]


def test_bad_input_is_a_clear_error() -> None:
    m = monitor()
    with pytest.raises(ValueError, match="expected 3 strings"):
        m.plant_step(0.0, 400.0, [OPEN], [0.0], [0.0], False)
    with pytest.raises(ValueError, match="phase"):
        m.node_report(0, True, phase=9)
