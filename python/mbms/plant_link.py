"""Wire format of the link between a node and the simulated plant (one msgpack map per datagram).

This is the node's OWN sensor/actuator link (UDP on loopback or a Unix datagram socket), separate
from the peer network: a partition of the peer network never cuts a node from its own sensors.

node -> plant   {"op": "cmd", "k": string index, "seq": n, "neg": b, "pos": b, "pre": b,
                 "bal": bytes (one 0/1 byte per series cell)}      every control period
                 optional "fresh": true: convert current, string and bus voltage now
                 (the sample a node takes right before it closes a main contactor)
plant -> node   {"op": "meas", "k": k, "seq": n (echo), "t_s": float, "v": bytes (float64 LE per
                 cell), "t": bytes (float64 LE per sensor), "i": float, "vs": float, "vb": float,
                 "fb": [neg, pos, pre], "valid": bool}             reply to each cmd
tool -> plant   {"op": "load", "i": float}   set the bus load current (A, + = discharge)
tool -> plant   {"op": "join_step", "k": int | None, "after_s": float, "i": float}  when string k
                 (any if None) closes its precharge relay, step the load by i (A) after_s later;
                 {"op": "join_step", "clear": true} removes them (armed and applied)
tool -> plant   {"op": "closes", "since": n} -> {"op": "closes", "total": int, "closes": [[t_s, k,
                 dv_true_v, inrush_a], ...]}  the physical main closes from index n on (≤ 500),
                 recorded by the plant at their instant (S3 on the truth); "join_steps":
                 [[t_s, dA], ...] the join load steps applied so far (the latest
                 500); "close_time_s": [float per string] the main contacts' closing time
tool -> plant   {"op": "state"}  -> {"op": "state", "t_s": float, "contactors": [[n, p, p], ...],
                 "load_a": float, "last_cmd_age_s": [float, ...]}
tool -> plant   {"op": "truth"} -> {"op": "truth", "t_s", "v_bus_v", "load_a": float, "i_a", "v_string_v",
                 "soc", "t_max_c": [float per string], "contactors": [[n, p, p] true relay states]}
                 (the observer of ``mbms sim --mode processes``; nodes never ask)
error reply     {"op": "error", "msg": str}
"""

from __future__ import annotations

from typing import Any

import msgpack
import numpy as np

from mbms.errors import FrameError
from mbms.types import Contactors, Measurement

MAX_DATAGRAM = 65000


def pack(obj: dict[str, Any]) -> bytes:
    data: bytes = msgpack.packb(obj, use_bin_type=True)  # msgpack ships no types
    return data


def unpack(raw: bytes) -> dict[str, Any]:
    try:
        obj = msgpack.unpackb(raw, raw=False, max_bin_len=MAX_DATAGRAM, max_str_len=1024)
    except Exception as exc:
        raise FrameError(f"plant link datagram is not msgpack: {exc}") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("op"), str):
        raise FrameError("plant link datagram: expected a map with a string 'op'")
    return obj


def measurement_to_wire(k: int, seq: int, m: Any) -> dict[str, Any]:
    fb = m.feedback
    fb_t = (fb.neg, fb.pos, fb.pre) if hasattr(fb, "neg") else tuple(fb)
    return {
        "op": "meas", "k": k, "seq": seq, "t_s": float(m.t_s),
        "v": np.ascontiguousarray(m.v_cell_v, dtype="<f8").tobytes(),
        "t": np.ascontiguousarray(m.t_cell_c, dtype="<f8").tobytes(),
        "i": float(m.i_a), "vs": float(m.v_string_v), "vb": float(m.v_bus_v),
        "fb": [bool(x) for x in fb_t], "valid": bool(getattr(m, "valid", True)),
    }


def measurement_from_wire(obj: dict[str, Any]) -> Measurement:
    try:
        v, t, fb = obj["v"], obj["t"], obj["fb"]
        if not isinstance(v, bytes) or not isinstance(t, bytes) or len(v) % 8 or len(t) % 8 or not v:
            raise FrameError("plant link 'meas': v and t must be float64 byte strings, v non-empty")
        if not isinstance(fb, list) or len(fb) != 3:
            raise FrameError("plant link 'meas': fb must be [neg, pos, pre]")
        m = Measurement(
            t_s=float(obj["t_s"]), v_cell_v=np.frombuffer(v, dtype="<f8").astype(float),
            t_cell_c=np.frombuffer(t, dtype="<f8").astype(float), i_a=float(obj["i"]),
            v_string_v=float(obj["vs"]), v_bus_v=float(obj["vb"]),
            feedback=Contactors(bool(fb[0]), bool(fb[1]), bool(fb[2])), valid=bool(obj["valid"]),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise FrameError(f"plant link 'meas' is malformed: {exc!r}") from None
    finite = np.isfinite(m.v_cell_v).all() and np.isfinite(m.t_cell_c).all()
    if not finite or not all(np.isfinite([m.t_s, m.i_a, m.v_string_v, m.v_bus_v])):
        # a sensor value that is not a number cannot be trusted: keep it, marked invalid
        m = Measurement(m.t_s, m.v_cell_v, m.t_cell_c, m.i_a, m.v_string_v, m.v_bus_v, m.feedback, False)
    return m


def command_to_wire(k: int, seq: int, c: Contactors, balance: np.ndarray) -> dict[str, Any]:
    return {"op": "cmd", "k": k, "seq": seq, "neg": c.neg, "pos": c.pos, "pre": c.pre,
            "bal": np.asarray(balance, dtype=bool).astype(np.uint8).tobytes()}
