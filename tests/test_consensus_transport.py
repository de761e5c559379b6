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
    MESSAGE_LEN,
    CanReassembler,
    bus_load_classic,
    frame_bits_classic,
    frame_fd,
    segment_classic,
    unframe_fd,
)
from mbms.errors import FrameError


def _msg(sender: int, kind: int, body: bytes) -> bytes:
    return bytes([(sender - 1) | kind << 6]) + (body * MESSAGE_LEN)[:MESSAGE_LEN - 1]


@settings(max_examples=300, deadline=None)
@given(msgs=st.lists(st.tuples(st.integers(1, 64), st.integers(0, 1), st.binary(min_size=1, max_size=MESSAGE_LEN - 1)),
                     min_size=1, max_size=6))
def test_classic_segmentation_round_trip(msgs: list[tuple[int, int, bytes]]) -> None:
    r = CanReassembler()
    got, want = [], []
    for sender, kind, body in msgs:
        m = _msg(sender, kind, body)
        want.append((sender, m))
        frames = segment_classic(m)
        assert [len(d) for _, d in frames] == [8, 8, 6] and all(0x400 <= cid <= 0x7FF for cid, _ in frames)
        for cid, d in frames:
            out = r.push(cid, d)
            if out is not None:
                got.append(out)
    assert got == want
    assert r.dropped_frames == 0


@settings(max_examples=200, deadline=None)
@given(sender=st.integers(1, 64), body=st.binary(min_size=1, max_size=MESSAGE_LEN - 1))
def test_fd_round_trip(sender: int, body: bytes) -> None:
    m = _msg(sender, 0, body)
    cid, data = frame_fd(m)
    assert len(data) == 24
    assert unframe_fd(cid, data) == (sender, m)


@settings(max_examples=200, deadline=None)
@given(frames=st.lists(st.tuples(st.integers(0, 0x7FF), st.binary(max_size=30)), max_size=30))
def test_reassembler_survives_arbitrary_frames(frames: list[tuple[int, bytes]]) -> None:
    r = CanReassembler()
    for cid, d in frames:
        out = r.push(cid, d)
        if out is not None:
            assert len(out[1]) == MESSAGE_LEN


def test_a_lost_frame_drops_the_message_and_is_counted() -> None:
    frames = segment_classic(_msg(3, 0, bytes(range(30))))
    r = CanReassembler()
    assert r.push(*frames[0]) is None
    assert r.push(*frames[2]) is None  # frame 1 lost
    assert r.dropped_frames == 1 and r.last_error and "out of order" in r.last_error
    assert r.last_error_kind == "incomplete"
    with pytest.raises(FrameError):
        segment_classic(bytes(64))
    with pytest.raises(FrameError):
        unframe_fd(0x123, b"\x01\x00")


def test_bus_load_figures() -> None:
    assert frame_bits_classic(0x400, bytes(8), worst=True) == 135
    exact = frame_bits_classic(0x455, bytes([0x55] * 8))
    assert 19 + 64 + 15 + 13 <= exact <= 135
    # 16 peers, one message (frames of 8, 8, 6 bytes) each per 100 ms at 500 kbit/s.
    assert bus_load_classic(16, 100.0) == pytest.approx(16 * (2 * 135 + 115) / 0.1 / 500_000)
    b = _core.consensus_bus_load(peers=8, duration_ms=4000)
    assert 0 < b["classic_exact_mean"] <= b["classic_worst_mean"] <= b["classic_worst_peak"]
    # the tag is one frame's 4 bytes per message: the untagged figure is lower, not by more than 4 of 22 bytes
    assert 0.7 * b["classic_exact_mean"] < b["classic_untagged_mean"] < b["classic_exact_mean"]
    assert b["classic_untagged_peak"] < b["classic_exact_peak"]
    assert b["max_message_len"] == MESSAGE_LEN


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
