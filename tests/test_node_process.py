"""Real node processes (runtime + DoubleLogic test double) on a real plant link and peer network:
peers exchange messages, telemetry frames decode with cantools from the DBC, the monitor shows
every peer, a node killed with -9 is opened by the plant watchdog and restores its state on restart."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import can
import cantools
import pytest
from conftest import TESTS, Proc, free_udp_port, wait_for
from node_files import pack_file, system_file

from mbms.paths import data_dir
from mbms.telemetry import dbc_text
from test_plant_link import _plant_state


def test_committed_dbc_is_the_generated_one() -> None:
    assert (data_dir() / "dbc" / "mbms.dbc").read_text() == dbc_text()


def _start_node(procs: list[Proc], pack: Path, system: Path) -> Proc:
    p = Proc([str(TESTS / "procs" / "run_node_double.py"), str(pack), str(system)])
    procs.append(p)
    return p


def _status(p: Proc, pred, timeout: float, what: str) -> dict:
    line = p.read_until(lambda s: s.startswith('{"status"') and pred(json.loads(s)), timeout)
    return json.loads(line)


@pytest.mark.parametrize("kind", ["can", "udp"])
def test_three_nodes_peer_telemetry_monitor_kill_restart(kind: str, tmp_path: Path, procs: list[Proc]) -> None:
    link = f"udp://127.0.0.1:{free_udp_port()}"
    plant = Proc([str(TESTS / "procs" / "plant_double_server.py"), link, "3", "0.3"])
    procs.append(plant)
    plant.read_until(lambda s: s.strip() == "ready", 10)
    port = free_udp_port()
    system = system_file(tmp_path, [1, 2, 3], kind, port)
    packs = {k: pack_file(tmp_path, k, link) for k in (1, 2, 3)}
    nodes = {k: _start_node(procs, packs[k], system) for k in (1, 2, 3)}
    for k, p in nodes.items():
        st = _status(p, lambda s: len(s["peers"]) == 2 and s["commanded"] == [True, True, False], 20, "peers + closed")
        assert st["fail_safe"] is None and st["peers"] == sorted({1, 2, 3} - {k})
    assert _plant_state(link)["contactors"] == [[True, True, False]] * 3

    # telemetry frames a running node sends decode with cantools from the DBC file
    if kind == "can":
        db = cantools.database.load_file(str(data_dir() / "dbc" / "mbms.dbc"))
        with can.Bus(interface="udp_multicast", channel="239.74.163.2", port=port, fd=False) as bus:
            got: dict[str, dict] = {}
            def rx() -> bool:
                m = bus.recv(0.2)
                if m is not None and m.arbitration_id in (0x202, 0x242, 0x282, 0x2C2):
                    got[db.get_message_by_frame_id(m.arbitration_id).name] = db.decode_message(m.arbitration_id, m.data)
                return len(got) == 4
            wait_for(rx, 10, "the four telemetry frames of node 2", poll_s=0)
        assert got["MBMS_STATE_2"]["Phase"] == "CLOSED" and got["MBMS_STATE_2"]["ContactorPos"] == 1
        assert 40 < got["MBMS_STATE_2"]["Soc"] <= 50.0 and got["MBMS_LIMITS_2"]["Dcl"] == pytest.approx(12.0)
        assert got["MBMS_CELLS_2"]["VCellMin"] == pytest.approx(3.7, abs=0.01) and got["MBMS_TEMPS_2"]["TCellMax"] == 25.0

    # the monitor sees every peer on the same network
    out = subprocess.run([sys.executable, "-m", "mbms", "monitor", "--system", str(system), "--once", "--json",
                          "--duration", "20"], capture_output=True, text=True, timeout=40)
    assert out.returncode == 0, out.stderr
    mon = json.loads(out.stdout)
    assert [r["id"] for r in mon["peers"]] == [1, 2, 3]
    assert all(r["phase"] == "CLOSED" and r["contactors"] == "NP-" for r in mon["peers"])

    # kill -9 node 3: the plant's driver watchdog opens its string, the others stay closed
    nodes[3].kill()
    wait_for(lambda: _plant_state(link)["contactors"][2] == [False, False, False], 5, "string 3 opened")
    assert _plant_state(link)["contactors"][:2] == [[True, True, False]] * 2
    # restart: it restores its saved state and rejoins the peers
    nodes[3] = _start_node(procs, packs[3], system)
    _status(nodes[3], lambda s: len(s["peers"]) == 2 and s["commanded"] == [True, True, False], 20, "rejoined")
    events = [json.loads(x) for x in (tmp_path / "state3" / "events.jsonl").read_text().splitlines()]
    starts = [e for e in events if e["kind"] == "start"]
    assert [e["restored"] for e in starts] == ["missing", "ok"]  # the second run restored the saved state
    for p in nodes.values():
        p.p.terminate()
    for k, p in nodes.items():
        final = p.read_json("final", 10)
        assert final["timing"]["periods"] > 2
        assert final["transport"]["malformed"] == 0 and final["transport"]["received_messages"] > 5
    for k in (1, 2):
        assert _plant_state(link)["contactors"][k - 1] == [False, False, False]  # a stopped node opens
