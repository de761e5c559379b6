"""``mbms log decode`` on real recordings (issue 15): real ``mbms node`` processes with the system's
key on a python-can ``udp_multicast`` bus, their traffic recorded by python-can's own ``can.Logger``
into a Vector ASC and a candump -L file, decoded by the CLI as a subprocess. Every message of every
sender verifies with the right key, none with a wrong one; one tampered byte gives one bad-tag
line; a garbage line is counted and listed; without a key nothing is claimed verified."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path

import can
import pytest
from conftest import Proc, free_udp_port, wait_for
from node_files import pack_file, system_file
from test_e2e_nodecore import _require_stack, _start_plant

from mbms.keys import new_key_file

MEMBERS = (1, 2, 3)
MIN_MESSAGES = 15


def _decode(log: Path, system: Path | None) -> tuple[int, list[dict], dict]:
    args = [sys.executable, "-m", "mbms", "log", "decode", str(log), "--json"]
    if system is not None:
        args += ["--system", str(system)]
    p = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert p.returncode in (0, 1), p.stderr
    rows = [json.loads(s) for s in p.stdout.splitlines()]
    assert rows and rows[-1]["type"] == "summary"
    return p.returncode, rows[:-1], rows[-1]


def _per_sender(rows: list[dict], status: str) -> Counter:
    return Counter(r["sender"] for r in rows if r["type"] == "message" and r["status"] == status)


@pytest.fixture(scope="module")
def recording(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path, Counter]:
    """Real nodes' traffic in ``peer.asc`` and ``peer.log``; the number of last frames per sender."""
    tmp = tmp_path_factory.mktemp("logdecode")
    procs: list[Proc] = []
    try:
        plant = _require_stack()
        link = f"unix://{tmp}/plant.sock"
        _start_plant(procs, plant, link)
        port = free_udp_port()
        system_path = system_file(tmp, list(MEMBERS), "can", port, system_id=f"log-{port}")
        asc, log = tmp / "peer.asc", tmp / "peer.log"
        last_frames: Counter = Counter()
        stop = threading.Event()
        bus = can.Bus(interface="udp_multicast", channel="239.74.163.2", port=port, receive_own_messages=False)
        loggers = [can.Logger(str(asc)), can.Logger(str(log))]

        def record() -> None:
            while not stop.is_set():
                m = bus.recv(0.1)
                if m is None:
                    continue
                for lg in loggers:
                    lg(m)
                if 0x400 <= m.arbitration_id <= 0x7FF and m.arbitration_id & 3 == 2:
                    last_frames[((m.arbitration_id >> 4) & 0x3F) + 1] += 1

        th = threading.Thread(target=record, daemon=True)
        th.start()
        for k in MEMBERS:
            pack = pack_file(tmp, k, link, period_ms=100)
            procs.append(Proc(["-m", "mbms", "node", "--config", str(pack), "--system", str(system_path)]))
        wait_for(lambda: all(last_frames[k] >= MIN_MESSAGES for k in MEMBERS), 90,
                 f"{MIN_MESSAGES} messages from every node recorded", poll_s=0.05)
        stop.set()
        th.join(5)
        for lg in loggers:
            lg.stop()
        bus.shutdown()
        return system_path, asc, log, Counter(last_frames)
    finally:
        for p in procs:
            p.kill()


@pytest.mark.parametrize("name", ["peer.asc", "peer.log"])
def test_every_recorded_message_verifies_with_the_right_key(name: str, recording) -> None:
    system_path, asc, log, last_frames = recording
    code, rows, summary = _decode(asc.with_name(name), system_path)
    assert code == 0
    verified = _per_sender(rows, "verified")
    assert set(verified) == set(MEMBERS)
    for k in MEMBERS:
        # every message whose last frame was recorded, less one cut at the start of the recording
        assert last_frames[k] - 1 <= verified[k] <= last_frames[k], (k, verified, last_frames)
    assert summary["messages"] == sum(verified.values())
    assert {s for r in rows if r["type"] == "message" for s in [r["status"]]} == {"verified"}
    # the frames at the very start of the recording may belong to a message begun earlier
    assert all("incomplete" in u["reason"] for u in rows if u["type"] == "unparsed")
    assert summary["unparsed"] <= 2 * len(MEMBERS)
    # readable fields: the shipped example packs' open-circuit voltage and a phase name
    lims = [r for r in rows if r["type"] == "message" and r["kind"] == "limits"]
    assert lims and all(100.0 < r["values"]["ocv_v"] < 1000.0 for r in lims)
    assert all(isinstance(r["phase"], str) and r["boot"] >= 1 for r in rows if r["type"] == "message")
    # counters rise per sender (the log is in time order)
    for k in MEMBERS:
        ctr = [(r["boot"], r["counter"]) for r in rows if r["type"] == "message" and r["sender"] == k]
        assert ctr == sorted(ctr) and len(set(ctr)) == len(ctr)


