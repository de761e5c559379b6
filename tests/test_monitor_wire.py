"""The monitor's decoder of the consensus peer messages (mbms.peer_wire, the core's MessageAuth):
real messages of a peer with the system's key are verified and decoded; forged, unauthenticated
and malformed ones are refused by reason; the monitor rows show only verified messages."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st
from node_files import system_file

from mbms import _core
from mbms.commands.monitor import Monitor
from mbms.config_views import load_system
from mbms.keys import system_keys
from mbms.peer_wire import PeerFrameError, decode


def _local(v: float, closed: bool = False) -> dict:
    return {"ocv_v": v, "r_ohm": 0.0123, "soc": 0.512, "dcl_a": 29.0, "ccl_a": 13.5, "dcl_peak_a": 40.0,
            "ccl_peak_a": 20.0, "fault": False, "may_close": True, "v_string_v": v, "v_bus_v": v, "i_a": -2.5,
            "feedback": (closed, closed, False)}


def _messages(system, node: int, keys, n: int = 6, closed: bool = True) -> list[bytes]:
    p = _core.ConsensusPeer(system.peer_config(node, 3), 3, keys)
    out: list[bytes] = []
    for k in range(n):
        out += [bytes(m) for m in p.tick(k * 100, _local(350.12, closed))["messages"]]
    return out


def test_decode_verifies_and_refuses_by_reason(tmp_path: Path) -> None:
    system = load_system(system_file(tmp_path, [1, 2, 3], "udp", 47551))
    keys = system_keys(system)
    auth = _core.MessageAuth(system.system_id_u32, keys)
    msgs = _messages(system, 3, keys)
    kinds = set()
    for raw in msgs:
        m = decode(raw, auth)
        assert m.verified and m.sender == 3 and m.incarnation == 3
        kinds.add(m.kind)
        if m.kind == "limits":
            assert m.values["ocv_v"] == pytest.approx(350.12) and m.values["r_ohm"] == pytest.approx(0.0123)
            assert m.values["dcl_a"] == pytest.approx(29.0) and m.values["ccl_a"] == pytest.approx(13.4)  # 0.2 A steps, down
        else:
            assert m.values["soc"] == pytest.approx(0.512) and m.values["i_a"] == pytest.approx(-2.5)
    assert kinds == {"limits", "detail"}
    # forged (guessed tag, another key), unauthenticated (zero tag), malformed
    for bad, reason in ((msgs[0][:-4] + b"\x01\x02\x03\x04", "forged"),
                        (_messages(system, 3, [os.urandom(16)])[0], "forged"),
                        (_messages(system, 3, None)[0], "unauthenticated"),
                        (b"junk", "malformed"), (b"\x80" + bytes(23), "malformed")):
        with pytest.raises(PeerFrameError) as e:
            decode(bad, auth)
        assert e.value.reason == reason, bad
    # without keys the fields are readable, marked unverified
    assert not decode(msgs[0]).verified


@settings(max_examples=3000, deadline=None)
@given(st.binary(max_size=40))
def test_decoder_survives_any_input(data: bytes) -> None:
    auth = _core.MessageAuth(7, [bytes(range(16))])
    for a in (auth, None):
        try:
            decode(data, a)
        except PeerFrameError as e:
            assert e.reason in ("malformed", "forged", "unauthenticated")


def test_monitor_rows_from_verified_peer_messages(tmp_path: Path) -> None:
    system = load_system(system_file(tmp_path, [1, 2, 3], "udp", 47555))
    mon = Monitor(system)
    keys = system_keys(system)
    for m in _messages(system, 2, keys):
        mon._on_message(2, m)
    for m in _messages(system, 3, [os.urandom(16)]):  # a forger for member 3
        mon._on_message(3, m)
    mon._on_message(3, b"junk")
    rows = {r["id"]: r for r in mon.snapshot()}
    assert rows[2]["phase"] == "CLOSED" and rows[2]["soc_pct"] == pytest.approx(51.2)
    assert rows[2]["dcl_a"] == pytest.approx(29.0)
    assert rows[3]["phase"] is None and rows[3]["undecodable_messages"] >= 7
    assert not mon._all_seen()
    mon.transport.close()
