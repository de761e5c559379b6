"""Persistence: atomic state writes survive kill -9 of a real writer; corrupt files -> defaults."""

from __future__ import annotations

import logging
import os
import signal
from pathlib import Path

import msgpack
import pytest
from conftest import TESTS, Proc

from mbms.node.persistence import StateStore


def test_kill_9_mid_run_then_restore(tmp_path: Path, procs: list[Proc]) -> None:
    last_ack = 0
    for round_ in range(3):
        p = Proc([str(TESTS / "procs" / "state_writer.py"), str(tmp_path)])
        procs.append(p)
        start = p.read_until(lambda s: s.startswith("start"), 10).split()
        # restored exactly what was acknowledged before the previous kill (or one more, in flight)
        assert int(start[1]) >= last_ack and start[2] == ("missing" if round_ == 0 else "ok")
        target = int(start[1]) + 20 + 7 * round_
        line = p.read_until(lambda s: s.startswith("saved") and int(s.split()[1]) >= target, 20)
        os.kill(p.p.pid, signal.SIGKILL)  # mid-run: it is writing the next state right now
        p.p.wait(5)
        last_ack = int(line.split()[1])
        store = StateStore(tmp_path, 1)
        res = store.load()
        assert res.status == "ok", res.detail
        n = msgpack.unpackb(res.data)["n"]
        assert n >= last_ack  # nothing acknowledged is lost
        events = [e for e in store.read_events() if e["kind"] == "tick"]
        # every acknowledged save has its event (an event written just before a kill may appear
        # again after the restart, since its state save had not completed: at least once)
        assert {e["n"] for e in events} >= set(range(1, last_ack + 1))
        store.close()
        # a temp file of the killed writer is never taken for the state, and opening the store
        # removed it
        assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]


def test_corrupt_state_gives_warning_and_defaults(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = StateStore(tmp_path, 3)
    assert store.load().status == "missing"
    store.save(b"hello state")
    assert store.load().data == b"hello state"
    raw = bytearray(store.state_path.read_bytes())
    raw[-1] ^= 0xFF  # one flipped bit in the blob
    store.state_path.write_bytes(bytes(raw))
    with caplog.at_level(logging.WARNING, logger="mbms.node.persistence"):
        res = store.load()
    assert res.status == "corrupt" and res.data is None and "CRC-32" in res.detail
    assert "corrupt" in caplog.text and "starting from defaults" in caplog.text
    assert (tmp_path / "state.bin.corrupt").exists() and not store.state_path.exists()
    store.state_path.write_bytes(b"MB")  # truncated
    assert store.load().status == "corrupt"
    store.state_path.write_bytes(b"XXXX" + bytes(20))
    assert "bad magic" in store.load().detail
    assert [e["kind"] for e in store.read_events()].count("state_corrupt") == 3
    store.close()


def test_torn_event_line_is_skipped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = StateStore(tmp_path, 1)
    store.event("a", x=1)
    store.close()
    with open(tmp_path / "events.jsonl", "a") as f:
        f.write('{"t": 1, "kind": "tor')  # killed mid-line
    store = StateStore(tmp_path, 1)
    store.event("b")
    with caplog.at_level(logging.WARNING):
        kinds = [e["kind"] for e in store.read_events()]
    assert kinds == ["a", "b"]  # the torn line is skipped, the next event is whole
    assert "torn" in caplog.text
    store.close()


def _peer(node_id: int, boot: int):  # type: ignore[no-untyped-def]
    from mbms import _core

    key = [bytes(range(16))]
    return _core.ConsensusPeer({"node_id": node_id, "members": [1, 2, 3]}, boot, key)


def _local() -> dict:
    return {"ocv_v": 355.0, "r_ohm": 0.05, "soc": 0.6, "dcl_a": 100.0, "ccl_a": 50.0, "dcl_peak_a": 200.0,
            "ccl_peak_a": 100.0, "fault": False, "may_close": True, "v_string_v": 355.0, "v_bus_v": 0.0,
            "i_a": 0.0, "feedback": (False, False, False)}


def test_receive_counters_survive_a_restart_through_the_state_dir(tmp_path: Path) -> None:
    """The receive counters a peer exports, saved and loaded through the state dir, make a
    restarted peer refuse a replay of what it had accepted; a peer without them takes it."""
    from mbms.node.persistence import RX_COUNTERS_FILE, load_receive_counters, save_receive_counters

    a, b = _peer(1, 1), _peer(2, 7)
    sent = [bytes(m) for k in range(12) for m in b.tick(k * 100, _local())["messages"]]
    assert len(sent) >= 12
    for k, m in enumerate(sent):
        assert a.on_message(k * 100, m) is None
    save_receive_counters(tmp_path, a.receive_counters())
    assert not list(tmp_path.glob(".*.tmp")), "the temp file is renamed over the saved one"
    rx = load_receive_counters(tmp_path)
    assert rx.status == "ok" and [(s, boot) for s, boot, _ in rx.counters] == [(2, 7)]
    assert rx.counters == a.receive_counters()

    restarted = _peer(1, 2)
    assert restarted.restore_receive_counters(rx.counters) == 1
    assert [restarted.on_message(0, m) for m in (sent[0], sent[-2], sent[-1])] == ["stale", "stale", "duplicate"]
    forgetful = _peer(1, 2)
    assert forgetful.on_message(0, sent[0]) is None
    assert (tmp_path / RX_COUNTERS_FILE).exists()


@pytest.mark.parametrize("content", [
    b"",
    b"{\"format\": 1, \"counters\": [[2, 7, 11]]",  # torn
    b"\xff\xfe\x00garbage",
    b"[1, 2, 3]",
    b"{\"format\": 9, \"counters\": [], \"crc32\": 0}",
    b"{\"format\": 1, \"counters\": [[2, 7]], \"crc32\": 0}",
    "crc",  # a counter changed after the save
    "range",  # a sender id the wire cannot carry, with a matching crc
])
def test_corrupt_receive_counters_mean_no_memory_and_a_warning(tmp_path: Path, content: object,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    import json
    import zlib

    from mbms.node.persistence import RX_COUNTERS_FILE, load_receive_counters, save_receive_counters

    p = tmp_path / RX_COUNTERS_FILE
    if content == "crc":
        save_receive_counters(tmp_path, [(2, 7, 11)])
        p.write_text(p.read_text().replace("11", "12"))
    elif content == "range":
        rows = [[64, 7, 11]]
        crc = zlib.crc32(json.dumps(rows, separators=(",", ":")).encode())
        p.write_text(json.dumps({"format": 1, "counters": rows, "crc32": crc}))
    else:
        assert isinstance(content, bytes)
        p.write_bytes(content)
    with caplog.at_level(logging.WARNING, logger="mbms.node.persistence"):
        rx = load_receive_counters(tmp_path)
    assert rx.status == "corrupt" and rx.counters == [] and rx.detail
    assert any(RX_COUNTERS_FILE in r.getMessage() and "ignored" in r.getMessage() for r in caplog.records)


def test_missing_receive_counters_are_a_first_start(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from mbms.node.persistence import load_receive_counters

    with caplog.at_level(logging.WARNING, logger="mbms.node.persistence"):
        rx = load_receive_counters(tmp_path)
    assert rx.status == "missing" and rx.counters == [] and not caplog.records
