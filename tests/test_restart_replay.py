"""Issue 15: a restarted node takes no replay of a dead peer's messages it had accepted before.

Real ``mbms plant`` and ``mbms node`` processes on a python-can ``udp_multicast`` bus, the verified
monitor (``mbms monitor``'s ``Monitor``) in this process, and an attacker process without the key
(tests/procs/attacker.py) that records node 2's frames while all three strings are closed. Node 2
is killed; node 1 is restarted (it saves its receive counters with its state and restores them at
the start); the attacker replays node 2's captured frames, paced like the live node. Node 1 must
not count string 2 closed again, and counts the replayed messages as stale or duplicate.

The same restart with the restore disabled (tests/procs/node_no_rx_memory.py: the shipped node
that forgets its receive counters, as every node did before they were persisted) shows that the
check sees the replay taken: that node counts the dead string 2 closed.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from conftest import Proc, free_udp_port, wait_for
from node_files import pack_file, system_file
from test_e2e_nodecore import Watch, _require_stack, _start_plant

from mbms.commands.monitor import Monitor
from mbms.config_views import load_system
from mbms.node.persistence import RX_COUNTERS_FILE, load_receive_counters

TESTS = Path(__file__).parent


def _events(state_dir: Path) -> list[dict]:
    lines = (state_dir / "events.jsonl").read_text().splitlines()
    return [json.loads(s) for s in lines if s.strip()]


def test_restarted_node_takes_no_replay_of_a_dead_peer(tmp_path: Path, procs: list[Proc]) -> None:
    import asyncio
    import threading

    plant = _require_stack()
    link = f"unix://{tmp_path}/plant.sock"
    _start_plant(procs, plant, link)
    system_path = system_file(tmp_path, [1, 2, 3], "can", free_udp_port(), system_id=f"rxm-{free_udp_port()}")
    system = load_system(system_path)
    packs = {k: pack_file(tmp_path, k, link, period_ms=100) for k in (1, 2, 3)}

    def start(k: int, wrapper: str | None = None) -> Proc:
        head = [str(TESTS / "procs" / wrapper)] if wrapper else ["-m", "mbms", "node"]
        p = Proc([*head, "--config", str(packs[k]), "--system", str(system_path)])
        procs.append(p)
        return p

    loop = asyncio.new_event_loop()
    mon = Monitor(system)
    threading.Thread(target=loop.run_forever, daemon=True).start()
    asyncio.run_coroutine_threadsafe(mon.transport.start(), loop).result(10)

    def closed_count(k: int) -> int | None:
        v = mon.rows[k].signals.get("STATE", {}).get("ClosedCount") if k in mon.rows else None
        return None if v is None else int(v)

    nodes = {k: start(k) for k in (1, 2, 3)}
    w = Watch(link)
    wait_for(lambda: w.all_closed([0, 1, 2]), 120, "strings 1-3 closed", poll_s=0.05)
    wait_for(lambda: closed_count(1) == 3, 10, "node 1 counts 3 strings closed")

    # node 2's frames while it is closed (replay material), then node 2 dies
    capture = tmp_path / "node2.json"
    cap = Proc([str(TESTS / "procs" / "attacker.py"), "capture", str(system_path), "2", "4", str(capture)])
    procs.append(cap)
    assert cap.read_json("captured", 30)["captured"] > 60
    nodes[2].kill()
    wait_for(lambda: not any(w.state()[1]), 5, "string 2 opened by the plant's watchdog")
    wait_for(lambda: closed_count(1) == 2 and closed_count(3) == 2, 20, "nodes 1 and 3 count 2 strings closed")

    def restart_node1_and_replay(wrapper: str | None) -> tuple[int, dict]:
        """Restart node 1 (gracefully stopped: its state and counters saved), wait until it is
        closed again with node 3, replay node 2's capture; the largest closed count node 1 shows
        during the replay and a second after it."""
        nodes[1].p.terminate()
        nodes[1].p.wait(15)
        rx = load_receive_counters(tmp_path / "state1")
        assert rx.status == "ok" and any(s == 2 for s, _, _ in rx.counters), rx
        nodes[1] = start(1, wrapper)
        wait_for(lambda: not any(w.state()[0]), 10, "string 1 opened while node 1 restarts")
        wait_for(lambda: w.all_closed([0, 2]), 120, "string 1 closed again with string 3", poll_s=0.05)
        wait_for(lambda: closed_count(1) == 2, 10, "the restarted node 1 counts 2 strings closed")
        atk = Proc([str(TESTS / "procs" / "attacker.py"), "replay", str(system_path), str(capture), "0.1"])
        procs.append(atk)
        seen = 0
        end = None
        while end is None or time.monotonic() < end:
            seen = max(seen, closed_count(1) or 0)
            if end is None and atk.p.poll() is not None:
                end = time.monotonic() + 1.0
            time.sleep(0.02)
        sent = atk.read_json("replayed_frames", 10)
        assert sent["replayed_frames"] > 60
        return seen, sent

    # the shipped node: its restored counters make every captured message of node 2 old
    seen, sent = restart_node1_and_replay(None)
    assert seen == 2, f"the restarted node 1 counted the dead string 2 closed ({seen} closed)"
    assert not any(w.state()[1])

    # the same with the restore disabled: the check sees the replay taken
    seen_forgetful, _ = restart_node1_and_replay("node_no_rx_memory.py")
    assert seen_forgetful == 3, f"without its receive counters node 1 took the replay ({seen_forgetful} closed)"

    nodes[1].p.terminate()
    nodes[1].p.wait(15)
    stops = [e for e in _events(tmp_path / "state1") if e["kind"] == "stop"]
    assert len(stops) == 3
    peer = stops[1]["peer"]  # the shipped node's run with the replay
    messages = sent["replayed_frames"] // 3
    assert peer["rx_stale"] + peer["rx_duplicate"] >= 0.8 * messages, (peer, messages)
    starts = [e for e in _events(tmp_path / "state1") if e["kind"] == "start"]
    assert (tmp_path / "state1" / RX_COUNTERS_FILE).exists() and len(starts) == 3
    asyncio.run_coroutine_threadsafe(asyncio.sleep(0), loop).result(5)
    mon.transport.close()
    loop.call_soon_threadsafe(loop.stop)
