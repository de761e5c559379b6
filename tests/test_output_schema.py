"""One output schema, owned by Rust serde (issue 9): every binding hands out what the Rust types
serialize (``NodeReport``, ``PeerOutput``, ``Counters``, ``Event``, ``ActiveFault``,
``PackReport``), so the same thing looks the same in every mode.

* a drift check: no binding builds one of these outputs by hand (key by key);
* the same event, the same counters and the same fault come out identical from the protocol peer
  (``ConsensusPeer``), the node core (``NodeCore``, real nodes and processes mode), the engine
  and the fast simulator's report.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from mbms import _core
from mbms.config_views import load_pack, load_system
from mbms.paths import pack_file, system_file

BINDINGS = Path(__file__).resolve().parents[1] / "bindings" / "src"

#: Keys of the serialized outputs. A binding that sets one of them itself (``set_item("phase", ..)``
#: or a ``("closed_set", ..)`` pair) has gone back to building the output by hand.
OUTPUT_KEYS = ("phase", "closed_set", "live_set", "faults", "faults_now", "faults_seen", "events", "kind",
               "failsafe", "rx_ok", "rx_dropped", "rx_malformed", "duplicate_id", "contactors", "command",
               "speaker", "quorum", "resets", "sample_request", "join_in_progress")


def test_no_binding_builds_an_output_by_hand() -> None:
    offenders = []
    for src in sorted(BINDINGS.glob("*.rs")):
        text = src.read_text()
        for key in OUTPUT_KEYS:
            for m in re.finditer(rf'(set_item\(\s*"{key}"|\(\s*"{key}"\s*,)', text):
                line = text.count("\n", 0, m.start()) + 1
                if "pythonize::pythonize" in text.splitlines()[line - 1]:
                    continue  # set from the serialized Rust value (the engine's numpy fields stay arrays)
                offenders.append(f"{src.name}:{line}: {m.group(0)}")
    assert not offenders, "outputs built by hand instead of serialized from the Rust type:\n" + "\n".join(offenders)
    # and the outputs do go through the one conversion
    for name in ("node.rs", "consensus.rs", "fastsim.rs", "engine.rs"):
        assert "pythonize::pythonize" in (BINDINGS / name).read_text(), name


#: One system key (message authentication, brief S7) shared by the peers of these tests.
KEYS = [bytes(range(16))]


def _node(node_id: int = 1) -> tuple[_core.NodeCore, dict[str, object]]:
    pack = load_pack(pack_file(f"node{node_id}"))
    system = load_system(system_file("example_system"))
    assert pack.cell_path is not None
    peer = system.peer_config(node_id, 77)
    core = _core.NodeCore(pack.engine, pack.cell_path.read_text(), peer, pack.node.logic_dict(), 77, KEYS)
    return core, peer


def _step(core: _core.NodeCore, t_ms: int, v_cell_v: float = 3.3) -> dict[str, object]:
    v = np.full(core.n_cells, v_cell_v)
    t = np.full(core.n_temps, 25.0)
    return core.step(t_ms, t_ms, v, t, 0.0, v.sum(), 0.0, (False, False, False), True)


def test_the_same_event_and_counters_from_the_peer_and_the_node_core() -> None:
    core, peer_cfg = _node(1)
    peer = _core.ConsensusPeer(peer_cfg, 77, KEYS)
    # a message from member 2: both must report it joining, in the same form
    other_cfg = dict(peer_cfg, node_id=2)
    other = _core.ConsensusPeer(other_cfg, 5, KEYS)
    local = {"ocv_v": 360.0, "r_ohm": 0.5, "soc": 0.5, "dcl_a": 10.0, "ccl_a": 5.0, "dcl_peak_a": 20.0,
             "ccl_peak_a": 10.0, "fault": False, "may_close": False, "v_string_v": 360.0, "v_bus_v": 0.0,
             "i_a": 0.0, "feedback": (False, False, False)}
    msg = None
    t = 0
    while msg is None and t < 5_000:
        out = other.tick(t, local)
        msg = out["messages"][0] if out["messages"] else None
        t += 10
    assert isinstance(msg, bytes), "the other peer never sent a message"
    assert peer.on_message(t, msg) is None
    assert core.receive(t, msg)
    ev_peer = peer.tick(t + 10, dict(local, fault=False))["events"]
    ev_node = _step(core, t + 10)["events"]
    joined_peer = [e for e in ev_peer if e["kind"] == "peer_joined"]
    joined_node = [e for e in ev_node if e["kind"] == "peer_joined"]
    assert joined_peer == joined_node == [{"kind": "peer_joined", "id": 2}]
    # one counter set, the same keys and the same counts of what both received
    cp, cn = peer.counters(), core.counters()
    assert set(cp) == set(cn) and {"requests", "grants", "closes", "aborts", "rx_ok"} <= set(cp)
    assert cp["rx_ok"] == cn["rx_ok"] == 1


def test_node_core_output_is_the_serialized_schema() -> None:
    core, _ = _node(2)
    d = _step(core, 1_000)
    assert isinstance(d["phase"], str) and d["phase"] in _core.PHASE_NAMES
    assert isinstance(d["closed_set"], list) and isinstance(d["live_set"], list)
    assert d["contactors"] == (False, False, False)
    assert d["failsafe"] is None and isinstance(d["action"], str)
    assert all(isinstance(m, bytes) for m in d["messages"])


def test_a_fault_is_the_same_from_the_engine_and_the_node_core() -> None:
    pack = load_pack(pack_file("node1"))
    assert pack.cell_path is not None
    eng = _core.Engine(pack.engine, pack.cell_path.read_text())
    core, _ = _node(1)
    v_high = 4.5  # far above any cell's over-voltage fault threshold: every cell trips
    faults_node: list[object] = []
    faults_eng: list[object] = []
    for k in range(100):
        d = _step(core, 100 * k, v_high)
        faults_node = list(d["faults"])
        v = np.full(core.n_cells, v_high)
        eng.step(0.1 * k, v, np.full(core.n_temps, 25.0), 0.0)
        faults_eng = list(eng.output()["faults"])
        if faults_node and faults_eng:
            break
    assert faults_node, "the node core never reported the over-voltage"
    assert faults_node == faults_eng
    f = faults_node[0]
    assert isinstance(f, dict) and set(f) == {"rule", "level", "index"}
    assert f["rule"] == "cell_overvoltage" and f["level"] in ("warning", "alarm", "fault")
