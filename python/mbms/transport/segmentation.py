"""Carrying peer messages over CAN: the consensus core's segmentation (consensus/src/segment.rs,
bound in ``mbms._core`` and wrapped by :mod:`mbms.consensus`), plus what the node transport needs
around it: identifier arithmetic (for the DBC and frame classification) and a reassembler that
says WHY a frame was dropped (so the transport can count malformed / oversized / foreign).

Classic CAN (8-byte frames):

* CAN id (11 bit) = ``0x400 | (sender-1) << 4 | toggle << 3 | index``: sender 1..64, toggle = low
  bit of the sender's message counter (flips every message), index 0..7 = frame number. Lower
  index = higher CAN priority, so frames leave a controller in order.
* frame 0 data = ``[len, first <= 7 message bytes]``; frames 1.. carry <= 8 bytes; every frame but
  the last is full. A message is 1..63 bytes.
* One partial message per sender; a frame that does not continue it drops it. A lost frame loses
  the message; the next heartbeat repairs it (peer messages are full snapshots).

CAN FD: the whole message in one frame, same id with toggle = index = 0, ``[len, message, 0xCC..]``.

Replays cannot be recognised from a 1-bit toggle; the peer message carries a sequence number and
a boot nonce and the logic rejects replays (``NodeLogic.receive`` returns False).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mbms import consensus
from mbms.errors import FrameError

CAN_ID_BASE = 0x400
CAN_ID_LAST = 0x7FF
MAX_SEGMENTED_LEN = 63
MAX_SENDER = 64


class SegmentError(ValueError):
    """A frame or message that does not fit the format; ``kind`` is the counter it belongs to."""

    def __init__(self, kind: str, message: str) -> None:
        self.kind = kind  # "foreign" | "malformed" | "oversized" | "incomplete"
        super().__init__(message)


def can_id(sender: int, msg_counter: int, index: int) -> int:
    return CAN_ID_BASE | ((sender - 1) & 0x3F) << 4 | (msg_counter & 1) << 3 | (index & 7)


def is_peer_id(arbitration_id: int) -> bool:
    return CAN_ID_BASE <= arbitration_id <= CAN_ID_LAST


def split_id(arbitration_id: int) -> tuple[int, int, int]:
    """``(sender, toggle, index)`` of a peer-protocol id; SegmentError("foreign") otherwise."""
    if not is_peer_id(arbitration_id):
        raise SegmentError("foreign", f"CAN id {arbitration_id:#x} outside 0x400..=0x7ff")
    return ((arbitration_id >> 4) & 0x3F) + 1, (arbitration_id >> 3) & 1, arbitration_id & 7


def _length_kind(n: int) -> str:
    return "oversized" if n > MAX_SEGMENTED_LEN else "malformed"


def segment_classic(sender: int, msg_counter: int, msg: bytes) -> list[tuple[int, bytes]]:
    """Classic CAN frames ``(id, data)`` of one message (1..63 bytes)."""
    try:
        return consensus.segment_classic(sender, msg_counter, msg)
    except FrameError as exc:
        raise SegmentError(_length_kind(len(msg)), str(exc)) from None


def frame_fd(sender: int, msg: bytes) -> tuple[int, bytes]:
    try:
        return consensus.frame_fd(sender, msg)
    except FrameError as exc:
        raise SegmentError(_length_kind(len(msg)), str(exc)) from None


def unframe_fd(arbitration_id: int, data: bytes) -> tuple[int, bytes]:
    split_id(arbitration_id)
    try:
        return consensus.unframe_fd(arbitration_id, data)
    except FrameError as exc:
        raise SegmentError(_length_kind(data[0] if data else 0), str(exc)) from None


def classic_frame_count(length: int) -> int:
    return (length + 1 + 7) // 8


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
