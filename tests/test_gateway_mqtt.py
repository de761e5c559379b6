"""MQTT gateway against a real mosquitto: discovery payloads, state values against the plant,
events, the last will after kill -9, refused credentials, an unreachable broker, and memory
bounded while the broker is away (then reconnect and catch up)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from conftest import Proc, wait_for
from operator_stack import Mosquitto, Subscriber, can_system, free_tcp_port, node_pack, start_node, start_plant

from mbms.config_views import MqttSection, load_node
from mbms.errors import ConfigError
from mbms.gateways.mqtt import PACK_SENSORS, MqttGateway
from mbms.gateways.snapshot import NodeSnapshot
from test_plant_link import _plant_state


def _mqtt_table(port: int, **extra: object) -> str:
    lines = [f'host = "127.0.0.1"', f"port = {port}", "state_period_ms = 200", "cells_period_ms = 500", "keepalive_s = 5"]
    lines += [f"{k} = {json.dumps(v)}" for k, v in extra.items()]
    return "[operator.mqtt]\n" + "\n".join(lines) + "\n"


def test_node_publishes_state_discovery_events_and_last_will(tmp_path: Path, procs: list[Proc]) -> None:
    broker = Mosquitto(tmp_path)
    link = start_plant(procs, tmp_path)
    system = can_system(tmp_path, [1])
    node = start_node(procs, node_pack(tmp_path, 1, link, _mqtt_table(broker.port)), system)
    sub = Subscriber(broker.port, ["homeassistant/#", "mbms/#"])
    try:
        base = "mbms/test-sys/1"
        # Home Assistant discovery: one retained config per sensor, with the fields HA needs
        soc_cfg = json.loads(wait_for(lambda: sub.get("homeassistant/sensor/mbms_test-sys_1_soc_pct/config"), 30, "SOC discovery"))
        assert soc_cfg["unique_id"] == "mbms_test-sys_1_soc_pct" and soc_cfg["device_class"] == "battery"
        assert soc_cfg["unit_of_measurement"] == "%" and soc_cfg["state_class"] == "measurement"
        assert soc_cfg["state_topic"] == f"{base}/state" and soc_cfg["availability_topic"] == f"{base}/availability"
        assert soc_cfg["device"]["identifiers"] == ["mbms_test-sys_1"] and soc_cfg["device"]["manufacturer"] == "mbms"
        for key, _name, dc, unit, sc in PACK_SENSORS:
            cfg = json.loads(wait_for(lambda: sub.get(f"homeassistant/sensor/mbms_test-sys_1_{key}/config"), 5, key))
            assert cfg.get("device_class") == dc and cfg.get("unit_of_measurement") == unit and cfg.get("state_class") == sc
        t_max = json.loads(sub.get("homeassistant/sensor/mbms_test-sys_1_t_cell_max_c/config"))
        assert t_max["device_class"] == "temperature" and t_max["unit_of_measurement"] == "°C"
        sys_cfg = json.loads(wait_for(lambda: sub.get("homeassistant/sensor/mbms_test-sys_system_sys_dcl_a/config"), 5, "system"))
        assert sys_cfg["availability"] == [{"topic": f"{base}/availability"}] and sys_cfg["device_class"] == "current"
        assert wait_for(lambda: sub.get(f"{base}/availability"), 10, "online") == b"online"

        # state values against the simulation: the string closes (one member, quorum 1)
        def closed_state() -> dict | None:
            raw = sub.get(f"{base}/state")
            st = json.loads(raw) if raw else None
            return st if st and st["main_closed"] and st["phase"] == "CLOSED" and st["sys_dcl_a"] > 0 else None
        st = wait_for(closed_state, 60, "state: closed")
        assert _plant_state(link)["contactors"][0] == [True, True, False]
        from operator_stack import plant_cmd
        truth = plant_cmd(link, {"op": "truth"})
        assert st["soc_pct"] == pytest.approx(100 * truth["soc"][0], abs=3.0)
        assert st["v_string_v"] == pytest.approx(truth["v_string_v"][0], abs=2.0)
        assert st["v_cell_min_v"] <= st["v_cell_max_v"] and st["v_cell_spread_mv"] >= 0
        assert st["sys_dcl_a"] > 0 and st["alarm_level"] in ("none", "Warning")
        cells = json.loads(wait_for(lambda: sub.get(f"{base}/cells"), 10, "cells"))
        assert len(cells) == 96 and min(cells) == pytest.approx(st["v_cell_min_v"], abs=0.01)
        system_state = json.loads(wait_for(lambda: sub.get("mbms/test-sys/system/state"), 5, "system state"))
        assert system_state["closed_set"] == [1]
        # events of the node's log reach the broker (phase changes on the way to CLOSED)
        kinds = {json.loads(p)["kind"] for t, p in sub.all if t == f"{base}/events"}
        assert "phase" in kinds

        # kill -9: the broker publishes the last will
        node.kill()
        wait_for(lambda: sub.get(f"{base}/availability") == b"offline", 15, "last will 'offline' after kill -9")
    finally:
        sub.close()
        broker.stop()


def test_bad_mqtt_config_is_rejected_naming_the_field(tmp_path: Path) -> None:
    system = can_system(tmp_path, [1])
    for table, field in [("[operator.mqtt]\nqos = 3\n", "operator.mqtt.qos"),
                         ('[operator.mqtt]\npassword = "x"\n', "operator.mqtt.username"),
                         ("[operator.mqtt]\nstate_period_ms = 5\n", "operator.mqtt.state_period_ms"),
                         ('[operator.mqtt]\nca_file = "/x.pem"\n', "operator.mqtt.tls"),
                         ('[operator.mqtt]\ntopic_prefix = "a/#"\n', "operator.mqtt.topic_prefix"),
                         ("[operator.mqtt]\nbroker = 1\n", "operator.mqtt.broker"),
                         ("[operator]\nevents_max_bytes = 10\n", "operator.events_max_bytes")]:
        pack = node_pack(tmp_path, 1, "unix:///tmp/none.sock", table)
        with pytest.raises(ConfigError) as exc:
            load_node(pack, system).raise_first()
        assert exc.value.field == field, (table, str(exc.value))
        assert str(pack) in str(exc.value)


def _section(port: int, **kw: object) -> MqttSection:
    pack = node_pack(Path(kw.pop("tmp")), 1, "unix:///tmp/none.sock", _mqtt_table(port, **kw))  # type: ignore[arg-type]
    files = load_node(pack, can_system(Path(pack).parent, [1]))
    assert files.pack is not None and files.pack.operator is not None and files.pack.operator.mqtt is not None
    return files.pack.operator.mqtt


def test_refused_credentials_and_unreachable_broker_never_block(tmp_path: Path) -> None:
    broker = Mosquitto(tmp_path, users={"bms": "right"})
    try:
        gw = MqttGateway(_section(broker.port, tmp=tmp_path, username="bms", password="wrong"), "s", 1)
        gw.start()
        wait_for(lambda: gw.refused, 10, "the broker refuses the credentials")
        assert "not authorized" in gw.refused.lower() or "bad user name or password" in gw.refused.lower()
        assert not gw.connected
        gw.close()
        ok = MqttGateway(_section(broker.port, tmp=tmp_path, username="bms", password="right"), "s", 2)
        ok.start()
        wait_for(lambda: ok.connected, 10, "connected with the right credentials")
        ok.close()
    finally:
        broker.stop()
    # nothing listens on this port: the gateway retries in its own thread; the hook never waits
    dead = MqttGateway(_section(free_tcp_port(), tmp=tmp_path), "s", 3)
    dead.start()
    t0 = time.perf_counter()
    for i in range(20_000):
        dead.on_event({"kind": "x", "i": i})
    per_call_us = (time.perf_counter() - t0) / 20_000 * 1e6
    assert dead.pending() <= dead.cfg.queue_max and dead.events_dropped == 20_000 - dead.cfg.queue_max
    print(f"on_event with the broker unreachable: {per_call_us:.1f} us per call")
    dead.close()


def _snapshot(i: int) -> NodeSnapshot:
    return NodeSnapshot(node_id=1, t_unix=time.time(), periods=i, phase="CLOSED", fail_safe=None, soc_pct=50.0 + i * 1e-3,
                        soh_capacity_pct=99.0, soh_resistance_pct=101.0, dcl_a=29.0, ccl_a=13.0, sys_dcl_a=29.0,
                        sys_ccl_a=13.0, i_a=1.0, v_string_v=355.0, v_bus_v=355.0, contactors=(True, True, False),
                        closed_set=(1,), peers_seen=(), alarms=(), v_cell_v=(3.7,) * 96, t_cell_c=(25.0,) * 8)


def test_broker_away_memory_bounded_then_catches_up(tmp_path: Path) -> None:
    broker = Mosquitto(tmp_path)
    gw = MqttGateway(_section(broker.port, tmp=tmp_path, queue_max=50), "s", 1)
    gw.start()
    sub = Subscriber(broker.port, ["mbms/#"])
    try:
        wait_for(lambda: gw.connected and sub.connected, 10, "connected")
        now = 0.0
        gw.on_period(lambda: _snapshot(0), now)
        wait_for(lambda: sub.get("mbms/s/1/state"), 10, "first state")
        broker.stop()
        wait_for(lambda: not gw.connected, 15, "the gateway notices the broker is gone")
        for i in range(1, 5001):  # the broker is away: 5000 periods of state, cells and events
            now += 1.0
            gw.on_period(lambda: _snapshot(i), now)
            gw.on_event({"kind": "tick", "i": i})
        # bounded: the newest state and cells snapshots and queue_max events
        assert gw.pending() <= 2 + 50 and gw.events_dropped >= 5000 - 50
        broker.start()  # same port: paho reconnects by itself and sends what it kept
        wait_for(lambda: gw.connected and sub.connected, 40, "both reconnected")
        # the retained state is the newest one, not a replay of the 5000
        wait_for(lambda: json.loads(sub.get("mbms/s/1/state") or b"{}").get("soc_pct") == pytest.approx(55.0, abs=1e-6),
                 20, "the newest state after the broker came back")
        gw.on_event({"kind": "after"})
        wait_for(lambda: any(t == "mbms/s/1/events" and json.loads(p)["kind"] == "after" for t, p in list(sub.all)), 20,
                 "a new event after the broker came back")
    finally:
        sub.close()
        gw.close()
        broker.stop()


def test_tls_to_the_broker(tmp_path: Path) -> None:
    """TLS with the broker's CA from the config: connects and publishes; a node given another CA
    does not connect (and never blocks)."""
    import shutil
    import subprocess

    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed")

    def ossl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True)

    for name in ("ca", "other"):
        ossl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN=test {name}",
             "-keyout", str(tmp_path / f"{name}.key"), "-out", str(tmp_path / f"{name}.pem"))
    ossl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1", "-keyout", str(tmp_path / "srv.key"),
         "-out", str(tmp_path / "srv.csr"))
    (tmp_path / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    ossl("x509", "-req", "-in", str(tmp_path / "srv.csr"), "-CA", str(tmp_path / "ca.pem"), "-CAkey", str(tmp_path / "ca.key"),
         "-CAcreateserial", "-days", "2", "-extfile", str(tmp_path / "san.ext"), "-out", str(tmp_path / "srv.pem"))
    broker = Mosquitto(tmp_path, tls=(tmp_path / "ca.pem", tmp_path / "srv.pem", tmp_path / "srv.key"))
    try:
        gw = MqttGateway(_section(broker.port, tmp=tmp_path, tls=True, ca_file=str(tmp_path / "ca.pem")), "s", 1)
        gw.start()
        wait_for(lambda: gw.connected, 15, "TLS connection with the broker's CA")
        gw.on_period(lambda: _snapshot(1), 0.0)
        wait_for(lambda: gw.published >= 2, 10, "state published over TLS")
        gw.close()
        bad = MqttGateway(_section(broker.port, tmp=tmp_path, tls=True, ca_file=str(tmp_path / "other.pem")), "s", 2)
        bad.start()
        t0 = time.perf_counter()
        bad.on_period(lambda: _snapshot(1), 0.0)
        assert time.perf_counter() - t0 < 0.05
        deadline = time.monotonic() + 3.0  # an observation window: the wrong CA never connects
        while time.monotonic() < deadline:
            assert not bad.connected
            time.sleep(0.05)
        bad.close()
    finally:
        broker.stop()
