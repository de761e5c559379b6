"""Segmentation of peer messages into CAN frames and their reassembly.

Peer messages (msgpack snapshots of the consensus protocol) are longer than one classic CAN frame
(8 bytes). Each node sends its messages on ONE CAN identifier, ``peer_base_id + node_id``, so frames
of one sender are never reordered on the bus (CAN arbitration is per identifier and a controller
sends one identifier's frames in order) and a receiver reassembles per identifier.

Frame format (every frame):

    byte 0      header:  bit 7..5  message counter (mod 8), the same in all frames of a message
                         bit 4     last flag, set in the last frame of a message
                         bit 3..0  frame index 0..15 within the message
    frame 0     bytes 1-2  total message length, little endian (lets CAN FD padding be removed
                           and a truncated message be detected)
                bytes 3..  first payload bytes
    frame k>0   bytes 1..  next payload bytes

Frame data size is 8 bytes (classic CAN) or 64 (CAN FD). At most 16 frames per message: 110 bytes
of message on classic CAN, 1006 on CAN FD. Only the last frame may be shorter.

Receiver rules (each violation is counted and the frame dropped; nothing raises):

* a frame whose index is not the next expected one, whose counter differs from the message in
  progress, or a last frame whose length does not match the announced total -> ``malformed``;
* a total length above the maximum -> ``oversized``;
* a complete message with the same counter as the previous complete one from that sender
  -> ``replayed`` (a sender increments the counter for every message, so consecutive messages
  never share it; a retransmitted or replayed message does);
* a repeat of the frame just accepted (same counter and index) -> ``duplicate`` (CAN may deliver
  a frame twice when an acknowledgement is lost).

The consensus core is expected to bring the same function as sans-IO code in ``mbms._core``; this
module is the reference until then and the DBC (hw/dbc/mbms.dbc, MBMS_PEER_<id>) describes it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

MAX_FRAMES = 16
CLASSIC_FRAME = 8
FD_FRAME = 64

# CAN FD data lengths (ISO 11898-1:2015): a frame of n bytes is sent padded to the next of these.
FD_LENGTHS = (0, 1, 2, 3, 4, 5, 6, 7, 8, 12, 16, 20, 24, 32, 48, 64)


def max_message_len(frame_size: int) -> int:
    return MAX_FRAMES * (frame_size - 1) - 2


def fd_padded_len(n: int) -> int:
    for length in FD_LENGTHS:
        if length >= n:
            return length
    raise ValueError(f"CAN FD frame data of {n} bytes exceeds 64")


def segment(payload: bytes, counter: int, frame_size: int = CLASSIC_FRAME) -> list[bytes]:
    """Split ``payload`` into frame data blocks (see the module docstring)."""
    if frame_size not in (CLASSIC_FRAME, FD_FRAME):
        raise ValueError(f"frame_size must be {CLASSIC_FRAME} or {FD_FRAME}, got {frame_size}")
    limit = max_message_len(frame_size)
    if len(payload) > limit:
        raise ValueError(f"message of {len(payload)} bytes exceeds the {limit}-byte limit for {frame_size}-byte frames")
    body = len(payload).to_bytes(2, "little") + payload
    chunk = frame_size - 1
    pieces = [body[i : i + chunk] for i in range(0, len(body), chunk)]
    c = (counter & 0x7) << 5
    frames = []
    for idx, piece in enumerate(pieces):
        last = 0x10 if idx == len(pieces) - 1 else 0
        frames.append(bytes([c | last | idx]) + piece)
    return frames


@dataclass
class SegmentStats:
    frames: int = 0
    messages: int = 0
    malformed: int = 0
    oversized: int = 0
    replayed: int = 0
    duplicate: int = 0


@dataclass
class _Partial:
    counter: int
    next_index: int
    expected: int
    buf: bytearray


@dataclass
class Reassembler:
    """Reassembles the frames of many senders; ``push`` returns a complete message or None."""

    frame_size: int = CLASSIC_FRAME
    stats: SegmentStats = field(default_factory=SegmentStats)
    _partial: dict[int, _Partial] = field(default_factory=dict)
    _last_counter: dict[int, int] = field(default_factory=dict)

    def push(self, sender: int, data: bytes) -> bytes | None:
        self.stats.frames += 1
        if not 1 <= len(data) <= self.frame_size:
            self.stats.malformed += 1
            self._partial.pop(sender, None)
            return None
        hdr = data[0]
        counter, last, idx = hdr >> 5, bool(hdr & 0x10), hdr & 0x0F
        part = self._partial.get(sender)
        if idx == 0:
            if part is not None and part.counter == counter and part.next_index == 1 and not last:
                # the frame we just accepted came again
                self.stats.duplicate += 1
                return None
            if len(data) < 3:
                self.stats.malformed += 1
                self._partial.pop(sender, None)
                return None
            expected = int.from_bytes(data[1:3], "little")
            if expected > max_message_len(self.frame_size):
                self.stats.oversized += 1
                self._partial.pop(sender, None)
                return None
            if part is not None:  # a message was left incomplete: its frames are lost
                self.stats.malformed += 1
            part = _Partial(counter, 1, expected, bytearray(data[3:]))
            self._partial[sender] = part
        else:
            if part is None:
                self.stats.malformed += 1
                return None
            if part.counter == counter and idx == part.next_index - 1:
                self.stats.duplicate += 1
                return None
            if part.counter != counter or idx != part.next_index:
                self.stats.malformed += 1
                del self._partial[sender]
                return None
            part.buf += data[1:]
            part.next_index += 1
        if not last and len(part.buf) >= part.expected:
            # more frames announced than the length needs
            self.stats.malformed += 1
            del self._partial[sender]
            return None
        if not last:
            if part.next_index >= MAX_FRAMES:
                self.stats.oversized += 1
                del self._partial[sender]
            return None
        del self._partial[sender]
        excess = len(part.buf) - part.expected
        # classic CAN: exact length; CAN FD: the last frame may carry padding, nothing more
        if excess < 0 or (excess > 0 and (self.frame_size == CLASSIC_FRAME or excess >= len(data) - 1)):
            self.stats.malformed += 1
            return None
        if self._last_counter.get(sender) == counter:
            self.stats.replayed += 1
            return None
        self._last_counter[sender] = counter
        self.stats.messages += 1
        return bytes(part.buf[: part.expected])

    def forget(self, sender: int) -> None:
        """Forget a sender's counter (it restarted: its counter starts again)."""
        self._partial.pop(sender, None)
        self._last_counter.pop(sender, None)
