"""Issue 16 item 3: a node's learned capacity rides in its state file across restarts.

An aged cell's capacity is learnt from rest points and full charges (AWTLS, rust_core/src/soh.rs);
if a restart forgot it, every start would coulomb-count with the nominal capacity again until two
anchors 20 % of SOC apart. The engine state's ``rest_soh`` section carries the per-cell capacity and
the estimator's sums; here a real node (``mbms node``, NodeCore) starts from a state file whose
capacity is 85 % of the cell file's, runs, saves, stops; its next state file still says 85 %, and
an engine restored from it counts charge with that capacity.
"""

from __future__ import annotations

import json
import struct
import time
from pathlib import Path

import numpy as np
from conftest import Proc, free_udp_port, wait_for
from node_files import pack_file, system_file
from test_e2e_nodecore import _require_stack, _start_plant

from mbms.engine import Engine, PackConfig
from mbms.node.persistence import StateStore

_HEADER = struct.Struct("<4sHIIq")  # mbms/node/persistence.py, format 2


def _saved(path: Path) -> tuple[int, dict] | None:
    """(save time in unix ms, engine state document) of a node's state.bin, or None."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    if len(raw) < _HEADER.size:
        return None
    _, _, length, _, saved_ms = _HEADER.unpack_from(raw)
    blob = raw[_HEADER.size:]
    return (saved_ms, json.loads(blob)) if len(blob) == length else None


def test_learned_capacity_survives_a_node_restart(tmp_path: Path, procs: list[Proc]) -> None:
    plant = _require_stack()
    link = f"unix://{tmp_path}/plant.sock"
    _start_plant(procs, plant, link)
    system = system_file(tmp_path, [1], "can", free_udp_port(), system_id=f"cap-{free_udp_port()}")
    pack = pack_file(tmp_path, 1, link, period_ms=100, with_engine=True)
    cfg = PackConfig.from_toml(pack)
    n = cfg.pack.series
    e = Engine(cfg)
    v, t = np.full(n, 3.75), np.full(cfg.pack.temp_sensors, 25.0)
    for k in range(20):
        e.step(0.1 * k, v, t, 0.0)
    doc = json.loads(e.export_state())
    cap_nom = float(doc["rest_soh"]["cap_ah"][0])
    learned = 0.85 * cap_nom  # what an aged cell's rest points taught the estimator
    doc["rest_soh"]["cap_ah"] = [repr(learned)] * n
    store = StateStore(tmp_path / "state1", 1)
    store.save(json.dumps(doc).encode())
    store.close()
    written_ms = time.time_ns() // 1_000_000

    node = Proc(["-m", "mbms", "node", "--config", str(pack), "--system", str(system)])
    procs.append(node)
    state = tmp_path / "state1" / "state.bin"
    # the node restored the file and saved its own state since (state_save_ms 200)
    saved = wait_for(lambda: (s := _saved(state)) and s[0] > written_ms + 500 and s, 60, "a state saved by the node")
    node.kill()  # kill -9: the state file is written atomically
    events = [json.loads(s) for s in (tmp_path / "state1" / "events.jsonl").read_text().splitlines()]
    assert [ev["restored"] for ev in events if ev["kind"] == "start"] == ["ok"], events
    caps = [float(x) for x in saved[1]["rest_soh"]["cap_ah"]]
    np.testing.assert_allclose(caps, learned, rtol=1e-9, err_msg="the restart forgot the learned capacity")

    # the next start counts charge with it: 1 A for 360 s moves SOC by 0.1 Ah / capacity
    _, last = _saved(state) or saved
    e2 = Engine(cfg)
    assert e2.import_state(json.dumps(last).encode()) == []
    r = e2.step(0.0, v, t, 0.0)
    cc0 = np.asarray(r.soc_cc).copy()
    assert abs(float(r.soh_capacity) - 0.85) < 1e-9
    for k in range(1, 361):
        r = e2.step(float(k), v, t, 1.0)
    dz = cc0 - np.asarray(r.soc_cc)
    np.testing.assert_allclose(dz, 0.1 / (learned * cfg.pack.parallel), rtol=1e-6)
