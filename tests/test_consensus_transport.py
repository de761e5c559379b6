"""CAN segmentation and reassembly of peer messages, bus-load figures, the simulator entry
points and the bench command."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mbms import _core
from mbms.consensus import (
    CanReassembler,
    bus_load_classic,
    frame_bits_classic,
    frame_fd,
    segment_classic,
    unframe_fd,
)
from mbms.errors import FrameError


@settings(max_examples=300, deadline=None)
@given(
    msgs=st.lists(
        st.tuples(st.integers(1, 64), st.binary(min_size=1, max_size=63)), min_size=1, max_size=6
    ),
    counter=st.integers(0, 2**32 - 1),
)
def test_classic_segmentation_round_trip(msgs: list[tuple[int, bytes]], counter: int) -> None:
    r = CanReassembler()
    got = []
    for sender, m in msgs:
        frames = segment_classic(sender, counter, m)
        assert all(len(d) <= 8 and 0x400 <= cid <= 0x7FF for cid, d in frames)
        assert len(frames) == (len(m) + 1 + 7) // 8
        for cid, d in frames:
            out = r.push(cid, d)
            if out is not None:
                got.append(out)
        counter += 1
    assert got == msgs
    assert r.dropped_frames == 0


@settings(max_examples=200, deadline=None)
@given(sender=st.integers(1, 64), m=st.binary(min_size=1, max_size=63))
def test_fd_round_trip(sender: int, m: bytes) -> None:
    cid, data = frame_fd(sender, m)
    assert len(data) in (8, 12, 16, 20, 24, 32, 48, 64) or len(data) <= 8
    assert unframe_fd(cid, data) == (sender, m)


@settings(max_examples=200, deadline=None)
@given(frames=st.lists(st.tuples(st.integers(0, 0x7FF), st.binary(max_size=10)), max_size=30))
def test_reassembler_survives_arbitrary_frames(frames: list[tuple[int, bytes]]) -> None:
    r = CanReassembler()
    for cid, d in frames:
        out = r.push(cid, d)
        if out is not None:
            assert 1 <= len(out[1]) <= 63


def test_a_lost_frame_drops_the_message_and_is_counted() -> None:
    frames = segment_classic(3, 0, bytes(range(30)))
    r = CanReassembler()
    assert r.push(*frames[0]) is None
    assert r.push(*frames[2]) is None  # frame 1 lost
    assert r.dropped_frames == 1 and r.last_error and "out of order" in r.last_error
    assert r.last_error_kind == "incomplete"
    with pytest.raises(FrameError):
        segment_classic(3, 0, bytes(64))
    with pytest.raises(FrameError):
        unframe_fd(0x123, b"\x01\x00")


def test_bus_load_figures() -> None:
    assert frame_bits_classic(0x400, bytes(8), worst=True) == 135
    exact = frame_bits_classic(0x455, bytes([0x55] * 8))
    assert 19 + 64 + 15 + 13 <= exact <= 135
    # 16 peers, one 28-byte message each per 100 ms at 500 kbit/s.
    assert bus_load_classic(28, 16, 100.0) == pytest.approx(16 * 510 / 0.1 / 500_000)
    b = _core.consensus_bus_load(peers=8, duration_ms=4000)
    assert 0 < b["classic_exact_mean"] <= b["classic_worst_mean"] <= b["classic_worst_peak"]
    assert b["max_message_len"] <= 64


def test_simulator_runs_seeded_schedules_without_violations() -> None:
    s = _core.consensus_sim(60, first_seed=1000, peers_min=3, peers_max=5)
    assert s["schedules"] == 60
    assert s["violations"] == 0, s["failing"]
    assert s["detect_samples"] > 0 and s["detect_p99_periods"] < 4
    again = _core.consensus_sim(60, first_seed=1000, peers_min=3, peers_max=5, threads=1)
    assert again["closes"] == s["closes"] and again["messages"] == s["messages"]  # deterministic
    violations, trace = _core.consensus_sim_replay(1003)
    assert violations == [] and trace


def test_bench_consensus_json() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "mbms", "bench", "consensus", "--json", "--seeds", "40", "--bus-peers", "16"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout)
    for key in ("schedules", "violations", "agree_p99_periods", "detect_p99_periods", "bus_load_classic_500k_16peers"):
        assert key in r
    assert r["schedules"] == 40 and r["violations"] == 0
    assert 0 < r["bus_load_classic_500k_16peers"] < 1
