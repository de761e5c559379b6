"""Segmentation of peer messages into CAN frames (the consensus core's, through the node's
wrapper that classifies dropped frames): 23-byte messages, three classic frames of 8, 8, 6 bytes."""

from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from mbms.transport.segmentation import (MESSAGE_LEN, Reassembler, SegmentError, can_id, frame_fd, segment_classic,
                                         split_id, unframe_fd)


def _msg(sender: int, kind: int, body: bytes) -> bytes:
    """A byte string with a valid header (sender, kind); the rest is opaque to the segmentation."""
    return bytes([(sender - 1) | kind << 6]) + (body * MESSAGE_LEN)[: MESSAGE_LEN - 1]


def test_identifier_layout() -> None:
    assert can_id(1, 0, 0, 0) == 0x400 and can_id(64, 1, 1, 2) == 0x7FE
    assert can_id(3, 1, 0, 2) == 0x400 | 2 << 4 | 1 << 3 | 2
    assert split_id(0x7FE) == (64, 1, 1, 2)
    for bad in (0x3FF, 0x403, 0x800):  # below the range; index 3 does not exist
        with pytest.raises(SegmentError) as ei:
            split_id(bad)
        assert ei.value.kind == "foreign"


@given(st.binary(min_size=1, max_size=MESSAGE_LEN - 1), st.integers(1, 64), st.integers(0, 1))
def test_classic_round_trip(body: bytes, sender: int, kind: int) -> None:
    msg = _msg(sender, kind, body)
    frames = segment_classic(msg)
    assert [len(d) for _, d in frames] == [8, 8, 6]
    assert [split_id(fid)[:2] for fid, _ in frames] == [(sender, kind)] * 3
    r = Reassembler()
    assert [r.push(fid, d) for fid, d in frames] == [None, None, (sender, msg)]


@given(st.binary(min_size=1, max_size=MESSAGE_LEN - 1), st.integers(1, 64))
def test_fd_round_trip(body: bytes, sender: int) -> None:
    msg = _msg(sender, 1, body)
    fid, data = frame_fd(msg)
    assert len(data) == 24 and data[-1:] == b"\xcc"
    assert unframe_fd(fid, data) == (sender, msg)


def test_limits_at_send() -> None:
    for bad in (b"", b"x" * (MESSAGE_LEN - 1), b"x" * (MESSAGE_LEN + 1), b"\x80" + b"x" * (MESSAGE_LEN - 1)):
        with pytest.raises(SegmentError):
            segment_classic(bad)


def test_receiver_rules() -> None:
    r = Reassembler()
    a = segment_classic(_msg(2, 0, b"\x00A"))  # counter low bit 0 (byte 6): toggle 0
    b = segment_classic(_msg(2, 0, b"\x01B"))  # toggle 1
    assert split_id(a[0][0])[2] != split_id(b[0][0])[2]
    r.push(*a[0])
    with pytest.raises(SegmentError) as ei:  # lost middle frame: incomplete, not garbage
        r.push(*a[2])
    assert ei.value.kind == "incomplete"
    r.push(*a[0])
    with pytest.raises(SegmentError) as ei:  # frame 1 of another message is never glued on
        r.push(*b[1])
    assert ei.value.kind == "incomplete"
    assert [r.push(*f) for f in b][-1] == (2, _msg(2, 0, b"\x01B"))
    with pytest.raises(SegmentError) as ei:  # a frame longer than any of this protocol
        r.push(can_id(2, 0, 0, 0), bytes(30))
    assert ei.value.kind == "oversized"
    c = segment_classic(_msg(2, 1, b"C"))
    r.push(*c[0])
    with pytest.raises(SegmentError) as ei:  # short frame: cannot be a frame of this protocol
        r.push(c[1][0], c[1][1][:5])
    assert ei.value.kind == "malformed"
    # interleaved senders keep separate state
    d, e = segment_classic(_msg(3, 0, b"D")), segment_classic(_msg(4, 1, b"E"))
    for i in range(2):
        assert r.push(*d[i]) is None and r.push(*e[i]) is None
    assert r.push(*d[2]) == (3, _msg(3, 0, b"D")) and r.push(*e[2]) == (4, _msg(4, 1, b"E"))
    assert r.messages == 3


@settings(max_examples=2000)
@given(st.lists(st.tuples(st.integers(0, 0x7FF), st.binary(max_size=30)), max_size=60))
def test_garbage_never_escapes_as_anything_but_segment_error(frames: list[tuple[int, bytes]]) -> None:
    r = Reassembler()
    for fid, d in frames:
        try:
            out = r.push(fid, d)
        except SegmentError:
            continue
        assert out is None or len(out[1]) == MESSAGE_LEN
        try:
            sender, m = unframe_fd(fid, d)
            assert len(m) == MESSAGE_LEN
        except SegmentError:
            pass
