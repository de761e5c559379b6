"""Peers driven from Python exchange real encoded messages over an in-memory broadcast and
a small electrical model: strings close one at a time, limits agree, faults isolate."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import pytest

from mbms.consensus import (
    ConsensusConfig,
    Contactors,
    LocalState,
    Peer,
    PeerOutput,
    Phase,
)
from mbms.errors import ConfigError

#: The system key of these peers (every test system has one; the attacker tests use none).
KEYS = [bytes(range(16))]

C_BUS_F = 2e-3
R_PRE_OHM = 20.0
TICK_MS = 10


@dataclass
class String:
    ocv_v: float
    r_ohm: float = 0.05
    dcl_a: float = 120.0
    ccl_a: float = 80.0
    fault: bool = False
    actual: Contactors = field(default_factory=Contactors)
    i_a: float = 0.0

    def conductance(self) -> float:
        if not self.actual.neg:
            return 0.0
        if self.actual.pos:
            return 1.0 / self.r_ohm
        if self.actual.pre:
            return 1.0 / (self.r_ohm + R_PRE_OHM)
        return 0.0


#: The brief §4 formula exactly, as the independent ``_n1_dcl`` below computes it (the
#: protocol's default also subtracts its own uncertainty: consensus sharing::Uncertainty).
EXACT = {"share_ocv_uncertainty_v": 0.0, "share_r_uncertainty": 0.0, "share_i_uncertainty": 0.0, "share_ocv_hold_v": 0.0, "share_r_hold": 0.0}


class Rig:
    """N peers, a bus with a DC-link capacitor, contactors that follow in one tick."""

    def __init__(self, ocvs: list[float], seed: int = 1, **cfg: float) -> None:
        n = len(ocvs)
        members = tuple(range(1, n + 1))
        self.strings = [String(ocv_v=v) for v in ocvs]
        settings = {**EXACT, **cfg}
        self.peers = [
            Peer(ConsensusConfig.of(system_id=7, node_id=i, members=members, seed=seed, **settings), incarnation=1000 + i,
                 keys=KEYS)
            for i in members
        ]
        self.v_bus = 0.0
        self.now_ms = 0
        self.outputs: list[PeerOutput | None] = [None] * n
        self.max_closing = 0
        self.down: set[int] = set()

    def local(self, k: int) -> LocalState:
        s = self.strings[k]
        return LocalState(
            ocv_v=s.ocv_v,
            r_ohm=s.r_ohm,
            soc=0.5,
            dcl_a=s.dcl_a,
            ccl_a=s.ccl_a,
            dcl_peak_a=2 * s.dcl_a,
            ccl_peak_a=2 * s.ccl_a,
            fault=s.fault,
            may_close=not s.fault,
            v_string_v=s.ocv_v - s.i_a * s.r_ohm,
            v_bus_v=self.v_bus,
            i_a=s.i_a,
            feedback=s.actual,
        )

    def step(self) -> None:
        dt = TICK_MS / 1000.0
        g = [s.conductance() for s in self.strings]
        c = C_BUS_F / dt
        self.v_bus = (c * self.v_bus + sum(gi * s.ocv_v for gi, s in zip(g, self.strings))) / (c + sum(g) + 1e-4)
        for gi, s in zip(g, self.strings):
            s.i_a = gi * (s.ocv_v - self.v_bus)
        outbox: list[tuple[int, bytes]] = []
        for k, peer in enumerate(self.peers):
            out = peer.tick(self.now_ms, self.local(k))
            self.outputs[k] = out
            # Contactors follow the command by the next tick.
            self.strings[k].actual = out.command
            outbox.extend((k, m) for m in out.messages)
        for k, m in outbox:
            for j, peer in enumerate(self.peers):
                if j != k and k not in self.down and j not in self.down:
                    assert peer.on_message(self.now_ms, m) is None
        closing = sum(1 for o in self.outputs if o and o.phase in (Phase.PRECHARGING, Phase.CLOSING))
        self.max_closing = max(self.max_closing, closing)
        self.now_ms += TICK_MS

    def run_until(self, cond, deadline_ms: int) -> None:  # type: ignore[no-untyped-def]
        while not cond():
            assert self.now_ms < deadline_ms, f"condition not reached by {deadline_ms} ms"
            self.step()


def _n1_dcl(strings: list[String]) -> float:
    """Independent §4 formula with N−1 (peak = 2× continuous), from the wire resolution."""

    def q(s: String) -> tuple[float, float, float, float]:
        return (round(s.ocv_v * 100) / 100, round(s.r_ohm * 1e4) / 1e4, int(s.dcl_a * 10) / 10, int(2 * s.dcl_a * 10) / 10)

    def lim(ss: list[tuple[float, float, float, float]], peak: bool) -> float:
        g = sum(1 / r for _, r, _, _ in ss)
        return max(0.0, min(g * r * (dp if peak else d) + sum((o2 - o) / r2 for o2, r2, _, _ in ss) for o, r, d, dp in ss))

    qs = [q(s) for s in strings]
    best = lim(qs, False)
    if len(qs) >= 2:
        for k in range(len(qs)):
            best = min(best, lim(qs[:k] + qs[k + 1 :], True))
    return best


def test_matching_strings_close_one_at_a_time_and_agree_limits() -> None:
    rig = Rig([400.0, 400.4, 399.7])
    rig.run_until(lambda: all(s.actual.main_closed for s in rig.strings), deadline_ms=6000)
    assert rig.max_closing == 1
    # Agreement: within 3 heartbeat periods every peer reports the same closed set and limits.
    for _ in range(30):
        rig.step()
    outs = [o for o in rig.outputs if o is not None]
    assert {o.closed_set for o in outs} == {(1, 2, 3)}
    assert len({(o.system_dcl_a, o.system_ccl_a) for o in outs}) == 1
    assert {o.speaker for o in outs} == {1}
    expected = _n1_dcl(rig.strings)
    assert outs[0].system_dcl_a == pytest.approx(expected, abs=0.15)
    assert outs[0].system_dcl_a > 2 * 120.0  # three strings carry more than two


def test_default_limits_stay_below_the_exact_formula_by_their_uncertainty() -> None:
    """With the protocol's default uncertainty (PeerConfig share_*) the agreed DCL is below the
    bare formula, and above zero."""
    rig = Rig([400.0, 400.4, 399.7], share_ocv_uncertainty_v=0.02, share_r_uncertainty=0.05,
              share_i_uncertainty=0.005)
    rig.run_until(lambda: all(s.actual.main_closed for s in rig.strings), deadline_ms=6000)
    for _ in range(30):
        rig.step()
    dcl = rig.outputs[0].system_dcl_a
    assert 0.8 * _n1_dcl(rig.strings) < dcl < _n1_dcl(rig.strings) - 1.0


def test_a_mismatched_string_waits_on_a_dead_bus_and_the_group_closes() -> None:
    rig = Rig([400.0, 400.5, 410.0])
    rig.run_until(lambda: rig.strings[0].actual.main_closed and rig.strings[1].actual.main_closed, deadline_ms=6000)
    for _ in range(100):
        rig.step()
    assert not rig.strings[2].actual.main_closed
    assert rig.outputs[2] is not None and rig.outputs[2].phase in (Phase.OPEN, Phase.WAITING)
    assert rig.max_closing == 1


def test_a_fault_opens_in_the_same_tick_and_the_others_derate() -> None:
    rig = Rig([400.0, 400.2, 400.1])
    rig.run_until(lambda: all(s.actual.main_closed for s in rig.strings), deadline_ms=6000)
    for _ in range(30):
        rig.step()
    before = rig.outputs[0].system_dcl_a  # type: ignore[union-attr]
    rig.strings[1].fault = True
    out = rig.peers[1].tick(rig.now_ms, rig.local(1))
    assert out.command == Contactors()  # S1: open in this very tick
    assert out.phase == Phase.ISOLATED
    assert any(e.kind == "isolated" for e in out.events)
    start = rig.now_ms
    rig.run_until(lambda: all(o is not None and o.closed_set == (1, 3) for o in rig.outputs), deadline_ms=start + 300)
    after = rig.outputs[0].system_dcl_a  # type: ignore[union-attr]
    assert after < before
    assert after == pytest.approx(_n1_dcl([rig.strings[0], rig.strings[2]]), abs=0.15)
    # Healthy again and matched: it rejoins.
    rig.strings[1].fault = False
    rig.run_until(lambda: rig.strings[1].actual.main_closed, deadline_ms=rig.now_ms + 4000)


def test_a_silent_peer_is_detected_within_three_periods_and_the_speaker_moves() -> None:
    rig = Rig([400.0, 400.1, 400.2])
    rig.run_until(lambda: all(s.actual.main_closed for s in rig.strings), deadline_ms=6000)
    assert rig.outputs[1].speaker == 1  # type: ignore[union-attr]
    rig.down.add(0)
    start = rig.now_ms
    rig.run_until(lambda: all(o is not None and 1 not in o.live_set for o in rig.outputs[1:]), deadline_ms=start + 300)
    assert {o.speaker for o in rig.outputs[1:] if o} == {2}
    events = [e.kind for e in rig.peers[1].tick(rig.now_ms, rig.local(1)).events]
    assert "peer_lost" not in events  # already reported once


def test_malformed_foreign_and_echoed_messages_are_counted_and_dropped() -> None:
    cfg = ConsensusConfig.of(system_id=7, node_id=1, members=(1, 2, 3))
    p = Peer(cfg, incarnation=5, keys=KEYS)
    # another system (its id is in the tag's input, not on the wire): its tags do not verify
    other = Peer(ConsensusConfig.of(system_id=8, node_id=2, members=(1, 2, 3)), incarnation=6, keys=KEYS)
    out = p.tick(0, Rig([400.0]).local(0))
    own = out.messages[0]
    foreign = other.tick(0, Rig([400.0]).local(0)).messages[0]
    rng = random.Random(3)
    reasons = [p.on_message(1, bytes(rng.randrange(256) for _ in range(rng.randrange(0, 80)))) for _ in range(300)]
    assert all(r is not None for r in reasons)
    assert p.on_message(2, foreign) == "forged"
    assert p.on_message(2, own) == "own_echo"
    c = p.counters()
    assert c["rx_forged"] >= 1 and c["rx_own_echo"] == 1
    assert c["rx_malformed"] + c["rx_unknown_sender"] + c["rx_forged"] >= 300
    assert c["rx_ok"] == 0


def test_duplicates_and_a_duplicate_member_id_are_reported() -> None:
    members = (1, 2, 3)
    a = Peer(ConsensusConfig.of(node_id=1, members=members), incarnation=1, keys=KEYS)
    b = Peer(ConsensusConfig.of(node_id=2, members=members), incarnation=2, keys=KEYS)
    b_twin = Peer(ConsensusConfig.of(node_id=2, members=members), incarnation=99, keys=KEYS)
    loc = Rig([400.0]).local(0)
    m1 = b.tick(0, loc).messages[0]
    assert a.on_message(0, m1) is None
    assert a.on_message(1, m1) == "duplicate"
    kinds = []
    for t in range(0, 400, 10):
        for m in b_twin.tick(t, loc).messages:
            a.on_message(t, m)
        for m in b.tick(t, loc).messages:
            a.on_message(t, m)
        kinds += [e.kind for e in a.tick(t, loc).events]
    assert "duplicate_id" in kinds
    assert a.counters()["duplicate_id"] >= 1


def test_bad_configuration_names_the_field() -> None:
    with pytest.raises(ConfigError) as e:
        Peer(ConsensusConfig.of(node_id=9, members=(1, 2, 3)), incarnation=1, keys=KEYS)
    assert e.value.field == "node_id"
    with pytest.raises(ConfigError) as e:
        Peer(ConsensusConfig.of(lease_ms=100), incarnation=1, keys=KEYS)
    assert e.value.field == "lease_ms"
