"""Zeroconf (DNS-SD) discovery of the peers of a system.

Each node registers one service of type ``_mbms._udp.local.``, instance name
``<system>-n<id>-<random>`` (the random suffix keeps two processes with the same id from
renaming each other silently: both stay visible). TXT record:

    sys    system id            proto  protocol version (PROTOCOL_VERSION)
    node   node id              ep     transport endpoint (Transport.endpoint)
    boot   boot stamp: the node's start time, ms since the epoch (one run of a node)
    inc    incarnation: the boot nonce the node's peer messages carry (consensus wire)

Membership is configured (brief §3): discovery only finds where configured peers are. It ignores
services of other systems (counted), and reports a peer with another protocol version and a
non-member id of one's own system. A node sees its own registration too; it is filtered by name.

Restart or duplicate? A node killed with -9 cannot withdraw its record: zeroconf keeps it for its
TTL (minutes), so after a restart two records carry the same id. Zeroconf cannot say whether the
holder of a cached record is alive, so discovery does not call that a duplicate: of several records
with one id the one with the newest boot stamp is the peer, older ones are superseded (a restart,
logged once at info). The one case discovery can decide alone is its own id with a boot stamp
newer than its own start: no earlier run of this node can have made it, so a second live node has
this id (``duplicates``, logged as an error). Every other duplicate is decided by the peer protocol
on the messages themselves: two incarnations of one id that both keep speaking (consensus
``DuplicateId``, logged by the runtime), which blocks that id only.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import overload

import ifaddr
from zeroconf import InterfaceChoice, IPVersion, ServiceStateChange
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from mbms.config_views import SystemConfig

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
    boot_ms: int = 0  # boot stamp (0: the record has none)
    incarnation: int | None = None


@dataclass
class DiscoveryReport:
    peers: dict[int, PeerInfo] = field(default_factory=dict)  # configured members found (newest boot)
    foreign_ignored: set[str] = field(default_factory=set)  # service names of other systems
    duplicates: dict[int, set[str]] = field(default_factory=dict)  # node id -> service names (live)
    superseded: dict[str, str] = field(default_factory=dict)  # lingering record -> record of the newer run
    version_mismatch: dict[str, str] = field(default_factory=dict)  # service name -> proto
    non_members: dict[str, int] = field(default_factory=dict)  # service name -> node id
    problems: list[str] = field(default_factory=list)


@overload
def _int_or(text: str | None, default: int) -> int: ...
@overload
def _int_or(text: str | None, default: None) -> int | None: ...
def _int_or(text: str | None, default: int | None) -> int | None:
    try:
        return int(text) if text else default
    except ValueError:
        return default


def _own_addresses() -> list[str]:
    out = []
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            # ifaddr gives an IPv4 address as a str, an IPv6 one as (address, flowinfo, scope_id)
            if isinstance(ip.ip, str) and not ip.ip.startswith("127."):
                out.append(str(ip.ip))
    return out or ["127.0.0.1"]


def zeroconf_interfaces(interfaces: tuple[str, ...]) -> list[str] | InterfaceChoice:
    """The system file's ``[discovery] interfaces`` as zeroconf takes them: a list of addresses,
    or ``InterfaceChoice.All`` for the documented "[] = all" (zeroconf accepts only a list or an
    ``InterfaceChoice``; a string such as "all" is a TypeError at start)."""
    return list(interfaces) if interfaces else InterfaceChoice.All


class Discovery:
    def __init__(self, system: SystemConfig, node_id: int, endpoint: str, *, port: int = 0,
                 interfaces: tuple[str, ...] | None = None, proto: str = PROTOCOL_VERSION,
                 on_change: Callable[[DiscoveryReport], None] | None = None,
                 boot_ms: int | None = None, incarnation: int | None = None) -> None:
        self.system = system
        self.node_id = node_id
        self.endpoint = endpoint
        #: This run's boot stamp (the runtime's start time; now if not given).
        self.boot_ms = time.time_ns() // 1_000_000 if boot_ms is None else boot_ms
        self.incarnation = incarnation
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
        self._azc = AsyncZeroconf(interfaces=zeroconf_interfaces(self.interfaces), ip_version=IPVersion.V4Only)
        addrs = list(self.interfaces) if self.interfaces else _own_addresses()
        info = AsyncServiceInfo(
            SERVICE_TYPE, self.name, port=self.port, parsed_addresses=addrs, server=f"mbms-{socket.gethostname()}-{self.name.split('.')[0]}.local.",
            properties=self._txt(),
        )
        self._browser = AsyncServiceBrowser(self._azc.zeroconf, [SERVICE_TYPE], handlers=[self._on_state])
        await self._azc.async_register_service(info)
        log.info("registered %s (endpoint %s)", self.name, self.endpoint)

    def _txt(self) -> dict[str, str]:
        txt = {"sys": self.system.system_id, "node": str(self.node_id), "proto": self.proto, "ep": self.endpoint,
               "boot": str(self.boot_ms)}
        if self.incarnation is not None:
            txt["inc"] = str(self.incarnation)
        return txt

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
        boot_ms = _int_or(props.get("boot"), 0)
        inc = _int_or(props.get("inc"), None)
        peer = PeerInfo(name, node, sysid, proto, props.get("ep", ""), tuple(info.parsed_addresses()), boot_ms, inc)
        self._names[name] = peer
        if node == self.node_id:
            self._own_id_record(peer)
        else:
            self._elect(node)
        self._notify()

    def _own_id_record(self, peer: PeerInfo) -> None:
        """Another record with this node's id: a newer boot stamp is a second live node (no
        earlier run of this node made it); an older one is this node's previous run, lingering."""
        rep = self.report
        if peer.boot_ms > self.boot_ms:
            holders = rep.duplicates.setdefault(self.node_id, {self.name})
            if peer.name not in holders:
                holders.add(peer.name)
                msg = (f"duplicate node id {self.node_id}: {peer.name} started at unix ms {peer.boot_ms}, "
                       f"after this node ({self.name}, {self.boot_ms})")
                rep.problems.append(msg)
                log.error(msg)
        elif peer.name not in rep.superseded:
            rep.superseded[peer.name] = self.name
            log.info("record %s (boot %d) is this node's previous run, lingering in zeroconf caches: ignored",
                     peer.name, peer.boot_ms)

    def _elect(self, node: int) -> None:
        """Of the records with id ``node``, the newest boot stamp is the peer; older ones are
        superseded (a restart: the killed run's record lingers until its TTL ends)."""
        rep = self.report
        records = [p for p in self._names.values() if p.node_id == node]
        if not records:
            rep.peers.pop(node, None)
            return
        newest = max(records, key=lambda p: (p.boot_ms, p.name))
        rep.peers[node] = newest
        for p in records:
            if p is not newest and rep.superseded.get(p.name) != newest.name:
                rep.superseded[p.name] = newest.name
                log.info("node %d restarted: record %s (boot %d) superseded by %s (boot %d)",
                         node, p.name, p.boot_ms, newest.name, newest.boot_ms)

    def _forget(self, name: str) -> None:
        peer = self._names.pop(name, None)
        self.report.superseded.pop(name, None)
        if peer is not None and peer.node_id != self.node_id:
            self._elect(peer.node_id)
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
