"""Carrying peer messages over CAN: the consensus core's segmentation (consensus/src/segment.rs,
bound in ``mbms._core`` and wrapped by :mod:`mbms.consensus`), plus what the node transport needs
around it: identifier arithmetic (for the DBC and frame classification) and a reassembler that
says WHY a frame was dropped (so the transport can count malformed / oversized / foreign).

A peer message is a fixed layout of 23 bytes (consensus/src/wire.rs): a header byte (sender,
kind) and 22 bytes. Classic CAN:

* CAN id (11 bit) = ``0x400 | (sender-1) << 4 | kind << 3 | toggle << 2 | index``: sender 1..64,
  kind 0 = Limits / 1 = Detail, toggle = low bit of the message counter, index 0..2 = frame
  number. Lower index = higher CAN priority, so frames leave a controller in order.
* three frames of 8, 8 and 6 bytes (the header byte is the identifier), no length byte.
* One partial message per sender; a frame that does not continue it drops it. A lost frame loses
  the message; the next heartbeat repairs it (peer messages are full snapshots).

CAN FD: the 22 bytes in one 24-byte frame (padded with 0xCC), the id with toggle = index = 0.

Replays and forgeries cannot be recognised here; every message carries a boot counter, a message
counter and a 32-bit tag, which the core checks before anything else (brief S7).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mbms import consensus
from mbms.errors import FrameError

CAN_ID_BASE = 0x400
CAN_ID_LAST = 0x7FF
MESSAGE_LEN = consensus.MESSAGE_LEN
MAX_SENDER = 64
#: Frames per message on classic CAN.
CLASSIC_FRAMES = 3


class SegmentError(ValueError):
    """A frame or message that does not fit the format; ``kind`` is the counter it belongs to."""

    def __init__(self, kind: str, message: str) -> None:
        self.kind = kind  # "foreign" | "malformed" | "oversized" | "incomplete"
        super().__init__(message)


def can_id(sender: int, kind: int, toggle: int, index: int) -> int:
    return CAN_ID_BASE | ((sender - 1) & 0x3F) << 4 | (kind & 1) << 3 | (toggle & 1) << 2 | (index & 3)


def is_peer_id(arbitration_id: int) -> bool:
    return CAN_ID_BASE <= arbitration_id <= CAN_ID_LAST and arbitration_id & 3 != 3


def split_id(arbitration_id: int) -> tuple[int, int, int, int]:
    """``(sender, kind, toggle, index)`` of a peer-protocol id; SegmentError("foreign") otherwise."""
    if not is_peer_id(arbitration_id):
        raise SegmentError("foreign", f"CAN id {arbitration_id:#x} is not a peer-protocol frame")
    return (((arbitration_id >> 4) & 0x3F) + 1, (arbitration_id >> 3) & 1, (arbitration_id >> 2) & 1,
            arbitration_id & 3)


def _length_kind(n: int) -> str:
    return "oversized" if n > MESSAGE_LEN else "malformed"


def segment_classic(msg: bytes) -> list[tuple[int, bytes]]:
    """Classic CAN frames ``(id, data)`` of one message."""
    try:
        return consensus.segment_classic(msg)
    except FrameError as exc:
        raise SegmentError(_length_kind(len(msg)), str(exc)) from None


def frame_fd(msg: bytes) -> tuple[int, bytes]:
    try:
        return consensus.frame_fd(msg)
    except FrameError as exc:
        raise SegmentError(_length_kind(len(msg)), str(exc)) from None


def unframe_fd(arbitration_id: int, data: bytes) -> tuple[int, bytes]:
    split_id(arbitration_id)
    try:
        return consensus.unframe_fd(arbitration_id, data)
    except FrameError as exc:
        raise SegmentError(_length_kind(len(data)), str(exc)) from None


@dataclass
class Reassembler:
    """The core's ``CanReassembler`` with the reason of each dropped frame."""

    _core: consensus.CanReassembler = field(default_factory=consensus.CanReassembler)

    @property
    def dropped_frames(self) -> int:
        return int(self._core.dropped_frames)

    @property
    def messages(self) -> int:
        return int(self._core.messages)

    def push(self, arbitration_id: int, data: bytes) -> tuple[int, bytes] | None:
        """Feed one frame; ``(sender, message)`` when a message completes; SegmentError if dropped."""
        split_id(arbitration_id)
        before = self._core.dropped_frames
        out = self._core.push(arbitration_id, bytes(data))
        if self._core.dropped_frames != before:
            raise SegmentError(self._core.last_error_kind or "malformed", self._core.last_error or "frame dropped")
        return None if out is None else (int(out[0]), bytes(out[1]))