def test_the_asc_and_candump_logs_decode_to_the_same_messages(recording) -> None:
    system_path, asc, log, _ = recording
    a = [(r["sender"], r["boot"], r["counter"], r["tag"]) for r in _decode(asc, system_path)[1] if r["type"] == "message"]
    b = [(r["sender"], r["boot"], r["counter"], r["tag"]) for r in _decode(log, system_path)[1] if r["type"] == "message"]
    assert a == b and len(a) >= len(MEMBERS) * (MIN_MESSAGES - 1)


def test_with_a_wrong_key_nothing_verifies(recording, tmp_path: Path) -> None:
    system_path, asc, log, _ = recording
    text = system_path.read_text()
    system_id = next(s.split('"')[1] for s in text.splitlines() if s.startswith("system_id"))
    wrong = tmp_path / "wrong.key"
    new_key_file(wrong, system_id)
    key_line = next(s for s in text.splitlines() if s.startswith("key_file"))
    other = tmp_path / "system_wrong.toml"
    other.write_text(text.replace(key_line, f'key_file = "{wrong}"'))
    for f in (asc, log):
        code, rows, summary = _decode(f, other)
        msgs = [r for r in rows if r["type"] == "message"]
        assert code == 1 and msgs and all(r["status"] == "bad tag" for r in msgs)
        assert set(_per_sender(rows, "bad tag")) == set(MEMBERS)


def test_without_a_key_nothing_is_claimed_verified(recording) -> None:
    _, asc, _, _ = recording
    code, rows, summary = _decode(asc, None)
    msgs = [r for r in rows if r["type"] == "message"]
    assert code == 0 and msgs and all(r["status"] == "not verifiable" for r in msgs)


def test_a_tampered_byte_is_one_bad_tag_and_a_garbage_line_is_counted(recording, tmp_path: Path) -> None:
    system_path, asc, log, _ = recording
    _, clean, _ = _decode(log, system_path)
    lines = log.read_text().splitlines()
    # the ocv byte of a limits message's frame 1 (kind 0, index 1), in the middle of the log: any
    # value is a valid field, so the message still decodes and only its tag fails
    target = None
    for i in range(len(lines) // 2, len(lines)):
        cid, _, data = lines[i].split()[2].partition("#")
        if 0x400 <= int(cid, 16) <= 0x7FF and int(cid, 16) & 0b1011 == 0b0001:
            target = i
            break
    assert target is not None
    parts = lines[target].split()  # (t) channel id#data [R|T]
    cid, _, data = parts[2].partition("#")
    b = bytearray.fromhex(data)
    b[0] ^= 0x01
    parts[2] = f"{cid}#{b.hex().upper()}"
    lines[target] = " ".join(parts)
    lines.insert(target // 2, "this line is no candump frame")
    bad = tmp_path / "tampered.log"
    bad.write_text("\n".join(lines) + "\n")
    code, rows, summary = _decode(bad, system_path)
    assert code == 1
    msgs = [r for r in rows if r["type"] == "message"]
    assert [r["status"] for r in msgs].count("bad tag") == 1
    assert len(msgs) == len([r for r in clean if r["type"] == "message"])
    assert all(r["status"] == "verified" for r in msgs if r["status"] != "bad tag")
    garbage = [u for u in rows if u["type"] == "unparsed" and u["text"] == "this line is no candump frame"]
    assert len(garbage) == 1 and garbage[0]["line"] == target // 2 + 1
    assert summary["unparsed"] == len([r for r in clean if r["type"] == "unparsed"]) + 1

    # the same garbage in the ASC file: counted and listed, the rest still read
    asc_lines = asc.read_text().splitlines()
    at = len(asc_lines) // 2
    asc_lines.insert(at, "garbage in the middle of an ASC file")
    bad_asc = tmp_path / "garbage.asc"
    bad_asc.write_text("\n".join(asc_lines) + "\n")
    code, rows, summary = _decode(bad_asc, system_path)
    assert code == 0
    assert [u["line"] for u in rows if u["type"] == "unparsed" and u["text"].startswith("garbage")] == [at + 1]
    assert _per_sender(rows, "verified") == _per_sender(_decode(asc, system_path)[1], "verified")


def test_a_replayed_message_is_marked_replay(recording, tmp_path: Path) -> None:
    system_path, _, log, _ = recording
    lines = [s for s in log.read_text().splitlines() if s.strip()]
    # the three frames of the first complete message of node 1, sent again at the end
    frames = []
    for s in lines:
        cid = int(s.split()[2].partition("#")[0], 16)
        if 0x400 <= cid <= 0x7FF and (cid >> 4) & 0x3F == 0:
            if cid & 3 == 0:
                frames = [s]
            elif frames and cid & 3 == len(frames):
                frames.append(s)
                if len(frames) == 3:
                    break
    assert len(frames) == 3
    t_end = float(lines[-1].split()[0].strip("()")) + 1.0
    replay = [f"({t_end:.6f}) {s.split()[1]} {s.split()[2]}" for s in frames]
    out = tmp_path / "replay.log"
    out.write_text("\n".join(lines + replay) + "\n")
    code, rows, _ = _decode(out, system_path)
    msgs = [r for r in rows if r["type"] == "message"]
    assert code == 1 and msgs[-1]["status"] == "replay" and msgs[-1]["sender"] == 1
    assert [r["status"] for r in msgs].count("replay") == 1
