"""Gateways: the battery to the systems above it. The inverter CAN and SunSpec Modbus TCP
(:mod:`mbms.gateways.inverter_can`, :mod:`mbms.gateways.sunspec`), and the node's links to its
operators (issue 13): MQTT, Prometheus metrics, UDS diagnostics and
systemd supervision, each configured in the pack file's ``[operator]`` table and fed by the
runtime's period hook and event sink (:class:`mbms.node.runtime.NodeRuntime`). The web page is
the monitor's (:mod:`mbms.gateways.web`), listen-only, not a node's.

:func:`attach` builds what the config asks for; every part imports its library only when used,
so a node without ``[operator.mqtt]`` needs no MQTT client installed.
"""

from __future__ import annotations

import logging
from typing import Any

from mbms.config_views import PackFile, SystemConfig

log = logging.getLogger("mbms.gateways")


class Gateways:
    """The operator gateways of one node; :meth:`close` stops them all."""

    def __init__(self) -> None:
        self.mqtt: Any = None
        self.metrics: Any = None
        self.uds: Any = None
        self.notifier: Any = None
        self._snap: Any = None

    def close(self) -> None:
        for part in (self.uds, self.mqtt, self.metrics, self.notifier):
            if part is not None:
                try:
                    part.close()
                except Exception:
                    log.exception("closing %s failed", type(part).__name__)


def attach(rt: Any, pack: PackFile, system: SystemConfig) -> Gateways:
    """Build the gateways ``pack.operator`` configures and hook them into the runtime ``rt``."""
    import mbms
    from mbms.gateways.snapshot import take
    from mbms.gateways.systemd import Notifier

    gw = Gateways()
    op = pack.operator
    gw.notifier = Notifier()
    if gw.notifier.enabled:
        rt.period_hooks.append(gw.notifier.on_period)
    if op is None:
        return gw
    cache: dict[str, Any] = {}

    def snapshot() -> Any:  # one snapshot per period, shared by the gateways that want one
        if cache.get("period") != rt.periods:
            cache["period"], cache["snap"] = rt.periods, take(rt)
        return cache["snap"]

    try:
        if op.metrics is not None:
            from mbms.gateways.metrics import MetricsGateway

            gw.metrics = MetricsGateway(op.metrics, pack.node.id)
            gw.metrics.start()
            m = gw.metrics
            rt.period_hooks.append(lambda r, now: m.on_period(r, snapshot()))
        if op.mqtt is not None:
            from mbms.gateways.mqtt import MqttGateway

            gw.mqtt = MqttGateway(op.mqtt, system.system_id, pack.node.id, pack.source, mbms.__version__,
                                  members=system.members)
            gw.mqtt.start()
            q = gw.mqtt
            rt.period_hooks.append(lambda r, now: q.on_period(snapshot, now))
            rt.event_sinks.append(q.on_event)
        if op.uds is not None:
            from mbms.gateways.uds import UdsServer

            gw.uds = UdsServer(op.uds, rt, pack.node.id, mbms.__version__)
            gw.uds.start()
            u = gw.uds
            rt.period_hooks.append(lambda r, now: u.on_period(snapshot(), now))
    except BaseException:
        gw.close()
        raise
    return gw
