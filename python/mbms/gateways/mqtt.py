"""MQTT gateway of a node (``[operator.mqtt]``): state, cells and events to a broker, with
Home Assistant MQTT discovery and availability through the last will.

Topics (``P`` = ``<topic_prefix>/<system_id>``):

* ``P/<id>/availability``  ``online`` (retained) / ``offline``: the broker's last will, published
  by the broker when the node dies (kill -9, power cut) or the link is silent 1.5 x keepalive;
* ``P/<id>/state``         JSON (retained) every ``state_period_ms``: SOC, SOH, limits, current,
  voltages, cell min/max/spread, temperatures, phase, contactors, alarms with level;
* ``P/<id>/cells``         JSON list of cell voltages (retained) every ``cells_period_ms``;
* ``P/<id>/events``        one JSON object per event-log record (not retained);
* ``P/system/state``       the agreed system view as this node sees it (limits, closed set);
  every peer publishes the same values once they agree (brief S5);
* ``<discovery_prefix>/sensor|binary_sensor/<unique_id>/config`` (retained): Home Assistant
  discovery (https://www.home-assistant.io/integrations/mqtt/#mqtt-discovery).

A dead or slow broker never delays a control step: the period hook only stores the newest state
(one slot per topic) or appends an event to a bounded deque; a thread of its own hands them to
paho-mqtt, whose network loop runs in its own thread too. While the broker is away state
messages are coalesced (newest wins) and events beyond ``queue_max`` drop the oldest (counted),
so memory stays bounded however long the broker is away.
"""

from __future__ import annotations

import collections
import json
import logging
import ssl
import threading
from typing import Any

from mbms.config_views import MqttSection
from mbms.errors import ConfigError, EnvironmentProblem
from mbms.gateways.snapshot import NodeSnapshot

log = logging.getLogger("mbms.mqtt")

#: (key in the state message, name, device_class, unit, state_class) of the per-pack sensors.
#: device_class/unit/state_class as Home Assistant's sensor integration defines them.
PACK_SENSORS: tuple[tuple[str, str, str | None, str | None, str | None], ...] = (
    ("soc_pct", "SOC", "battery", "%", "measurement"),
    ("soh_capacity_pct", "SOH capacity", None, "%", "measurement"),
    ("dcl_a", "Discharge limit", "current", "A", "measurement"),
    ("ccl_a", "Charge limit", "current", "A", "measurement"),
    ("i_a", "Current", "current", "A", "measurement"),
    ("v_string_v", "String voltage", "voltage", "V", "measurement"),
    ("v_bus_v", "Bus voltage", "voltage", "V", "measurement"),
    ("v_cell_min_v", "Cell voltage min", "voltage", "V", "measurement"),
    ("v_cell_max_v", "Cell voltage max", "voltage", "V", "measurement"),
    ("v_cell_spread_mv", "Cell voltage spread", "voltage", "mV", "measurement"),
    ("t_cell_min_c", "Cell temperature min", "temperature", "°C", "measurement"),
    ("t_cell_max_c", "Cell temperature max", "temperature", "°C", "measurement"),
    ("phase", "Phase", "enum", None, None),
    ("alarm_level", "Alarm level", "enum", None, None),
)
#: (key, name, device_class) of the per-pack binary sensors.
PACK_BINARY: tuple[tuple[str, str, str], ...] = (
    ("main_closed", "On bus", "power"),
    ("contactor_pre", "Precharging", "running"),
)
SYSTEM_SENSORS: tuple[tuple[str, str, str | None, str | None, str | None], ...] = (
    ("sys_dcl_a", "System discharge limit", "current", "A", "measurement"),
    ("sys_ccl_a", "System charge limit", "current", "A", "measurement"),
    ("closed_count", "Strings on bus", None, None, "measurement"),
)


def _paho() -> Any:
    try:
        import paho.mqtt.client as mqtt
    except ModuleNotFoundError:
        raise EnvironmentProblem("python package 'paho-mqtt'", "not installed",
                                 "install the MQTT extra: pip install 'mbms[mqtt]'") from None
    return mqtt



def _optional_fields(device_class: str | None, unit: str | None, state_class: str | None) -> dict[str, str]:
    """The Home Assistant sensor keys a sensor states only when it has them."""
    given = (("device_class", device_class), ("unit_of_measurement", unit), ("state_class", state_class))
    return {k: v for k, v in given if v}

