"""Prometheus metrics of a node (``[operator.metrics]``), served by prometheus-client at
``http://bind:port/metrics``.

* histograms ``mbms_loop_jitter_seconds`` (wake-up lateness of each control period) and
  ``mbms_step_seconds`` (the logic's step) and ``mbms_period_work_seconds`` (the whole period),
  observed on the loop by the period hook (an observation is a lock and an add);
* counters of the peer protocol: transport frames and messages in/out, drops by reason, the
  consensus core's receive counters, peer events by kind (grants, aborts by reason, ...);
* gauges of the estimates, limits, measurements, contactors, fail-safe and active alarms.

Everything but the histograms is read from the latest :class:`NodeSnapshot` when Prometheus
scrapes (a custom collector in the HTTP server's thread), so a scrape never touches the runtime.
The metric names are the ones ``python/mbms/data/grafana/mbms.json`` uses.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from mbms.config_views import MetricsSection
from mbms.errors import EnvironmentProblem, opening
from mbms.gateways.snapshot import LEVELS, NodeSnapshot

log = logging.getLogger("mbms.metrics")

#: Histogram buckets (s): a control period is tens of ms; an overrun is hundreds.
TIME_BUCKETS_S = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)

#: Gauges from the state message: (key, metric name, help).
GAUGES = (
    ("soc_pct", "mbms_soc_percent", "state of charge (%)"),
    ("soh_capacity_pct", "mbms_soh_capacity_percent", "state of health, capacity (% of new)"),
    ("soh_resistance_pct", "mbms_soh_resistance_percent", "resistance relative to new (%)"),
    ("dcl_a", "mbms_dcl_amperes", "own discharge current limit (A)"),
    ("ccl_a", "mbms_ccl_amperes", "own charge current limit (A)"),
    ("sys_dcl_a", "mbms_system_dcl_amperes", "agreed system discharge limit (A)"),
    ("sys_ccl_a", "mbms_system_ccl_amperes", "agreed system charge limit (A)"),
    ("i_a", "mbms_current_amperes", "string current, + = discharge (A)"),
    ("v_string_v", "mbms_string_volts", "string voltage inside the contactors (V)"),
    ("v_bus_v", "mbms_bus_volts", "bus voltage outside the contactors (V)"),
    ("v_cell_min_v", "mbms_cell_min_volts", "lowest cell voltage (V)"),
    ("v_cell_max_v", "mbms_cell_max_volts", "highest cell voltage (V)"),
    ("t_cell_min_c", "mbms_cell_min_celsius", "lowest cell temperature (degC)"),
    ("t_cell_max_c", "mbms_cell_max_celsius", "highest cell temperature (degC)"),
)


class _SnapshotCollector:
    def __init__(self, gw: MetricsGateway) -> None:
        self.gw = gw

    def collect(self) -> Any:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        snap, transport, events, extra = self.gw.latest()
        if snap is None:
            return
        node = str(snap.node_id)
        st = snap.state_dict()
        for key, name, doc in GAUGES:
            if st.get(key) is not None:
                g = GaugeMetricFamily(name, doc, labels=["node"])
                g.add_metric([node], float(st[key]))
                yield g
        g = GaugeMetricFamily("mbms_contactor_closed", "contactor commanded closed (1)", labels=["node", "contactor"])
        for i, name in enumerate(("neg", "pos", "pre")):
            g.add_metric([node, name], float(snap.contactors[i]))
        yield g
        g = GaugeMetricFamily("mbms_fail_safe", "runtime forced the contactors open (1)", labels=["node"])
        g.add_metric([node], float(snap.fail_safe is not None))
        yield g
        g = GaugeMetricFamily("mbms_closed_strings", "strings in the agreed closed set", labels=["node"])
        g.add_metric([node], float(len(snap.closed_set)))
        yield g
        g = GaugeMetricFamily("mbms_peers_seen", "peers this node hears", labels=["node"])
        g.add_metric([node], float(len(snap.peers_seen)))
        yield g
        g = GaugeMetricFamily("mbms_alarm", "active protection condition (1)", labels=["node", "rule", "level", "where"])
        for a in snap.alarms:
            g.add_metric([node, a.rule, a.level, a.where], 1.0)
        yield g
        g = GaugeMetricFamily("mbms_alarm_level", "highest active level: 0 none, 1 warning, 2 alarm, 3 fault",
                              labels=["node"])
        g.add_metric([node], float(0 if snap.alarm_level == "none" else LEVELS.index(snap.alarm_level) + 1))
        yield g
        c = CounterMetricFamily("mbms_transport_frames", "peer transport frames", labels=["node", "direction"])
        c.add_metric([node, "out"], float(transport.get("sent_frames", 0)))
        c.add_metric([node, "in"], float(transport.get("received_frames", 0)))
        yield c
        c = CounterMetricFamily("mbms_transport_messages", "peer protocol messages", labels=["node", "direction"])
        c.add_metric([node, "out"], float(transport.get("sent_messages", 0)))
        c.add_metric([node, "in"], float(transport.get("received_messages", 0)))
        yield c
        c = CounterMetricFamily("mbms_transport_dropped", "frames dropped by the transport", labels=["node", "reason"])
        for reason in ("malformed", "incomplete", "foreign", "replayed", "oversized", "duplicate"):
            c.add_metric([node, reason], float(transport.get(reason, 0)))
        yield c
        c = CounterMetricFamily("mbms_peer_rx", "peer messages by the consensus core's verdict", labels=["node", "verdict"])
        for k, v in snap.counters.items():
            if k.startswith("rx_"):
                c.add_metric([node, k[3:]], float(v))
        yield c
        c = CounterMetricFamily("mbms_peer_events", "peer protocol events by kind (granted, aborted, ...)",
                                labels=["node", "kind"])
        for k, v in events.items():
            c.add_metric([node, k], float(v))
        yield c
        for name, (doc, v) in extra.items():
            c = CounterMetricFamily(name, doc, labels=["node"])
            c.add_metric([node], float(v))
            yield c


class MetricsGateway:
    def __init__(self, cfg: MetricsSection, node_id: int) -> None:
        try:
            import prometheus_client
        except ModuleNotFoundError:
            raise EnvironmentProblem("python package 'prometheus-client'", "not installed",
                                     "install the metrics extra: pip install 'mbms[metrics]'") from None
        self.cfg = cfg
        self.node_id = node_id
        self.registry = prometheus_client.CollectorRegistry()
        labels = ["node"]
        self.jitter = prometheus_client.Histogram("mbms_loop_jitter_seconds", "wake-up lateness of a control period",
                                                  labels, buckets=TIME_BUCKETS_S, registry=self.registry).labels(str(node_id))
        self.step = prometheus_client.Histogram("mbms_step_seconds", "logic step time of a control period",
                                                labels, buckets=TIME_BUCKETS_S, registry=self.registry).labels(str(node_id))
        self.work = prometheus_client.Histogram("mbms_period_work_seconds", "whole control period (read, step, "
                                                "command, send, hooks)", labels, buckets=TIME_BUCKETS_S,
                                                registry=self.registry).labels(str(node_id))
        self.registry.register(_SnapshotCollector(self))
        self._lock = threading.Lock()
        self._snap: NodeSnapshot | None = None
        self._transport: dict[str, int] = {}
        self._events: dict[str, int] = {}
        self._extra: dict[str, tuple[str, int]] = {}
        self._seen = 0
        self.server: Any = None
        self.port = cfg.port

    def start(self) -> None:
        import prometheus_client

        with opening(f"metrics endpoint {self.cfg.bind}:{self.cfg.port}"):
            self.server, _thread = prometheus_client.start_http_server(self.cfg.port, addr=self.cfg.bind,
                                                                       registry=self.registry)
        self.port = self.server.server_port
        log.info("metrics on http://%s:%d/metrics", self.cfg.bind, self.port)
        print(f"metrics on http://{self.cfg.bind}:{self.port}/metrics", flush=True)

    def close(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()

    def latest(self) -> tuple[NodeSnapshot | None, dict[str, int], dict[str, int], dict[str, tuple[str, int]]]:
        with self._lock:
            return self._snap, self._transport, self._events, self._extra

    def on_period(self, rt: Any, snap: NodeSnapshot) -> None:
        """Period hook: observe the timing of the periods since the last call; keep the snapshot."""
        t = rt.timing
        n = len(t.jitter_ms)
        for k in range(max(self._seen, t.count - n), t.count):
            i = k % n
            self.jitter.observe(t.jitter_ms[i] / 1000)
            self.step.observe(t.step_ms[i] / 1000)
            if k < t.count - 1:  # the current period's work time is written after the hooks
                self.work.observe(t.work_ms[i] / 1000)
        self._seen = t.count
        transport = rt.transport.stats.as_dict() if rt.transport is not None else {}
        extra = {"mbms_fail_safe_entries": ("times the runtime forced the contactors open", rt.fail_safe_count),
                 "mbms_loop_overruns": ("control periods that woke up later than overrun_ms", t.overruns),
                 "mbms_periods": ("control periods run", rt.periods),
                 "mbms_send_errors": ("peer messages or telemetry that could not be sent", rt.send_errors)}
        with self._lock:
            self._snap, self._transport, self._events, self._extra = snap, transport, dict(rt.peer_event_counts), extra
