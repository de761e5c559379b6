"""The runtime's fail-safe, re-arm, error containment and persistence, driven period by period
with a controlled clock (deterministic: no sockets, no sleeps)."""

from __future__ import annotations

import struct

from pathlib import Path

import msgpack
import numpy as np
from node_double import DoubleLogic

from mbms.hardware.base import Hardware
from mbms.config_views import NodeSection
from mbms.types import ALL_OPEN, Contactors, Measurement
from mbms.node.persistence import StateStore
from mbms.node.runtime import NodeRuntime

CLOSED = Contactors(True, True, False)


class ScriptedHardware(Hardware):
    """TEST DOUBLE: a hardware adapter whose samples and link state the test sets."""

    def __init__(self) -> None:
        self.sample: tuple[Measurement, float] | None = None
        self.ok = True
        self.commands: list[tuple[Contactors, np.ndarray]] = []

    async def start(self) -> None: ...

    def read(self) -> tuple[Measurement, float] | None:
        return self.sample

    def command(self, contactors: Contactors, balance: np.ndarray) -> None:
        self.commands.append((contactors, balance))

    def link_ok(self, now: float) -> bool:
        return self.ok

    def close(self) -> None: ...


def meas(t: float, valid: bool = True) -> Measurement:
    return Measurement(t, np.full(4, 3.7), np.full(2, 25.0), 1.0, 14.8, 14.8, CLOSED, valid)


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def make(tmp: Path | None = None, **node: object) -> tuple[NodeRuntime, DoubleLogic, ScriptedHardware, Clock]:
    clock = Clock()
    cfg = NodeSection.of(id=1, state_dir=tmp or Path("/nonexistent"), control_period_ms=100, estimation_period_ms=100,
                      stale_ms=300, overrun_ms=250, state_save_ms=500, **node)  # type: ignore[arg-type]
    logic, hw = DoubleLogic(1), ScriptedHardware()
    rt = NodeRuntime(cfg, logic, hw, store=StateStore(tmp, 1) if tmp else None, clock=clock)
    return rt, logic, hw, clock


def run_periods(rt: NodeRuntime, hw: ScriptedHardware, clock: Clock, n: int, fresh: bool = True, lateness: float = 0.0) -> None:
    for _ in range(n):
        clock.t += 0.1
        if fresh:
            hw.sample = (meas(clock.t), clock.t)
        rt.period(clock.t, lateness)


def test_stale_measurement_forces_open_then_rearm_needs_an_open_command() -> None:
    rt, logic, hw, clock = make()
    run_periods(rt, hw, clock, 4)
    assert hw.commands[-1][0] == CLOSED and rt.fail_safe_reason is None
    run_periods(rt, hw, clock, 4, fresh=False)  # sensor samples stop arriving: > 300 ms -> stale
    assert rt.fail_safe_reason is not None and "stale measurement" in rt.fail_safe_reason
    assert hw.commands[-1][0] == ALL_OPEN and len(logic.fail_safes) == 1 and logic.invalid_steps >= 1
    run_periods(rt, hw, clock, 2, fresh=False)
    assert len(logic.fail_safes) == 1  # told once per episode
    assert rt.rearm_pending and rt._logic_opened  # the logic commanded all-open itself while told
    # samples come back: the logic re-sequences (precharge, then close) and is passed through
    run_periods(rt, hw, clock, 3)
    assert rt.fail_safe_reason is None
    assert [c for c, _ in hw.commands[-3:]] == [Contactors(True, False, True), Contactors(True, False, True), CLOSED]


def test_a_logic_that_ignores_the_fail_safe_cannot_close_without_precharge() -> None:
    rt, logic, hw, clock = make()
    run_periods(rt, hw, clock, 4)
    orig = logic.step

    def stubborn(t_ms: int, m: Measurement):  # type: ignore[no-untyped-def]
        out = orig(t_ms, m)
        out.contactors = CLOSED  # a broken logic: ignores fail-safe and invalid samples
        return out

    logic.step = stubborn  # type: ignore[method-assign]
    hw.ok = False
    run_periods(rt, hw, clock, 2)
    assert "hardware link lost" in (rt.fail_safe_reason or "")
    hw.ok = True
    run_periods(rt, hw, clock, 10)
    assert rt.fail_safe_reason is None and rt.rearm_pending
    assert all(c == ALL_OPEN for c, _ in hw.commands[-12:])


