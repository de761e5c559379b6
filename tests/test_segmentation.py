"""Segmentation of peer messages into CAN frames (the consensus core's, through the node's
wrapper that classifies dropped frames)."""

from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from mbms.transport.segmentation import (MAX_SEGMENTED_LEN, Reassembler, SegmentError, can_id,
                                         classic_frame_count, frame_fd, segment_classic, split_id, unframe_fd)

FD_SIZES = (0, 1, 2, 3, 4, 5, 6, 7, 8, 12, 16, 20, 24, 32, 48, 64)


def test_identifier_layout() -> None:
    assert can_id(1, 0, 0) == 0x400 and can_id(64, 1, 7) == 0x7FF and can_id(3, 5, 2) == 0x400 | 2 << 4 | 1 << 3 | 2
    assert split_id(0x7FF) == (64, 1, 7)
    with pytest.raises(SegmentError) as ei:
        split_id(0x3FF)
    assert ei.value.kind == "foreign"


@given(st.binary(min_size=1, max_size=MAX_SEGMENTED_LEN), st.integers(1, 64), st.integers(0, 1000))
def test_classic_round_trip(msg: bytes, sender: int, counter: int) -> None:
    frames = segment_classic(sender, counter, msg)
    assert len(frames) == classic_frame_count(len(msg)) <= 8
    assert all(len(d) == 8 for _, d in frames[:-1]) and 1 <= len(frames[-1][1]) <= 8
    assert len({fid for fid, _ in frames}) == len(frames)
    r = Reassembler()
    outs = [r.push(fid, d) for fid, d in frames]
    assert outs[:-1] == [None] * (len(frames) - 1) and outs[-1] == (sender, msg)


@given(st.binary(min_size=1, max_size=MAX_SEGMENTED_LEN))
def test_fd_round_trip(msg: bytes) -> None:
    fid, data = frame_fd(7, msg)
    assert len(data) in FD_SIZES and data[1 + len(msg):] == b"\xcc" * (len(data) - 1 - len(msg))
    assert unframe_fd(fid, data) == (7, msg)


def test_limits_at_send() -> None:
    for bad in (b"", b"x" * 64):
        with pytest.raises(SegmentError):
            segment_classic(1, 0, bad)
    with pytest.raises(SegmentError):
        segment_classic(65, 0, b"x")


def test_receiver_rules() -> None:
    r = Reassembler()
    a = segment_classic(2, 0, b"A" * 20)  # 3 frames
    b = segment_classic(2, 1, b"B" * 20)
    r.push(*a[0])
    with pytest.raises(SegmentError) as ei:  # lost middle frame: incomplete, not garbage
        r.push(*a[2])
    assert ei.value.kind == "incomplete"
    # a new message (other toggle) restarts cleanly
    assert [r.push(*f) for f in b][-1] == (2, b"B" * 20)
    # the identifiers are the ones the core computes
    assert [fid for fid, _ in b] == [can_id(2, 1, i) for i in range(3)]
    with pytest.raises(SegmentError) as ei:  # length byte above 63
        r.push(can_id(2, 0, 0), bytes([200]) + b"1234567")
    assert ei.value.kind == "oversized"
    c = segment_classic(2, 0, b"C" * 20)
    r.push(*c[0])
    with pytest.raises(SegmentError) as ei:  # short non-last frame: cannot be a frame of this protocol
        r.push(c[1][0], c[1][1][:5])
    assert ei.value.kind == "malformed"
    # interleaved senders keep separate state
    d, e = segment_classic(3, 0, b"D" * 9), segment_classic(4, 0, b"E" * 9)
    assert r.push(*d[0]) is None and r.push(*e[0]) is None
    assert r.push(*d[1]) == (3, b"D" * 9) and r.push(*e[1]) == (4, b"E" * 9)
    assert r.dropped_frames == 3 and r.messages == 3


@given(st.lists(st.tuples(st.integers(0, 0x7FF), st.binary(max_size=9)), max_size=60))
def test_garbage_never_escapes_as_anything_but_segment_error(frames: list[tuple[int, bytes]]) -> None:
    r = Reassembler()
    for fid, d in frames:
        try:
            out = r.push(fid, d)
        except SegmentError:
            continue
        assert out is None or 1 <= len(out[1]) <= MAX_SEGMENTED_LEN
