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
