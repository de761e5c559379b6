"""Zeroconf (DNS-SD) discovery of the peers of a system.

Each node registers one service of type ``_mbms._udp.local.``, instance name
``<system>-n<id>-<random>`` (the random suffix keeps two processes with the same id from
renaming each other silently: both stay visible, so a duplicate id can be reported). TXT record:

    sys    system id            proto  protocol version (PROTOCOL_VERSION)
    node   node id              ep     transport endpoint (Transport.endpoint)

Membership is configured (brief §3): discovery only finds where configured peers are. It ignores
services of other systems (counted), and reports: a second service with one's own or another
member's node id (duplicate), a peer with another protocol version, a non-member id of one's own
system. A node sees its own registration too; it is filtered by name.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import socket
from collections.abc import Callable
from dataclasses import dataclass, field

import ifaddr
from zeroconf import IPVersion, ServiceStateChange
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from mbms.node.config import SystemConfig

log = logging.getLogger("mbms.discovery")

SERVICE_TYPE = "_mbms._udp.local."
#: The peer protocol version: the consensus wire format's VERSION (consensus/src/wire.rs).
PROTOCOL_VERSION = "1"


@dataclass
class PeerInfo:
    name: str
    node_id: int
    system_id: str
    proto: str
    endpoint: str
    addresses: tuple[str, ...]


@dataclass
class DiscoveryReport:
    peers: dict[int, PeerInfo] = field(default_factory=dict)  # configured members found
    foreign_ignored: set[str] = field(default_factory=set)  # service names of other systems
    duplicates: dict[int, set[str]] = field(default_factory=dict)  # node id -> service names
    version_mismatch: dict[str, str] = field(default_factory=dict)  # service name -> proto
    non_members: dict[str, int] = field(default_factory=dict)  # service name -> node id
    problems: list[str] = field(default_factory=list)


def _own_addresses() -> list[str]:
    out = []
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            if ip.is_IPv4 and not ip.ip.startswith("127."):
                out.append(str(ip.ip))
    return out or ["127.0.0.1"]


class Discovery:
    def __init__(self, system: SystemConfig, node_id: int, endpoint: str, *, port: int = 0,
                 interfaces: tuple[str, ...] | None = None, proto: str = PROTOCOL_VERSION,
                 on_change: Callable[[DiscoveryReport], None] | None = None) -> None:
        self.system = system
        self.node_id = node_id
        self.endpoint = endpoint
        self.port = port
        self.interfaces = tuple(system.discovery.interfaces if interfaces is None else interfaces)
        self.proto = proto
        self.on_change = on_change
        self.name = f"{system.system_id}-n{node_id}-{secrets.token_hex(3)}.{SERVICE_TYPE}"
        self.report = DiscoveryReport()
        self._names: dict[str, PeerInfo] = {}
        self._azc: AsyncZeroconf | None = None
        self._browser: AsyncServiceBrowser | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._changed = asyncio.Event()

    async def start(self) -> None:
        ifaces = list(self.interfaces) if self.interfaces else None
        self._azc = AsyncZeroconf(interfaces=ifaces or "all", ip_version=IPVersion.V4Only)  # type: ignore[arg-type]
        addrs = list(self.interfaces) if self.interfaces else _own_addresses()
        info = AsyncServiceInfo(
            SERVICE_TYPE, self.name, port=self.port, parsed_addresses=addrs, server=f"mbms-{socket.gethostname()}-{self.name.split('.')[0]}.local.",
            properties={"sys": self.system.system_id, "node": str(self.node_id), "proto": self.proto, "ep": self.endpoint},
        )
        self._browser = AsyncServiceBrowser(self._azc.zeroconf, [SERVICE_TYPE], handlers=[self._on_state])
        await self._azc.async_register_service(info)
        log.info("registered %s (endpoint %s)", self.name, self.endpoint)

    def _on_state(self, zeroconf: object, service_type: str, name: str, state_change: ServiceStateChange) -> None:
        if name == self.name:
            return
        if state_change is ServiceStateChange.Removed:
            self._forget(name)
            return
        task = asyncio.ensure_future(self._resolve(name))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _resolve(self, name: str) -> None:
        assert self._azc is not None
        info = AsyncServiceInfo(SERVICE_TYPE, name)
        if not await info.async_request(self._azc.zeroconf, 3000):
            log.debug("could not resolve %s", name)
            return
        props = {k.decode(): (v.decode() if v is not None else "") for k, v in info.properties.items()}
        rep = self.report
        sysid = props.get("sys", "")
        if sysid != self.system.system_id:
            rep.foreign_ignored.add(name)
            self._notify()
            return
        try:
            node = int(props.get("node", ""))
        except ValueError:
            rep.problems.append(f"{name}: TXT node is not an integer: {props.get('node')!r}")
            self._notify()
            return
        proto = props.get("proto", "")
        if proto != self.proto:
            rep.version_mismatch[name] = proto
            msg = f"peer {name} (node {node}) speaks protocol {proto!r}, this node {self.proto!r}"
            rep.problems.append(msg)
            log.error(msg)
            self._notify()
            return
        if node not in self.system.members:
            rep.non_members[name] = node
            msg = f"{name} claims node id {node}, not a configured member {list(self.system.members)}"
            rep.problems.append(msg)
            log.error(msg)
            self._notify()
            return
        peer = PeerInfo(name, node, sysid, proto, props.get("ep", ""), tuple(info.parsed_addresses()))
        self._names[name] = peer
        holders = {n for n, p in self._names.items() if p.node_id == node}
        if node == self.node_id:
            holders.add(self.name)
        if len(holders) > 1:
            rep.duplicates[node] = holders
            msg = f"duplicate node id {node}: {sorted(holders)}"
            rep.problems.append(msg)
            log.error(msg)
        if node != self.node_id:
            rep.peers[node] = peer
        self._notify()

    def _forget(self, name: str) -> None:
        peer = self._names.pop(name, None)
        if peer is not None and self.report.peers.get(peer.node_id) is peer:
            del self.report.peers[peer.node_id]
        self._notify()

    def _notify(self) -> None:
        self._changed.set()
        if self.on_change is not None:
            self.on_change(self.report)

    async def wait_until(self, predicate: Callable[[DiscoveryReport], bool], timeout_s: float) -> bool:
        """Wait until ``predicate(report)`` holds (True) or the deadline passes (False)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while not predicate(self.report):
            left = deadline - loop.time()
            if left <= 0:
                return False
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), timeout=left)
            except asyncio.TimeoutError:
                return predicate(self.report)
        return True

    async def close(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        if self._browser is not None:
            await self._browser.async_cancel()
        if self._azc is not None:
            await self._azc.async_unregister_all_services()
            await self._azc.async_close()
