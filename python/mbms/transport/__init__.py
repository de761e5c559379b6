"""Peer transports: CAN (python-can) and UDP (msgpack datagrams)."""

from __future__ import annotations

from mbms.node.config import SystemConfig
from mbms.transport.base import Transport, TransportStats

__all__ = ["Transport", "TransportStats", "make_transport"]


def make_transport(system: SystemConfig, node_id: int) -> Transport:
    """The transport the system config names, for node ``node_id`` (0 = listen-only monitor)."""
    if system.transport.kind == "can":
        from mbms.transport.can import CanTransport

        assert system.transport.can is not None
        return CanTransport(system.transport.can, node_id, system.members)
    from mbms.transport.udp import UdpTransport

    assert system.transport.udp is not None
    return UdpTransport(system.transport.udp, node_id, system.members, system.system_id)
