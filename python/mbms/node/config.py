"""Configuration of one node (``node`` and ``hardware`` tables of a pack file) and of the system.

A pack file (``hw/packs/*.toml``) has the top-level tables

* ``pack``, ``estimator``, ``protection``, ``limits``, ``balancing``: the engine's ``PackConfig``,
  parsed and validated by the engine (not here);
* ``node``: identity, state directory, loop periods, logging (:class:`NodeSection`);
* ``hardware``: which measurement/actuator adapter the node uses (:class:`HardwareSection`).

Any other top-level key is an error: a misspelled table would otherwise be silently ignored.

A system file (``hw/systems/*.toml``) is shared by all peers (:class:`SystemConfig`): the system id,
the configured membership (quorum is derived from it, never from who happens to be visible, brief
§3), the peer transport, the protocol timing and discovery.

Every check raises :class:`mbms.errors.ConfigError` naming the file, the dotted field and what was
expected.
"""

from __future__ import annotations

import ipaddress
import os
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomllib  # standard library from Python 3.11, the floor (pyproject requires-python)

from mbms.consensus import ConsensusConfig
from mbms.errors import ConfigError

#: Tables of a pack file that belong to the engine's PackConfig (parsed by the engine).
ENGINE_TABLES: frozenset[str] = frozenset({"pack", "estimator", "protection", "limits", "balancing"})
#: Tables of a pack file owned by the node runtime (parsed here).
NODE_TABLES: frozenset[str] = frozenset({"node", "hardware"})

#: Node ids are 1..MAX_NODE_ID: the CAN identifiers of the DBC (hw/dbc/mbms.dbc) reserve one
#: identifier per node and telemetry kind in 6-bit slots (mbms.telemetry); the peer protocol's
#: segmentation allows 64 senders (consensus/src/segment.rs).
MAX_NODE_ID = 63

LOG_FORMATS = ("human", "json")
ADAPTERS = ("sim",)
TRANSPORT_KINDS = ("can", "udp")


# ----------------------------------------------------------------------------------------------
# small typed readers: each names file + field + expectation
# ----------------------------------------------------------------------------------------------


