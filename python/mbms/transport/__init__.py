"""Peer transports: CAN (python-can) and UDP (msgpack datagrams), and any other installed in the
``mbms.transports`` entry-point group (:mod:`mbms.registry`)."""

from __future__ import annotations

from mbms import registry
from mbms.config_views import SystemConfig
from mbms.transport.base import Transport, TransportStats

__all__ = ["Transport", "TransportStats", "make_transport", "transport_class"]


def transport_class(system: SystemConfig) -> type[Transport]:
    """The registered transport ``transport.kind`` names (ConfigError if none is installed)."""
    cls: type[Transport] = registry.load(registry.TRANSPORTS, system.transport.kind, Transport, "transport.kind",
                                         system.source)
    return cls


def make_transport(system: SystemConfig, node_id: int) -> Transport:
    """The transport the system config names, for node ``node_id`` (0 = listen-only monitor)."""
    transport: Transport = transport_class(system).from_config(system, node_id)  # type: ignore[attr-defined]
    return transport
