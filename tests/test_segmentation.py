"""Segmentation of peer messages into CAN frames: round trip and every receiver rule."""

from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from mbms.transport.segmentation import (CLASSIC_FRAME, FD_FRAME, Reassembler, fd_padded_len,
                                         max_message_len, segment)


@given(st.binary(max_size=max_message_len(CLASSIC_FRAME)), st.integers(0, 7))
def test_classic_round_trip(payload: bytes, counter: int) -> None:
    frames = segment(payload, counter)
    assert all(1 <= len(f) <= 8 for f in frames) and len(frames) <= 16
    r = Reassembler()
    out = [r.push(3, f) for f in frames]
    assert out[:-1] == [None] * (len(frames) - 1) and out[-1] == payload


@given(st.binary(max_size=max_message_len(FD_FRAME)))
def test_fd_round_trip_with_padding(payload: bytes) -> None:
    frames = segment(payload, 5, FD_FRAME)
    padded = [f + b"\x00" * (fd_padded_len(len(f)) - len(f)) for f in frames]  # what FD hardware delivers
    r = Reassembler(FD_FRAME)
    assert [r.push(1, f) for f in padded][-1] == payload


def test_too_long_is_refused_at_send() -> None:
    with pytest.raises(ValueError, match="110-byte limit"):
        segment(b"x" * 111, 0)


def test_receiver_rules() -> None:
    r = Reassembler()
    a = segment(b"A" * 20, 1)
    b = segment(b"B" * 20, 2)
    # lost middle frame -> malformed, message not delivered
    assert r.push(1, a[0]) is None and r.push(1, a[2]) is None
    assert r.stats.malformed == 1
    # duplicate frame tolerated, message delivered once
    assert r.push(1, b[0]) is None and r.push(1, b[0]) is None
    assert r.push(1, b[1]) is None and r.push(1, b[1]) is None
    assert len(b) == 4 and r.push(1, b[2]) is None
    assert r.push(1, b[3]) == b"B" * 20 and r.stats.duplicate == 2
    # the same message again (same counter) -> replayed
    for f in b:
        r.push(1, f)
    assert r.stats.replayed == 1
    # announced length beyond the limit -> oversized
    assert r.push(1, bytes([0x10]) + (500).to_bytes(2, "little")) is None and r.stats.oversized == 1
    # truncated last frame (length mismatch) -> malformed
    c = segment(b"C" * 10, 3)
    assert r.push(1, c[0]) is None and r.push(1, c[1][:-1]) is None and r.stats.malformed == 2
    # empty frame and too-long frame
    assert r.push(1, b"") is None and r.push(1, b"\x10" + b"\x00" * 8) is None and r.stats.malformed == 4
    # interleaved senders keep separate state
    d, e = segment(b"D" * 9, 0), segment(b"E" * 9, 0)
    assert r.push(2, d[0]) is None and r.push(4, e[0]) is None
    assert r.push(2, d[1]) == b"D" * 9 and r.push(4, e[1]) == b"E" * 9


@given(st.lists(st.binary(min_size=0, max_size=9), max_size=60))
def test_garbage_never_raises(frames: list[bytes]) -> None:
    r = Reassembler()
    for f in frames:
        out = r.push(1, f)
        assert out is None or len(out) <= max_message_len(CLASSIC_FRAME)
