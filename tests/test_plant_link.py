"""The node's own plant link: a real plant-server process and the node-side runtime."""

from __future__ import annotations

import asyncio
import os
import threading
from pathlib import Path

import pytest
from conftest import TESTS, Proc, free_udp_port, wait_for
from node_double import DoubleLogic

from mbms.hardware.sim_link import SimLinkHardware
from mbms.config_views import NodeSection
from mbms.types import ALL_OPEN, Contactors
from mbms.node.persistence import StateStore
from mbms.node.runtime import NodeRuntime
from mbms.plant_link import pack, unpack


class RuntimeThread:
    """A NodeRuntime running in its own thread and event loop (the test thread only reads it)."""

    def __init__(self, runtime: NodeRuntime) -> None:
        self.rt = runtime
        self.loop = asyncio.new_event_loop()
        self.stop = asyncio.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self.rt.run(self.stop))

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.stop.set)
        self.thread.join(5)


def _plant_state(link: str) -> dict:
    import socket

    if link.startswith("udp://"):
        host, port = link[6:].rsplit(":", 1)
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        addr: object = (host, int(port))
    else:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        s.bind(f"\0mbms-test-{os.getpid()}-{threading.get_ident()}")
        addr = link[7:]
    with s:
        s.settimeout(2)
        s.sendto(pack({"op": "state"}), addr)
        return unpack(s.recv(65536))


@pytest.mark.parametrize("kind", ["udp", "unix"])
def test_measurements_commands_and_fail_safe_on_plant_kill(kind: str, tmp_path: Path, procs: list[Proc]) -> None:
    link = f"udp://127.0.0.1:{free_udp_port()}" if kind == "udp" else f"unix://{tmp_path}/plant.sock"
    plant = Proc([str(TESTS / "procs" / "plant_double_server.py"), link, "2"])
    procs.append(plant)
    plant.read_until(lambda s: s.strip() == "ready", 10)
    node = NodeSection.of(id=1, state_dir=tmp_path, control_period_ms=20, estimation_period_ms=20,
                       stale_ms=200, overrun_ms=500, state_save_ms=100)
    hw = SimLinkHardware(link, string=1, timeout_s=0.15)
    logic = DoubleLogic(1)
    rt = NodeRuntime(node, logic, hw, store=StateStore(tmp_path, 1))
    th = RuntimeThread(rt)
    try:
        # measurements flow in, the logic closes in sequence, the plant applies the commands
        wait_for(lambda: rt.commanded == Contactors(True, True, False), 10, "string closed")
        st = _plant_state(link)
        assert st["contactors"][1] == [True, True, False] and st["contactors"][0] == [False, False, False]
        meas = wait_for(lambda: (m := hw.read()[0]).feedback.pos and m, 5, "closed feedback")
        assert meas.feedback == Contactors(True, True, False) and len(meas.v_cell_v) == 4 and meas.valid
        assert rt.fail_safe_reason is None and hw.replies >= 3 and hw.malformed == 0
        # kill the plant: the node must force its contactors open within the staleness bound
        plant.kill()
        # the runtime records the reason, then commands all-open in the same period: wait for
        # both (checking the command the instant the reason shows raced that period once)
        wait_for(lambda: rt.fail_safe_reason is not None and rt.commanded == ALL_OPEN, 5, "fail-safe, all open")
        assert logic.fail_safes
        reason = rt.fail_safe_reason
        assert "hardware link lost" in reason or "stale" in reason
        # detected by the first period after the bound: within stale_ms + one period + that period's
        # lateness (the loop's own jitter record), whatever the load of the machine
        if "stale" in reason:
            age_ms = float(reason.split("stale measurement: ")[1].split(" ms")[0])
            n = min(rt.timing.count, len(rt.timing.jitter_ms))
            assert age_ms <= node.stale_ms + node.control_period_ms + rt.timing.jitter_ms[:n].max() + 1
        assert logic.invalid_steps == 0 or logic.phase.name in ("OPEN", "FAIL_SAFE")
    finally:
        th.close()
    events = [e["kind"] for e in StateStore(tmp_path, 1).read_events()]
    assert events[0] == "start" and "fail_safe" in events and events[-1] == "stop"


def test_plant_watchdog_opens_string_of_a_dead_node(tmp_path: Path, procs: list[Proc]) -> None:
    link = f"udp://127.0.0.1:{free_udp_port()}"
    plant = Proc([str(TESTS / "procs" / "plant_double_server.py"), link, "1", "0.3"])
    procs.append(plant)
    plant.read_until(lambda s: s.strip() == "ready", 10)
    node = NodeSection.of(id=1, state_dir=tmp_path, control_period_ms=20, estimation_period_ms=20)
    hw = SimLinkHardware(link, string=0, timeout_s=0.2)
    rt = NodeRuntime(node, DoubleLogic(1), hw)
    th = RuntimeThread(rt)
    wait_for(lambda: _plant_state(link)["contactors"][0] == [True, True, False], 10, "closed at the plant")
    # a node that stops sending (crash): emulate by stopping its loop without the final open command
    rt.hw.command = lambda c, b: None  # type: ignore[method-assign]
    th.close()
    st = wait_for(lambda: (s := _plant_state(link))["contactors"][0] == [False, False, False] and s, 5,
                  "plant opens the orphaned string")
    assert st["last_cmd_age_s"][0] >= 0.3


def test_plant_server_rejects_bad_datagrams() -> None:
    from node_double import DoublePlant

    from mbms.plant_server import PlantServer

    srv = PlantServer(DoublePlant(2), 2)
    for raw in (b"\xc1", pack({"op": "cmd", "k": 5, "seq": 1, "neg": True, "pos": False, "pre": False}),
                pack({"op": "cmd", "k": 0, "seq": 1, "neg": 1, "pos": False, "pre": False}),
                pack({"op": "load", "i": float("nan")}), pack({"op": "nope"}), pack({"x": 1})):
        assert unpack(srv.handle(raw))["op"] == "error"
    assert srv.malformed == 6 and srv.contactors == [(False, False, False)] * 2
    ok = unpack(srv.handle(pack({"op": "cmd", "k": 1, "seq": 7, "neg": True, "pos": False, "pre": True})))
    assert ok["op"] == "meas" and ok["seq"] == 7 and ok["fb"] == [True, False, True]