class MqttGateway:
    def __init__(self, cfg: MqttSection, system_id: str, node_id: int, source: str | None = None,
                 sw_version: str = "", members: tuple[int, ...] = ()) -> None:
        self.cfg = cfg
        self.members = tuple(members) or (node_id,)
        self.system_id = system_id
        self.node_id = node_id
        self.sw_version = sw_version
        self.base = f"{cfg.topic_prefix}/{system_id}"
        self.node_topic = f"{self.base}/{node_id}"
        self.availability = f"{self.node_topic}/availability"
        self._lock = threading.Condition()
        self._latest: dict[str, NodeSnapshot] = {}  # "state" / "cells": the newest snapshot wins
        self._events: collections.deque[dict[str, Any]] = collections.deque(maxlen=cfg.queue_max)
        self._stop = False
        self.connected = False
        self.published = 0
        self.events_dropped = 0
        self.coalesced = 0
        self.refused: str | None = None  # the broker's reason when it refused the connection
        self._last_state = float("-inf")
        self._last_cells = float("-inf")
        mqtt = _paho()
        self._mqtt = mqtt
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"mbms-{system_id}-{node_id}",
                                  clean_session=True)
        if cfg.username:
            self.client.username_pw_set(cfg.username, cfg.password or None)
        if cfg.tls:
            try:
                self.client.tls_set(ca_certs=cfg.ca_file or None, certfile=cfg.cert_file or None,
                                    keyfile=cfg.key_file or None, cert_reqs=ssl.CERT_REQUIRED)
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError("operator.mqtt.ca_file", f"TLS files could not be loaded: {exc}", source) from None
        # the broker publishes this when the node goes away without a clean disconnect
        self.client.will_set(self.availability, b"offline", qos=1, retain=True)
        # paho's own queue of unsent messages is bounded too (its default is unbounded)
        self.client.max_queued_messages_set(cfg.queue_max)
        self.client.reconnect_delay_set(1, 30)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_connect_fail = self._on_connect_fail
        self.unreachable = 0  # failed connection attempts since the last success
        self._thread = threading.Thread(target=self._run, name="mbms-mqtt", daemon=True)

    # ---------------------------------------------------------------- lifecycle
    def start(self) -> None:
        # connect_async: a dead broker is retried by paho's loop thread, never waited for here
        self.client.connect_async(self.cfg.host, self.cfg.port, keepalive=self.cfg.keepalive_s)
        self.client.loop_start()
        self._thread.start()
        log.info("MQTT to %s:%d (tls %s), topics %s/...", self.cfg.host, self.cfg.port, self.cfg.tls, self.node_topic)

    def close(self) -> None:
        with self._lock:
            self._stop = True
            self._lock.notify()
        self._thread.join(timeout=2)
        if self.connected:
            # a clean stop says so itself (the broker sends the will only on an unclean loss)
            self.client.publish(self.availability, b"offline", qos=1, retain=True)
        self.client.disconnect()
        self.client.loop_stop()

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, properties: Any = None) -> None:
        if getattr(reason, "is_failure", False):
            if self.refused != str(reason):
                log.error("MQTT broker %s:%d refused the connection: %s (check operator.mqtt.username/password)",
                          self.cfg.host, self.cfg.port, reason)
            self.refused = str(reason)
            return
        self.refused = None
        self.connected = True
        self.unreachable = 0
        log.info("MQTT connected to %s:%d", self.cfg.host, self.cfg.port)
        client.publish(self.availability, b"online", qos=1, retain=True)
        if self.cfg.discovery_prefix:
            for topic, payload in self.discovery_messages():
                client.publish(topic, payload, qos=1, retain=True)
        with self._lock:
            self._lock.notify()  # send what waited for the broker

    def _on_connect_fail(self, client: Any, userdata: Any) -> None:
        # An unreachable broker is an environment problem, but not one that stops a node: the
        # battery's protection and its peers do not depend on the operator link. One warning
        # line per outage (not per retry, never a traceback); paho retries every 1..30 s.
        self.unreachable += 1
        if self.unreachable == 1:
            log.warning("MQTT broker %s:%d unreachable (connection failed); retrying in the background every "
                        "1..30 s, the node runs on without it (check operator.mqtt.host/port and that the broker "
                        "is running)", self.cfg.host, self.cfg.port)

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, reason: Any, properties: Any = None) -> None:
        if self.connected:
            log.warning("MQTT connection to %s:%d lost: %s", self.cfg.host, self.cfg.port, reason)
        self.connected = False

    # ------------------------------------------------------------ loop side
    def on_period(self, snap_of: Any, now: float) -> None:
        """Period hook: at the configured rates, keep the newest snapshot (never blocks; the
        JSON is built in the sender thread, not on the control loop)."""
        state_due = (now - self._last_state) * 1000 >= self.cfg.state_period_ms
        cells_due = (now - self._last_cells) * 1000 >= self.cfg.cells_period_ms
        if not (state_due or cells_due):
            return
        snap: NodeSnapshot = snap_of()
        if state_due:
            self._last_state = now
        if cells_due:
            self._last_cells = now
        with self._lock:
            for kind, due in (("state", state_due), ("cells", cells_due)):
                if due:
                    if kind in self._latest:
                        self.coalesced += 1  # the broker is away or slow: newest wins
                    self._latest[kind] = snap
            self._lock.notify()

    def on_event(self, rec: dict[str, Any]) -> None:
        """Event sink: queue one event-log record (bounded: the oldest goes when full)."""
        with self._lock:
            if len(self._events) == self._events.maxlen:
                self.events_dropped += 1
            self._events.append(rec)
            self._lock.notify()

    def messages(self, kind: str, snap: NodeSnapshot) -> list[tuple[str, bytes]]:
        """(topic, payload) of the retained ``state`` (with the system view) or ``cells`` messages."""
        if kind == "cells":
            return [(f"{self.node_topic}/cells", json.dumps([round(v, 4) for v in snap.v_cell_v]).encode())]
        st = snap.state_dict()
        sys_view = {"reported_by": snap.node_id, "t": st["t"], "sys_dcl_a": st["sys_dcl_a"], "sys_ccl_a": st["sys_ccl_a"],
                    "closed_set": st["closed_set"], "closed_count": len(st["closed_set"])}
        return [(f"{self.node_topic}/state", json.dumps(st, separators=(",", ":")).encode()),
                (f"{self.base}/system/state", json.dumps(sys_view, separators=(",", ":")).encode())]

    def pending(self) -> int:
        with self._lock:
            return len(self._latest) + len(self._events)

    # ---------------------------------------------------------- sender thread
    def _run(self) -> None:
        mqtt = self._mqtt
        while True:
            with self._lock:
                while not self._stop and not (self.connected and (self._latest or self._events)):
                    self._lock.wait(timeout=1.0)
                if self._stop:
                    return
                latest, self._latest = self._latest, {}
                events = list(self._events)
                self._events.clear()
            for kind, snap in latest.items():
                for topic, payload in self.messages(kind, snap):
                    self._publish(mqtt, topic, payload, True)
            for rec in events:
                self._publish(mqtt, f"{self.node_topic}/events", json.dumps(rec, default=str, separators=(",", ":")).encode(),
                              False)

    def _publish(self, mqtt: Any, topic: str, payload: bytes, retain: bool) -> None:
        info = self.client.publish(topic, payload, qos=self.cfg.qos, retain=retain)
        if info.rc == mqtt.MQTT_ERR_SUCCESS:
            self.published += 1
        elif not retain:
            self.events_dropped += 1  # paho's own bounded queue is full: the broker is too slow

    # -------------------------------------------------------------- discovery
    def _device(self) -> dict[str, Any]:
        return {"identifiers": [f"mbms_{self.system_id}_{self.node_id}"], "name": f"mbms {self.system_id} pack {self.node_id}",
                "manufacturer": "mbms", "model": "multi-master BMS node", "sw_version": self.sw_version,
                "via_device": f"mbms_{self.system_id}_system"}

    def _system_device(self) -> dict[str, Any]:
        return {"identifiers": [f"mbms_{self.system_id}_system"], "name": f"mbms {self.system_id}",
                "manufacturer": "mbms", "model": "parallel-string battery system", "sw_version": self.sw_version}

    def discovery_messages(self) -> list[tuple[str, bytes]]:
        """(topic, payload) of every Home Assistant discovery config this node publishes."""
        out: list[tuple[str, bytes]] = []
        dp = self.cfg.discovery_prefix
        avail = {"availability_topic": self.availability, "payload_available": "online",
                 "payload_not_available": "offline"}
        state_topic = f"{self.node_topic}/state"
        for key, name, dc, unit, sc in PACK_SENSORS:
            uid = f"mbms_{self.system_id}_{self.node_id}_{key}"
            cfg: dict[str, Any] = {"name": name, "unique_id": uid, "object_id": uid, "state_topic": state_topic,
                                   "value_template": f"{{{{ value_json.{key} }}}}", "device": self._device(), **avail}
            cfg.update(_optional_fields(dc, unit, sc))
            out.append((f"{dp}/sensor/{uid}/config", json.dumps(cfg).encode()))
        for key, name, dc in PACK_BINARY:
            uid = f"mbms_{self.system_id}_{self.node_id}_{key}"
            cfg = {"name": name, "unique_id": uid, "object_id": uid, "state_topic": state_topic, "device_class": dc,
                   "value_template": f"{{{{ 'ON' if value_json.{key} else 'OFF' }}}}", "device": self._device(), **avail}
            out.append((f"{dp}/binary_sensor/{uid}/config", json.dumps(cfg).encode()))
        uid = f"mbms_{self.system_id}_{self.node_id}_problem"
        cfg = {"name": "Problem", "unique_id": uid, "object_id": uid, "state_topic": state_topic, "device_class": "problem",
               "value_template": "{{ 'ON' if value_json.alarm_level in ['alarm', 'fault'] else 'OFF' }}",
               "json_attributes_topic": state_topic, "json_attributes_template": "{{ {'alarms': value_json.alarms} | tojson }}",
               "device": self._device(), **avail}
        out.append((f"{dp}/binary_sensor/{uid}/config", json.dumps(cfg).encode()))
        for key, name, dc, unit, sc in SYSTEM_SENSORS:
            uid = f"mbms_{self.system_id}_system_{key}"
            cfg = {"name": name, "unique_id": uid, "object_id": uid, "state_topic": f"{self.base}/system/state",
                   "value_template": f"{{{{ value_json.{key} }}}}", "device": self._system_device(),
                   # every member publishes the same config: available while any pack is online
                   "availability": [{"topic": f"{self.base}/{m}/availability"} for m in self.members],
                   "availability_mode": "any", "payload_available": "online", "payload_not_available": "offline"}
            cfg.update(_optional_fields(dc, unit, sc))
            out.append((f"{dp}/sensor/{uid}/config", json.dumps(cfg).encode()))
        return out
