"""Issue 15: key files (mode 0600, refused otherwise, rotation without downtime), the DBC of the
authenticated peer frames read by cantools, and authenticated telemetry (TelemetryVerifier)."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st
from node_files import system_file

from mbms import _core
from mbms.config_views import load_system
from mbms.consensus import segment_classic
from mbms.errors import ConfigError
from mbms.keys import FileKeyProvider, new_key_file, rotate, system_keys
from mbms.telemetry import AUTH_BASE_ID, LIMITS_BASE_ID, TelemetryEncoder, TelemetryVerifier, load_database
from mbms.types import Contactors, Measurement


def test_key_file_is_0600_and_refused_when_missing_or_open_to_others(tmp_path: Path) -> None:
    key = tmp_path / "k.key"
    new_key_file(key, "sys-a")
    assert key.stat().st_mode & 0o777 == 0o600
    keys = FileKeyProvider(key, "sys-a").keys()
    assert len(keys) == 1 and len(keys[0]) == 16
    with pytest.raises(ConfigError, match="exists"):
        new_key_file(key, "sys-a")
    with pytest.raises(ConfigError, match="another system"):
        FileKeyProvider(key, "sys-b").keys()
    os.chmod(key, 0o640)
    with pytest.raises(ConfigError, match="chmod 600") as e:
        FileKeyProvider(key, "sys-a").keys()
    assert e.value.field == "auth.key_file"
    with pytest.raises(ConfigError, match="mbms keys new"):
        FileKeyProvider(tmp_path / "missing.key", "sys-a").keys()
    bad = tmp_path / "bad.key"
    fd = os.open(bad, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, b'system_id = "sys-a"\nkeys = ["00"]\n')
    os.close(fd)
    with pytest.raises(ConfigError, match=r"keys\[0\]"):
        FileKeyProvider(bad, "sys-a").keys()


def test_a_node_refuses_to_start_without_keys(tmp_path: Path) -> None:
    path = system_file(tmp_path, [1, 2], "udp", 47601)
    system = load_system(path)
    assert system_keys(system)  # the test systems have a key
    text = path.read_text().split("[auth]")[0]
    path.write_text(text)
    with pytest.raises(ConfigError, match="missing") as e:
        system_keys(load_system(path))
    assert e.value.field == "auth"
    path.write_text(text + "[auth]\noff = true\n")
    assert system_keys(load_system(path)) is None  # explicit, and logged
    path.write_text(text + '[auth]\nkey_file = "nowhere.key"\n')
    with pytest.raises(ConfigError, match="no such key file"):
        system_keys(load_system(path))
    path.write_text(text + '[auth]\nkey_file = "a.key"\noff = true\n')
    with pytest.raises(ConfigError, match="choose one"):
        load_system(path)


def test_rotation_keeps_every_pair_of_nodes_talking(tmp_path: Path) -> None:
    key = tmp_path / "k.key"
    new_key_file(key, "sys-r")
    steps = [FileKeyProvider(key, "sys-r").keys()]
    for _ in range(3):
        rotate(key)
        assert key.stat().st_mode & 0o777 == 0o600
        steps.append(FileKeyProvider(key, "sys-r").keys())
    assert [len(s) for s in steps] == [1, 2, 2, 1] and steps[0][0] != steps[3][0]
    # during a rolling restart nodes run consecutive steps: each accepts the other's messages
    for a, b in zip(steps, steps[1:]):
        sa, sb = _core.MessageAuth(9, a), _core.MessageAuth(9, b)
        assert sb.verify(b"x", sa.tag(b"x")) is None and sa.verify(b"x", sb.tag(b"x")) is None
    # the CLI
    out = subprocess.run([sys.executable, "-m", "mbms", "keys", "show", str(key), "--system", "sys-r"],
                         capture_output=True, text=True)
    assert out.returncode == 0 and "sha256" in out.stdout and steps[3][0].hex() not in out.stdout


def _mbms(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mbms", *args], capture_output=True, text=True, timeout=60)


def test_keys_new_for_a_system_writes_the_file_it_names_and_check_then_passes(tmp_path: Path) -> None:
    """A node's --check (what a start checks) refuses a system whose key file is missing, naming
    auth.key_file and the command to make it; `mbms keys new --for SYSTEM` makes exactly that file,
    for the system's id, and the same check then passes."""
    path = system_file(tmp_path, [1, 2], "udp", 47602)
    key = tmp_path / "sys.key"
    text = path.read_text().split("[auth]")[0] + '[auth]\nkey_file = "sys.key"\n'
    path.write_text(text)
    from node_files import pack_file

    node = pack_file(tmp_path, 1, "udp://127.0.0.1:47603")
    before = _mbms("node", "--check", "--config", str(node), "--system", str(path))
    assert before.returncode == 2 and "auth.key_file" in before.stdout and "mbms keys new" in before.stdout, before
    made = _mbms("keys", "new", "--for", str(path))
    assert made.returncode == 0, made.stderr
    assert key.stat().st_mode & 0o777 == 0o600
    assert FileKeyProvider(key, load_system(path).system_id).keys()  # a key of this system
    after = _mbms("node", "--check", "--config", str(node), "--system", str(path))
    assert after.returncode == 0, after.stdout + after.stderr
    again = _mbms("keys", "new", "--for", str(path))  # never overwrites a system's keys
    assert again.returncode == 2 and "exists" in again.stderr
    both = _mbms("keys", "new", str(key), "--for", str(path))
    assert both.returncode == 2 and "--for" in both.stderr