def test_overrun_invalid_sample_and_logic_errors_force_open_and_the_loop_goes_on() -> None:
    rt, logic, hw, clock = make()
    run_periods(rt, hw, clock, 4)
    run_periods(rt, hw, clock, 1, lateness=0.3)
    assert "overrun" in (rt.fail_safe_reason or "") and rt.timing.overruns == 1 and hw.commands[-1][0] == ALL_OPEN
    run_periods(rt, hw, clock, 5)
    assert hw.commands[-1][0] == CLOSED
    clock.t += 0.1
    hw.sample = (meas(clock.t, valid=False), clock.t)
    rt.period(clock.t, 0.0)
    assert "invalid" in (rt.fail_safe_reason or "") and hw.commands[-1][0] == ALL_OPEN
    run_periods(rt, hw, clock, 5)

    def boom(t_ms: int, m: Measurement) -> None:
        raise RuntimeError("bug")

    logic.step = boom  # type: ignore[method-assign,assignment]
    run_periods(rt, hw, clock, 2)
    assert "logic error" in (rt.fail_safe_reason or "") and hw.commands[-1][0] == ALL_OPEN
    assert rt.fail_safe_count == 3 and rt.periods == 18  # 4 + 1 + 5 + 1 + 5 + 2


def test_receive_rejections_are_counted_and_errors_contained() -> None:
    rt, logic, hw, clock = make()
    hb = bytes([1]) + struct.pack("<BIf", 2, 1, 0.5).ljust(23, b"\0")  # the double's heartbeat of node 2
    rt._on_message(2, hb)
    rt._on_message(2, hb)  # replay: the logic rejects it
    rt._on_message(2, b"\xc1")
    logic.receive = lambda t, p: 1 / 0  # type: ignore[method-assign,assignment]
    rt._on_message(3, b"x")
    assert rt.accepted_messages == 1 and rt.rejected_messages == 3


def test_balancing_passes_through_only_when_not_in_fail_safe() -> None:
    rt, logic, hw, clock = make()
    orig = logic.step

    def step(t_ms: int, m: Measurement):  # type: ignore[no-untyped-def]
        out = orig(t_ms, m)
        out.balance = np.array([True, False, True, False])
        return out

    logic.step = step  # type: ignore[method-assign]
    run_periods(rt, hw, clock, 2)
    assert hw.commands[-1][1].tolist() == [True, False, True, False]
    hw.ok = False
    run_periods(rt, hw, clock, 1)
    assert not hw.commands[-1][1].any()


def test_state_saved_periodically_and_restored(tmp_path: Path) -> None:
    rt, logic, hw, clock = make(tmp_path)
    run_periods(rt, hw, clock, 12)
    assert rt.store is not None and 2 <= rt.store.saves <= 4  # every 500 ms
    rt.shutdown()
    assert hw.commands[-1][0] == ALL_OPEN  # a stopping node opens its string
    rt2, logic2, _, _ = make(tmp_path)
    assert rt2.restore() == "ok" and logic2.steps == 12
    (tmp_path / "state.bin").write_bytes(b"MBMS" + bytes(10))
    rt3, logic3, _, _ = make(tmp_path)
    assert rt3.restore() == "corrupt" and logic3.steps == 0
    # a blob the store accepts but the logic refuses: quarantined too
    rt3.store.save(b"not msgpack of a state")  # type: ignore[union-attr]
    rt4, logic4, _, _ = make(tmp_path)
    assert rt4.restore() == "corrupt" and (tmp_path / "state.bin.corrupt").exists()
