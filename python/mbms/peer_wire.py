"""Read-only decoder of the peer messages (the consensus core's wire format, consensus/src/wire.rs)
for tools such as ``mbms monitor``. Nodes never use it: NodeCore decodes its own messages.

    [verkind, system_id, sender, seq, incarnation, flags, coord, b0..b5 (, tag)]
    verkind = version<<4 | kind (version 1; kind 0 = Limits, 1 = Detail)
    flags   = phase (3 bits) | fault<<3 | main_closed<<4 | pre_closed<<5 | may_close<<6
    coord   = req_ticket (4) | grant_ticket<<4 (4) | grant_to<<8 (7)
    Limits: ocv [10 mV], r [0.1 mOhm], dcl, ccl, dcl_peak, ccl_peak [0.1 A]
    Detail: proposed system dcl, ccl [0.1 A], soc [0.1 %], v_bus, v_string [10 mV], i [0.1 A]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgpack

from mbms.errors import FrameError

VERSION = 1
MAX_MESSAGE_LEN = 64


@dataclass(frozen=True)
class PeerMessage:
    system_id: int
    sender: int
    seq: int
    incarnation: int
    phase: int
    fault: bool
    main_closed: bool
    pre_closed: bool
    may_close: bool
    req_ticket: int
    grant_to: int
    kind: str  # "limits" | "detail"
    values: dict[str, float]


def decode(data: bytes) -> PeerMessage:
    if not data or len(data) > MAX_MESSAGE_LEN:
        raise FrameError(f"peer message of {len(data)} bytes, expected 1..{MAX_MESSAGE_LEN}")
    try:
        arr: Any = msgpack.unpackb(data, raw=False, max_array_len=16, max_bin_len=8)
    except Exception as exc:
        raise FrameError(f"peer message is not msgpack: {exc}") from None
    if not isinstance(arr, list) or len(arr) not in (13, 14) or not all(isinstance(x, int) for x in arr[:13]):
        raise FrameError("peer message: expected an array of 13 integers (+ tag)")
    verkind, system_id, sender, seq, inc, flags, coord = arr[:7]
    if verkind >> 4 != VERSION or (verkind & 15) > 1:
        raise FrameError(f"peer message version/kind {verkind:#x}, expected version {VERSION}, kind 0 or 1")
    if not 1 <= sender <= 64 or flags & 0x80 or coord >> 15:
        raise FrameError("peer message: sender, flags or coord out of range")
    b = arr[7:13]
    if verkind & 15 == 0:
        kind = "limits"
        values = {"ocv_v": b[0] / 100, "r_ohm": b[1] / 1e4, "dcl_a": b[2] / 10, "ccl_a": b[3] / 10,
                  "dcl_peak_a": b[4] / 10, "ccl_peak_a": b[5] / 10}
    else:
        kind = "detail"
        values = {"sys_dcl_a": b[0] / 10, "sys_ccl_a": b[1] / 10, "soc": b[2] / 1000, "v_bus_v": b[3] / 100,
                  "v_string_v": b[4] / 100, "i_a": b[5] / 10}
    return PeerMessage(system_id, sender, seq, inc, flags & 7, bool(flags & 8), bool(flags & 16), bool(flags & 32),
                       bool(flags & 64), coord & 15, (coord >> 8) & 127, kind, values)