def _local(v: float) -> dict:
    return {"ocv_v": v, "r_ohm": 0.0512, "soc": 0.6, "dcl_a": 120.3, "ccl_a": 60.0, "dcl_peak_a": 240.0,
            "ccl_peak_a": 120.0, "fault": False, "may_close": True, "v_string_v": v, "v_bus_v": v - 1.5,
            "i_a": 3.2, "feedback": (False, False, False)}


def test_the_shipped_dbc_reads_the_peer_frames_with_cantools() -> None:
    db = load_database()
    keys = [bytes(range(16))]
    peer = _core.ConsensusPeer({"system_id": 7, "node_id": 5, "members": [1, 5, 9]}, 12, keys)
    auth = _core.MessageAuth(7, keys)
    seen = set()
    for k in range(8):
        for raw in peer.tick(k * 100, _local(355.17))["messages"]:
            d = auth.open(bytes(raw))
            frames = segment_classic(bytes(raw))
            sig: dict = {}
            for aid, data in frames:
                msg = db.get_message_by_frame_id(aid)
                assert msg.length == len(data)
                sig.update(db.decode_message(aid, data, decode_choices=False))
            assert (sig["Boot"], sig["Counter"], sig["Phase"]) == (12, d["counter"], d["phase"])
            assert sig["Tag"] == int.from_bytes(d["tag"], "little")
            v = d["values"]
            if d["kind"] == "limits":
                assert sig["Ocv"] == pytest.approx(v["ocv_v"]) and sig["R"] == pytest.approx(v["r_ohm"])
                assert sig["Dcl"] == pytest.approx(v["dcl_a"]) and sig["DclPeak"] == pytest.approx(v["dcl_peak_a"])
            else:
                assert sig["Soc"] == pytest.approx(100 * v["soc"]) and sig["Current"] == pytest.approx(v["i_a"])
                assert sig["DV"] == pytest.approx(v["dv_v"]) and sig["SysDcl"] == pytest.approx(v["sys_dcl_a"])
            seen.add(d["kind"])
    assert seen == {"limits", "detail"}