class _Table:
    """A TOML table with the dotted path it came from, for error messages."""

    def __init__(self, data: dict[str, Any], path: str, source: str | None) -> None:
        self.data = data
        self.path = path
        self.source = source
        self.used: set[str] = set()

    def _name(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def err(self, key: str, message: str) -> ConfigError:
        return ConfigError(self._name(key), message, self.source)

    def has(self, key: str) -> bool:
        return key in self.data

    def raw(self, key: str, default: Any = ...) -> Any:
        self.used.add(key)
        if key not in self.data:
            if default is ...:
                raise self.err(key, "missing; this field is required")
            return default
        return self.data[key]

    def int(self, key: str, default: Any = ..., lo: int | None = None, hi: int | None = None) -> int:
        v = self.raw(key, default)
        if isinstance(v, bool) or not isinstance(v, int):
            raise self.err(key, f"expected an integer, got {v!r}")
        if lo is not None and v < lo:
            raise self.err(key, f"expected an integer >= {lo}, got {v}")
        if hi is not None and v > hi:
            raise self.err(key, f"expected an integer <= {hi}, got {v}")
        return v

    def float(self, key: str, default: Any = ..., lo: float | None = None, hi: float | None = None,
              lo_open: bool = False) -> float:
        v = self.raw(key, default)
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise self.err(key, f"expected a number, got {v!r}")
        v = float(v)
        if v != v:
            raise self.err(key, "expected a number, got NaN")
        if lo is not None and (v <= lo if lo_open else v < lo):
            raise self.err(key, f"expected a number {'>' if lo_open else '>='} {lo}, got {v}")
        if hi is not None and v > hi:
            raise self.err(key, f"expected a number <= {hi}, got {v}")
        return v

    def bool(self, key: str, default: Any = ...) -> bool:
        v = self.raw(key, default)
        if not isinstance(v, bool):
            raise self.err(key, f"expected true or false, got {v!r}")
        return v

    def str(self, key: str, default: Any = ..., choices: tuple[str, ...] | None = None) -> str:
        v = self.raw(key, default)
        if not isinstance(v, str) or not v:
            raise self.err(key, f"expected a non-empty string, got {v!r}")
        if choices is not None and v not in choices:
            raise self.err(key, f"expected one of {list(choices)}, got {v!r}")
        return v

    def table(self, key: str, required: bool = True) -> _Table | None:
        self.used.add(key)
        if key not in self.data:
            if required:
                raise self.err(key, "missing; this table is required")
            return None
        v = self.data[key]
        if not isinstance(v, dict):
            raise self.err(key, f"expected a table, got {v!r}")
        return _Table(v, self._name(key), self.source)

    def reject_unknown(self) -> None:
        unknown = sorted(set(self.data) - self.used)
        if unknown:
            raise self.err(unknown[0], f"unknown field; expected only {sorted(self.used)}")


def _load_toml(path: str | os.PathLike[str]) -> tuple[dict[str, Any], str]:
    p = Path(path)
    source = str(p)
    try:
        text = p.read_text()
    except OSError as exc:
        raise ConfigError("(file)", f"cannot read: {exc.strerror or exc}", source) from None
    try:
        return tomllib.loads(text), source
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("(file)", f"not valid TOML: {exc}", source) from None


def _host_port(t: _Table, key: str, value: Any) -> tuple[str, int]:
    """Parse ``"host:port"`` (IPv4 or ``[v6]:port``)."""
    if not isinstance(value, str) or ":" not in value:
        raise t.err(key, f"expected \"host:port\", got {value!r}")
    host, _, port_s = value.rpartition(":")
    host = host.strip("[]")
    try:
        ipaddress.ip_address(host)
        port = int(port_s)
    except ValueError:
        raise t.err(key, f"expected \"ip:port\" with a numeric IP address, got {value!r}") from None
    if not 1 <= port <= 65535:
        raise t.err(key, f"expected a port 1..65535, got {port}")
    return host, port


# ----------------------------------------------------------------------------------------------
# pack file: node + hardware
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NodeSection:
    """``[node]`` of a pack file."""

    id: int
    #: Directory of the persisted engine state and of the event log (created if missing).
    state_dir: Path
    #: Period of the runtime loop: measure -> protection + control step -> command.
    control_period_ms: int = 100
    #: Period of the state estimator inside the logic; a whole multiple of the control period.
    estimation_period_ms: int = 100
    #: Period of the CAN/UDP telemetry frames (hw/dbc/mbms.dbc).
    telemetry_period_ms: int = 100
    #: How often the engine state is written to disk (0 = every control period).
    state_save_ms: int = 1000
    #: A measurement older than this is stale: fail-safe (contactors forced open).
    stale_ms: int = 500
    #: A loop iteration starting later than this after its schedule is an overrun: fail-safe.
    overrun_ms: int = 250
    log_format: str = "human"
    log_level: str = "info"


@dataclass(frozen=True)
class HardwareSection:
    """``[hardware]`` of a pack file. Only the simulated plant adapter exists so far."""

    adapter: str
    #: Plant link endpoint (adapter "sim"): "udp://127.0.0.1:PORT" or "unix:///path/to.sock".
    link: str = ""
    #: Index of this pack's string in the plant (adapter "sim").
    string: int = 0
    #: No reply from the plant for this long = lost link: fail-safe.
    link_timeout_ms: int = 300


@dataclass(frozen=True)
class PackFile:
    """A parsed pack file: the node's own tables plus the engine tables as raw data."""

    source: str
    node: NodeSection
    hardware: HardwareSection
    #: The engine's tables (pack, estimator, ...), unparsed; the engine validates them.
    engine: dict[str, Any] = field(default_factory=dict)
    #: The whole file text, for the engine's own TOML parser.
    text: str = ""


def parse_link(link: str, source: str | None = None, name: str = "hardware.link") -> tuple[str, Any]:
    """Parse a plant link endpoint: ``("udp", (host, port))`` or ``("unix", path)``."""
    if link.startswith("udp://"):
        t = _Table({}, "", source)
        host, port = _host_port(t, name, link[len("udp://"):])
        return "udp", (host, port)
    if link.startswith("unix://"):
        path = link[len("unix://"):]
        if not path.startswith("/"):
            raise ConfigError(name, f"expected an absolute socket path after unix://, got {link!r}", source)
        return "unix", path
    raise ConfigError(name, f"expected \"udp://IP:PORT\" or \"unix:///PATH\", got {link!r}", source)


def load_pack(path: str | os.PathLike[str]) -> PackFile:
    data, source = _load_toml(path)
    top = _Table(data, "", source)
    unknown = sorted(set(data) - ENGINE_TABLES - NODE_TABLES)
    if unknown:
        raise top.err(unknown[0], f"unknown top-level table; expected only {sorted(ENGINE_TABLES | NODE_TABLES)}")
    n = top.table("node")
    assert n is not None
    base = Path(source).parent
    node = NodeSection(
        id=n.int("id", lo=1, hi=MAX_NODE_ID),
        state_dir=(base / Path(os.path.expanduser(n.str("state_dir")))).resolve(),
        control_period_ms=n.int("control_period_ms", 100, lo=1, hi=10_000),
        estimation_period_ms=n.int("estimation_period_ms", 100, lo=1, hi=60_000),
        telemetry_period_ms=n.int("telemetry_period_ms", 100, lo=10, hi=60_000),
        state_save_ms=n.int("state_save_ms", 1000, lo=0, hi=3_600_000),
        stale_ms=n.int("stale_ms", 500, lo=1, hi=60_000),
        overrun_ms=n.int("overrun_ms", 250, lo=1, hi=60_000),
        log_format=n.str("log_format", "human", choices=LOG_FORMATS),
        log_level=n.str("log_level", "info", choices=("debug", "info", "warning", "error")),
    )
    n.reject_unknown()
    if node.estimation_period_ms % node.control_period_ms:
        raise n.err("estimation_period_ms",
                    f"expected a whole multiple of control_period_ms={node.control_period_ms}, "
                    f"got {node.estimation_period_ms}")
    if node.stale_ms < node.control_period_ms:
        raise n.err("stale_ms", f"expected >= control_period_ms={node.control_period_ms}, got {node.stale_ms}")
    h = top.table("hardware")
    assert h is not None
    adapter = h.str("adapter", choices=ADAPTERS)
    hw = HardwareSection(
        adapter=adapter,
        link=h.str("link"),
        string=h.int("string", 0, lo=0, hi=255),
        link_timeout_ms=h.int("link_timeout_ms", 300, lo=1, hi=60_000),
    )
    h.reject_unknown()
    parse_link(hw.link, source)
    engine = {k: v for k, v in data.items() if k in ENGINE_TABLES}
    return PackFile(source=source, node=node, hardware=hw, engine=engine, text=Path(source).read_text())


# ----------------------------------------------------------------------------------------------
# system file
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CanTransport:
    """``[transport.can]``: a python-can bus. ``interface`` is python-can's interface name:
    ``socketcan`` on controllers, ``udp_multicast`` between processes on one host, ``virtual``
    within one process."""

    interface: str = "socketcan"
    channel: str = "can0"
    #: Only for udp_multicast: the UDP port (python-can's default is 43113).
    port: int = 43113
    bitrate: int = 500_000
    fd: bool = False


@dataclass(frozen=True)
class UdpTransport:
    """``[transport.udp]``: one msgpack datagram per message, to a multicast group or peer list."""

    port: int = 47100
    #: Multicast group (IPv4). Ignored if ``peers`` is given.
    group: str = "239.255.77.1"
    #: Address of the interface to join the group on / send from ("0.0.0.0" = default route).
    interface: str = "0.0.0.0"
    #: Unicast alternative: ["ip:port", ...] of all members (own entry is skipped by bind match).
    peers: tuple[tuple[str, int], ...] = ()
    #: Address to bind for receiving ("0.0.0.0" for multicast; own ip for unicast).
    bind: str = "0.0.0.0"
    ttl: int = 1


@dataclass(frozen=True)
class TransportSection:
    kind: str
    can: CanTransport | None = None
    udp: UdpTransport | None = None


@dataclass(frozen=True)
class DiscoverySection:
    enabled: bool = True
    #: Interfaces (IP addresses) zeroconf uses; empty = all.
    interfaces: tuple[str, ...] = ()


# One source for the consensus defaults: mbms.consensus.ConsensusConfig (which mirrors
# consensus/src/config.rs PeerConfig::default).
_PEER_DEFAULTS = ConsensusConfig()


@dataclass(frozen=True)
class ProtocolSection:
    """``[protocol]``: the consensus core's timing/physics parameters (consensus/src/config.rs
    ``PeerConfig``; defaults are its defaults, reasons there). All times in ms of each peer's clock."""

    max_drift_ppm: int = _PEER_DEFAULTS.max_drift_ppm
    dwell_ms: int = _PEER_DEFAULTS.dwell_ms
    precharge_settle_a: float = _PEER_DEFAULTS.precharge_settle_a
    precharge_timeout_ms: int = _PEER_DEFAULTS.precharge_timeout_ms
    close_confirm_ms: int = _PEER_DEFAULTS.close_confirm_ms
    fail_timeout_ms: int = _PEER_DEFAULTS.fail_timeout_ms
    grant_wait_ms: int = _PEER_DEFAULTS.grant_wait_ms
    listen_periods: int = _PEER_DEFAULTS.listen_periods
    bus_live_v: float = _PEER_DEFAULTS.bus_live_v
    dcdc: bool = _PEER_DEFAULTS.dcdc
    dcdc_soc_gain: float = _PEER_DEFAULTS.dcdc_soc_gain
    # S3 close verification (issue 11): contactor operate time, fresh-sample deadline, steady bus
    main_close_time_ms: int = _PEER_DEFAULTS.main_close_time_ms
    verify_timeout_ms: int = _PEER_DEFAULTS.verify_timeout_ms
    max_bus_slew_v_per_s: float = _PEER_DEFAULTS.max_bus_slew_v_per_s


@dataclass(frozen=True)
class SystemConfig:
    source: str
    system_id: str
    members: tuple[int, ...]
    transport: TransportSection
    heartbeat_ms: int = 100
    #: |V_bus - V_string| bound before a main contactor may close (brief S3; foxBMS uses 3 V).
    dv_close_v: float = 3.0
    #: Duration of a close grant (brief S2), by each peer's own clock.
    lease_ms: int = 2000
    discovery: DiscoverySection = field(default_factory=DiscoverySection)
    protocol: ProtocolSection = field(default_factory=ProtocolSection)

    @property
    def system_id_u32(self) -> int:
        """The 32-bit system id of the peer messages (consensus wire): CRC-32 of ``system_id``."""
        return zlib.crc32(self.system_id.encode())

    @property
    def quorum(self) -> int:
        """floor(N/2) + 1 of the configured N (brief §3), never of the visible peers."""
        return len(self.members) // 2 + 1


def load_system(path: str | os.PathLike[str]) -> SystemConfig:
    data, source = _load_toml(path)
    top = _Table(data, "", source)
    system_id = top.str("system_id")
    if not all(c.isalnum() or c in "-_." for c in system_id) or len(system_id) > 40:
        raise top.err("system_id", f"expected up to 40 letters, digits, '-', '_' or '.', got {system_id!r}")
    members_raw = top.raw("members")
    if not isinstance(members_raw, list) or not members_raw:
        raise top.err("members", f"expected a non-empty list of node ids, got {members_raw!r}")
    members: list[int] = []
    for i, m in enumerate(members_raw):
        if isinstance(m, bool) or not isinstance(m, int) or not 1 <= m <= MAX_NODE_ID:
            raise top.err(f"members[{i}]", f"expected a node id 1..{MAX_NODE_ID}, got {m!r}")
        if m in members:
            raise top.err(f"members[{i}]", f"expected unique node ids, {m} appears twice")
        members.append(m)
    heartbeat_ms = top.int("heartbeat_ms", 100, lo=1, hi=60_000)
    dv_close_v = top.float("dv_close_v", 3.0, lo=0.0, lo_open=True, hi=100.0)
    lease_ms = top.int("lease_ms", 2000, lo=1, hi=600_000)
    if lease_ms <= heartbeat_ms:
        raise top.err("lease_ms", f"expected more than heartbeat_ms={heartbeat_ms}, got {lease_ms}")

    t = top.table("transport")
    assert t is not None
    kind = t.str("kind", choices=TRANSPORT_KINDS)
    can_cfg: CanTransport | None = None
    udp_cfg: UdpTransport | None = None
    if kind == "can":
        c = t.table("can")
        assert c is not None
        can_cfg = CanTransport(
            interface=c.str("interface", "socketcan"),
            channel=c.str("channel", "can0"),
            port=c.int("port", 43113, lo=1, hi=65535),
            bitrate=c.int("bitrate", 500_000, lo=10_000, hi=8_000_000),
            fd=c.bool("fd", False),
        )
        c.reject_unknown()
    else:
        u = t.table("udp")
        assert u is not None
        peers_raw = u.raw("peers", [])
        if not isinstance(peers_raw, list):
            raise u.err("peers", f"expected a list of \"ip:port\" strings, got {peers_raw!r}")
        peers = tuple(_host_port(u, f"peers[{i}]", p) for i, p in enumerate(peers_raw))
        group = u.str("group", "239.255.77.1")
        try:
            if not ipaddress.IPv4Address(group).is_multicast:
                raise ValueError
        except ValueError:
            raise u.err("group", f"expected an IPv4 multicast address (224.0.0.0/4), got {group!r}") from None
        iface = u.str("interface", "0.0.0.0")
        bind = u.str("bind", "0.0.0.0")
        for key, val in (("interface", iface), ("bind", bind)):
            try:
                ipaddress.IPv4Address(val)
            except ValueError:
                raise u.err(key, f"expected an IPv4 address, got {val!r}") from None
        if peers and len(peers) != len(members):
            raise u.err("peers", f"expected one \"ip:port\" per member ({len(members)}, in the order of "
                        f"members), got {len(peers)}")
        udp_cfg = UdpTransport(
            port=u.int("port", 47100, lo=1, hi=65535), group=group, interface=iface, peers=peers,
            bind=bind, ttl=u.int("ttl", 1, lo=1, hi=255),
        )
        u.reject_unknown()
    t.reject_unknown()

    d = top.table("discovery", required=False)
    disc = DiscoverySection()
    if d is not None:
        ifaces = d.raw("interfaces", [])
        if not isinstance(ifaces, list) or not all(isinstance(x, str) for x in ifaces):
            raise d.err("interfaces", f"expected a list of IP address strings, got {ifaces!r}")
        for i, x in enumerate(ifaces):
            try:
                ipaddress.ip_address(x)
            except ValueError:
                raise d.err(f"interfaces[{i}]", f"expected an IP address, got {x!r}") from None
        disc = DiscoverySection(enabled=d.bool("enabled", True), interfaces=tuple(ifaces))
        d.reject_unknown()
    proto = ProtocolSection()
    pt = top.table("protocol", required=False)
    if pt is not None:
        d0 = ProtocolSection()
        proto = ProtocolSection(
            max_drift_ppm=pt.int("max_drift_ppm", d0.max_drift_ppm, lo=0, hi=100_000),
            dwell_ms=pt.int("dwell_ms", d0.dwell_ms, lo=0, hi=60_000),
            precharge_settle_a=pt.float("precharge_settle_a", d0.precharge_settle_a, lo=0.0, lo_open=True),
            precharge_timeout_ms=pt.int("precharge_timeout_ms", d0.precharge_timeout_ms, lo=1, hi=600_000),
            close_confirm_ms=pt.int("close_confirm_ms", d0.close_confirm_ms, lo=1, hi=60_000),
            fail_timeout_ms=pt.int("fail_timeout_ms", d0.fail_timeout_ms, lo=1, hi=600_000),
            grant_wait_ms=pt.int("grant_wait_ms", d0.grant_wait_ms, lo=1, hi=600_000),
            listen_periods=pt.int("listen_periods", d0.listen_periods, lo=0, hi=1000),
            bus_live_v=pt.float("bus_live_v", d0.bus_live_v, lo=0.0),
            dcdc=pt.bool("dcdc", d0.dcdc),
            dcdc_soc_gain=pt.float("dcdc_soc_gain", d0.dcdc_soc_gain, lo=0.0),
            main_close_time_ms=pt.int("main_close_time_ms", d0.main_close_time_ms, lo=0, hi=1000),
            verify_timeout_ms=pt.int("verify_timeout_ms", d0.verify_timeout_ms, lo=1, hi=10_000),
            max_bus_slew_v_per_s=pt.float("max_bus_slew_v_per_s", d0.max_bus_slew_v_per_s, lo=0.0, lo_open=True,
                                          hi=10_000.0),
        )
        pt.reject_unknown()
        if proto.fail_timeout_ms <= heartbeat_ms:
            raise pt.err("fail_timeout_ms", f"expected more than heartbeat_ms={heartbeat_ms}, got {proto.fail_timeout_ms}")
    top.reject_unknown()
    return SystemConfig(
        source=source, system_id=system_id, members=tuple(members), transport=TransportSection(kind, can_cfg, udp_cfg),
        heartbeat_ms=heartbeat_ms, dv_close_v=dv_close_v, lease_ms=lease_ms, discovery=disc, protocol=proto,
    )


def check_membership(pack: PackFile, system: SystemConfig) -> None:
    """The node's id must be a configured member of the system, and the protocol's timing must
    fit the node's loop."""
    if pack.node.id not in system.members:
        raise ConfigError("node.id", f"expected one of the system's members {list(system.members)} "
                          f"({system.source}), got {pack.node.id}", pack.source)
    # A close command acts at the end of a period; the contactor's feedback reaches the logic
    # with the sample of the period after the next (command -> sample -> step), so a close can
    # be confirmed no sooner than two periods after it was commanded.
    need = 2 * pack.node.control_period_ms
    if system.protocol.close_confirm_ms <= need:
        raise ConfigError("protocol.close_confirm_ms", f"expected more than 2 x control_period_ms of "
                          f"{pack.source} = {need} ms (feedback arrives two periods after a command), "
                          f"got {system.protocol.close_confirm_ms}", system.source)
