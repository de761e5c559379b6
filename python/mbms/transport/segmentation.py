"""Carrying peer messages over CAN: the project's segmentation, in Python.

This mirrors ``consensus/src/segment.rs`` (the consensus core's sans-IO segmentation) bit for bit,
so the node speaks the format the consensus simulator and bus-load figures assume. When the
consensus core exposes it in ``mbms._core``, :class:`Reassembler` and :func:`segment_classic`
can be replaced by the bindings without any change on the wire.

Classic CAN (8-byte frames):

* CAN id (11 bit) = ``0x400 | (sender-1) << 4 | toggle << 3 | index``: sender 1..64 (6 bits),
  toggle = low bit of the sender's message counter (flips every message), index 0..7 = frame
  number. Lower index = higher CAN priority, so frames leave a controller in order.
* frame 0 data = ``[len, first <= 7 message bytes]``; frames 1.. carry <= 8 bytes; every frame but
  the last is full (DLC 8). A message is 1..63 bytes (8 * 8 - 1).
* The reassembler keeps one partial message per sender; a frame that does not continue it
  (index, toggle) drops the partial message. A lost frame loses the message; the next heartbeat
  repairs it (peer messages are full snapshots).

CAN FD: the whole message in one frame, same id with toggle = index = 0, data ``[len, message,
0xCC padding]`` up to the next FD data length.

Replays cannot be recognised from a 1-bit toggle; the peer message carries a 7-bit sequence
number and a boot nonce, and the logic rejects replays (``NodeLogic.receive`` returns False).
"""

from __future__ import annotations

from dataclasses import dataclass, field

CAN_ID_BASE = 0x400
CAN_ID_LAST = 0x7FF
MAX_SEGMENTED_LEN = 63
MAX_SENDER = 64
FD_SIZES = (0, 1, 2, 3, 4, 5, 6, 7, 8, 12, 16, 20, 24, 32, 48, 64)


class SegmentError(ValueError):
    """A frame or message that does not fit the format; ``kind`` is the counter it belongs to."""

    def __init__(self, kind: str, message: str) -> None:
        self.kind = kind  # "foreign" | "malformed" | "oversized"
        super().__init__(message)


def _check(sender: int, msg: bytes) -> None:
    if not 1 <= sender <= MAX_SENDER:
        raise SegmentError("malformed", f"sender {sender} outside 1..={MAX_SENDER}")
    if not msg or len(msg) > MAX_SEGMENTED_LEN:
        raise SegmentError("oversized" if msg else "malformed",
                           f"message of {len(msg)} bytes, expected 1..={MAX_SEGMENTED_LEN}")


def can_id(sender: int, msg_counter: int, index: int) -> int:
    return CAN_ID_BASE | ((sender - 1) & 0x3F) << 4 | (msg_counter & 1) << 3 | (index & 7)


def split_id(arbitration_id: int) -> tuple[int, int, int]:
    """``(sender, toggle, index)`` of a peer-protocol id; SegmentError("foreign") otherwise."""
    if not CAN_ID_BASE <= arbitration_id <= CAN_ID_LAST:
        raise SegmentError("foreign", f"CAN id {arbitration_id:#x} outside 0x400..=0x7ff")
    return ((arbitration_id >> 4) & 0x3F) + 1, (arbitration_id >> 3) & 1, arbitration_id & 7


def is_peer_id(arbitration_id: int) -> bool:
    return CAN_ID_BASE <= arbitration_id <= CAN_ID_LAST


def segment_classic(sender: int, msg_counter: int, msg: bytes) -> list[tuple[int, bytes]]:
    """Split one message into classic CAN frames ``(id, data)``."""
    _check(sender, msg)
    payload = bytes([len(msg)]) + msg
    return [(can_id(sender, msg_counter, i), payload[o : o + 8]) for i, o in enumerate(range(0, len(payload), 8))]


def classic_frame_count(length: int) -> int:
    return (length + 1 + 7) // 8


def frame_fd(sender: int, msg: bytes) -> tuple[int, bytes]:
    """Pack one message into one CAN FD frame."""
    _check(sender, msg)
    n = len(msg) + 1
    size = next(s for s in FD_SIZES if s >= n)
    return can_id(sender, 0, 0), (bytes([len(msg)]) + msg).ljust(size, b"\xcc")


def unframe_fd(arbitration_id: int, data: bytes) -> tuple[int, bytes]:
    sender, _, _ = split_id(arbitration_id)
    if not data or len(data) > 64:
        raise SegmentError("malformed", f"bad frame data length {len(data)}")
    n = data[0]
    if n == 0 or n > MAX_SEGMENTED_LEN:
        raise SegmentError("oversized" if n else "malformed", f"bad length byte {n}")
    if n + 1 > len(data):
        raise SegmentError("malformed", f"length byte {n} beyond the frame's {len(data)} bytes")
    return sender, bytes(data[1 : 1 + n])


@dataclass
class _Partial:
    active: bool = False
    toggle: int = 0
    next: int = 0
    length: int = 0
    buf: bytearray = field(default_factory=bytearray)


@dataclass
class Reassembler:
    """Reassembles classic-CAN-segmented messages, one partial message per sender."""

    dropped_frames: int = 0
    messages: int = 0
    _slots: dict[int, _Partial] = field(default_factory=dict)

    def push(self, arbitration_id: int, data: bytes) -> tuple[int, bytes] | None:
        """Feed one frame; returns ``(sender, message)`` when a message completes.

        Raises :class:`SegmentError` for a frame that is dropped (its ``kind`` says why)."""
        try:
            out = self._push(arbitration_id, data)
        except SegmentError:
            self.dropped_frames += 1
            raise
        if out is not None:
            self.messages += 1
        return out

    def _push(self, arbitration_id: int, data: bytes) -> tuple[int, bytes] | None:
        sender, toggle, index = split_id(arbitration_id)
        slot = self._slots.setdefault(sender, _Partial())
        if not data or len(data) > 8:
            slot.active = False
            raise SegmentError("malformed", f"bad frame data length {len(data)}")
        if index == 0:
            n = data[0]
            if n == 0 or n > MAX_SEGMENTED_LEN:
                slot.active = False
                raise SegmentError("oversized" if n else "malformed", f"bad length byte {n}")
            slot.active, slot.toggle, slot.next, slot.length = True, toggle, 1, n
            slot.buf = bytearray(data[1:])
        else:
            if not slot.active or slot.toggle != toggle or slot.next != index:
                slot.active = False
                raise SegmentError("malformed", f"frame {index} of sender {sender} out of order")
            slot.buf += data
            slot.next += 1
        remaining = slot.length - len(slot.buf)
        if remaining == 0:
            slot.active = False
            return sender, bytes(slot.buf)
        if remaining < 0 or len(data) != 8:
            slot.active = False
            raise SegmentError("malformed", f"bad frame data length {len(data)}")
        return None