def test_telemetry_is_released_only_with_a_valid_fresh_tag() -> None:
    keys = [bytes(range(16))]
    auth = _core.MessageAuth(7, keys)
    enc = TelemetryEncoder(3, auth=auth, boot=4)
    import numpy as np

    meas = Measurement(t_s=0.0, v_cell_v=np.full(4, 3.7), t_cell_c=np.full(2, 25.0), i_a=1.0, v_string_v=14.8, v_bus_v=14.8,
                       feedback=Contactors(False, False, False))
    status = None
    batches = [enc.frames(status, meas, False) for _ in range(3)]
    assert batches[0][-1][0] == AUTH_BASE_ID + 3
    v = TelemetryVerifier(auth)
    out = [f for fid, d in batches[0] for f in v.push(3, fid, d)]
    assert [fid for fid, _ in out] == [fid for fid, _ in batches[0][:-1]]
    for fid, d in batches[0]:  # the same batch again: a replay
        assert v.push(3, fid, d) == []
    # forged LIMITS (600 A) with a guessed tag, with a zero tag, and a batch missing a frame
    lim = load_database().get_message_by_frame_id(LIMITS_BASE_ID + 3)
    fake = bytes(lim.encode({"Dcl": 600.0, "Ccl": 600.0, "SysDcl": 600.0, "SysCcl": 600.0}))
    assert v.push(3, LIMITS_BASE_ID + 3, fake) == []
    assert v.push(3, AUTH_BASE_ID + 3, struct.pack("<HH", 4, 9) + b"\x01\x02\x03\x04") == []
    assert v.push(3, LIMITS_BASE_ID + 3, fake) == []
    assert v.push(3, AUTH_BASE_ID + 3, struct.pack("<HH", 4, 10) + bytes(4)) == []
    assert [f for fid, d in batches[1][1:] for f in v.push(3, fid, d)] == []  # STATE frame lost
    assert len([f for fid, d in batches[2] for f in v.push(3, fid, d)]) == len(batches[2]) - 1
    c = v.counters()
    assert (c["verified"], c["replayed"], c["forged"], c["unauthenticated"]) == (2, 1, 2, 1), c
    # without authentication (an explicit [auth] off) nothing is held back
    assert TelemetryVerifier(_core.MessageAuth(7, None)).push(3, LIMITS_BASE_ID + 3, fake) == [(LIMITS_BASE_ID + 3, fake)]


@settings(max_examples=2000, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 0x7FF), st.binary(max_size=12)), max_size=30))
def test_telemetry_verifier_survives_any_frames(frames: list[tuple[int, bytes]]) -> None:
    v = TelemetryVerifier(_core.MessageAuth(7, [bytes(range(16))]))
    for fid, d in frames:
        assert v.push(1 + fid % 4, fid, d) == []  # nothing without the key verifies


def test_a_gateways_telemetry_view_takes_verified_batches_only() -> None:
    """The SunSpec server and the inverter speaker act on the peers' telemetry (TelemetryView):
    forged limits (a guessed tag, a zero tag, or no MBMS_AUTH frame at all) never show."""
    import numpy as np

    from mbms.gateways.peer_telemetry import TelemetryView

    auth = _core.MessageAuth(7, [bytes(range(16))])
    view = TelemetryView((1, 3), auth)
    lim = load_database().get_message_by_frame_id(LIMITS_BASE_ID + 3)
    fake = bytes(lim.encode({"Dcl": 600.0, "Ccl": 600.0, "SysDcl": 600.0, "SysCcl": 600.0}))
    view.on_telemetry(3, LIMITS_BASE_ID + 3, fake)
    view.on_telemetry(3, AUTH_BASE_ID + 3, struct.pack("<HH", 1, 1) + b"\x01\x02\x03\x04")
    view.on_telemetry(3, LIMITS_BASE_ID + 3, fake)
    view.on_telemetry(3, AUTH_BASE_ID + 3, struct.pack("<HH", 1, 2) + bytes(4))
    for _ in range(len(TelemetryEncoder(3).frames(None, None, False)) + 2):  # no auth frame at all
        view.on_telemetry(3, LIMITS_BASE_ID + 3, fake)
    s3 = next(s for s in view.strings() if s.node_id == 3)
    assert not s3.heard and np.isnan(s3.sys_dcl_a)
    # the node's own tagged batch is taken
    meas = Measurement(t_s=0.0, v_cell_v=np.full(4, 3.7), t_cell_c=np.full(2, 25.0), i_a=1.0, v_string_v=14.8,
                       v_bus_v=14.8, feedback=Contactors(False, False, False))
    enc = TelemetryEncoder(3, auth=auth, boot=1)
    for _ in range(2):  # the first batch may carry a forged frame left pending: it is dropped whole
        for fid, d in enc.frames(None, meas, False):
            view.on_telemetry(3, fid, d)
    s3 = next(s for s in view.strings() if s.node_id == 3)
    assert s3.v_string_v == pytest.approx(14.8, abs=0.1) and s3.sys_dcl_a != 600.0
    assert view.verifier.counters()["forged"] >= 1 and view.verifier.counters()["unauthenticated"] == 1
