"""Issue 11 item 4: a restored state is checked for plausibility, not only for its checksum.

A state file with a valid checksum but SOC 150 % or capacity 1e6 Ah was restored as is (the node
then reported 91 % where the truth was about 57 %, and derived a wrong charge limit). The engine's
``import_state`` now drops an implausible estimator state (SOC outside the filter's range, capacity
or resistance outside the estimators' bands of the cell file, ...) and says what it dropped; the
estimator then starts from the measurements. The store refuses a state saved in the future.
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from conftest import Proc, free_udp_port, wait_for
from node_files import pack_file, system_file
from test_e2e_nodecore import _require_stack, _start_plant

from mbms.engine import Engine, PackConfig
from mbms.node.persistence import FORMAT, MAGIC, StateStore
from mbms.paths import hw_dir

PACK = hw_dir() / "packs" / "example_pack.toml"
SOC, CAP, R0 = ("cells", "z"), ("rest_soh", "cap_ah"), ("rest_soh", "r0_ratio")  # engine state sections
R0_N = ("rest_soh", "r0_n")
R0_SOH, R0_SOH_N = ("rest_soh", "r0_soh_ratio"), ("rest_soh", "r0_soh_n")


def _patch(blob: bytes, n: int, field: tuple[str, str], value: float, cells: range | None = None) -> bytes:
    """The engine state document (rust_core/src/engine/state.rs) with one per-cell value set."""
    doc = json.loads(blob)
    section, name = field
    for k in cells if cells is not None else range(n):
        doc[section][name][k] = repr(float(value))
    return json.dumps(doc).encode()


def _patch_limit(blob: bytes, name: str, value: float) -> bytes:
    doc = json.loads(blob)
    doc["limits"][name] = repr(float(value))
    return json.dumps(doc).encode()


def _inputs(cfg: PackConfig, v: float) -> tuple[np.ndarray, np.ndarray]:
    return np.full(cfg.pack.series, v), np.full(cfg.pack.temp_sensors, 25.0)


@pytest.fixture(scope="module")
def saved() -> tuple[PackConfig, bytes]:
    cfg = PackConfig.from_toml(PACK)
    e = Engine(cfg)
    for k in range(20):
        e.step(0.1 * k, *_inputs(cfg, 3.75), 2.0)
    return cfg, e.export_state()


def test_plausible_state_is_restored_whole(saved) -> None:
    cfg, blob = saved
    assert Engine(cfg).import_state(blob) == []


@pytest.mark.parametrize(("field", "value", "words"), [
    (SOC, 1.5, "SOC 1.5"), (SOC, -0.5, "SOC -0.5"), (CAP, 1e6, "capacity 1000000"), (R0, 100.0, "resistance ratio 100"),
    (R0_N, -3.0, "R0 observation count -3"), (R0_SOH, 0.01, "SOH resistance ratio 0.01"),
    (R0_SOH_N, -1.0, "SOH R0 observation count -1"),
])
def test_implausible_estimator_state_is_dropped_and_starts_from_measurements(saved, field, value, words) -> None:
    cfg, blob = saved
    n = cfg.pack.series
    bad = _patch(blob, n, field, value, range(n) if field == SOC else range(3, 4))
    e, fresh = Engine(cfg), Engine(cfg)
    dropped = e.import_state(bad)
    assert len(dropped) == 1 and words in dropped[0] and "starts from measurements" in dropped[0], dropped
    # the same as a first start from the same measurement: SOC from OCV, nominal capacity
    v, t = _inputs(cfg, 3.60)
    r, r0 = e.step(100.0, v, t, 0.0), fresh.step(100.0, v, t, 0.0)
    np.testing.assert_allclose(r.soc, r0.soc)
    np.testing.assert_allclose(r.capacity_ah, r0.capacity_ah)
    assert 0.0 < r.soc_mean < 1.0


def test_implausible_limit_restarts_from_zero(saved) -> None:
    cfg, blob = saved
    dropped = Engine(cfg).import_state(_patch_limit(blob, "dcl_a", 1e9))
    assert len(dropped) == 1 and "dcl_a = 1000000000" in dropped[0], dropped


def test_state_saved_in_the_future_is_refused(tmp_path: Path) -> None:
    store = StateStore(tmp_path, 1)
    blob = b"engine state"
    ahead_ms = time.time_ns() // 1_000_000 + 86_400_000  # tomorrow
    stamp = struct.pack("<q", ahead_ms)
    store.state_path.write_bytes(struct.pack("<4sHIIq", MAGIC, FORMAT, len(blob), zlib.crc32(stamp + blob), ahead_ms) + blob)
    res = store.load()
    assert res.status == "implausible" and res.data is None and "in the future" in res.detail
    assert not store.state_path.exists() and (tmp_path / "state.bin.corrupt").exists()
    assert [e["kind"] for e in store.read_events()] == ["state_implausible"]
    store.save(blob)  # a state saved now loads
    assert store.load().data == blob
    store.close()


def test_node_with_nonsense_state_reports_the_measured_soc(tmp_path: Path, procs: list[Proc]) -> None:
    """A real node (mbms node, NodeCore) whose state file says SOC 150 % and capacity 1e6 Ah, on a
    plant at SOC 0.60: its telemetry (read by mbms monitor) shows the SOC of its measurements."""
    plant = _require_stack()
    link = f"unix://{tmp_path}/plant.sock"
    _start_plant(procs, plant, link)  # every string at SOC 0.60
    system = system_file(tmp_path, [1], "can", free_udp_port(), system_id=f"soc-{free_udp_port()}")
    pack = pack_file(tmp_path, 1, link, period_ms=100, with_engine=True)
    cfg = PackConfig.from_toml(pack)
    e = Engine(cfg)
    for k in range(20):
        e.step(0.1 * k, *_inputs(cfg, 3.75), 0.0)
    n = cfg.pack.series
    nonsense = _patch(_patch(e.export_state(), n, SOC, 1.5), n, CAP, 1e6)
    store = StateStore(tmp_path / "state1", 1)
    store.save(nonsense)  # a valid checksum
    store.close()
    node = Proc(["-m", "mbms", "node", "--config", str(pack), "--system", str(system)])
    procs.append(node)

    def soc_pct() -> float | None:
        out = subprocess.run([sys.executable, "-m", "mbms", "monitor", "--system", str(system), "--duration", "1.5",
                              "--json"], capture_output=True, text=True, timeout=30)
        rows = json.loads(out.stdout)["peers"] if out.returncode == 0 and out.stdout.strip() else []
        return rows[0]["soc_pct"] if rows and rows[0]["soc_pct"] is not None else None

    soc = wait_for(soc_pct, 60, "node 1's SOC in its telemetry", poll_s=0.1)
    assert abs(soc - 60.0) < 8.0, f"SOC {soc} %: the nonsense state was trusted"
    events = [json.loads(s) for s in (tmp_path / "state1" / "events.jsonl").read_text().splitlines()]
    implausible = [ev for ev in events if ev["kind"] == "state_implausible"]
    assert implausible and any("SOC 1.5" in d for d in implausible[0]["dropped"]), events
    assert [ev["restored"] for ev in events if ev["kind"] == "start"] == ["partial"]
