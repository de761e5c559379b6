"""Configuration of one node (pack file) and of the system (system file): read-only views.

A pack file (``packs/*.toml``, schema ``schemas/pack.json``) has the engine's tables ``pack``,
``estimator``, ``protection``, ``limits``, ``balancing`` (usually through ``extends =
"example_pack.toml"``, so they are written once), and the node's own ``node`` and ``hardware``.
A system file (``systems/*.toml``, schema ``schemas/system.json``) is shared by all peers: the
system id, the configured membership (quorum is derived from it, never from who happens to be
visible, brief §3), the peer protocol (consensus ``PeerConfig``), the transport and discovery.

Everything is parsed, defaulted and checked in Rust (``rust_core/src/config.rs``): the same
:func:`load_node` runs for a real start and for ``mbms node --check``; a start refuses the first
error finding, the check lists them all. The dataclasses here carry the normalised values and
never restate a default. Every problem is a :class:`mbms.errors.ConfigError` naming the file,
the dotted field and what was expected.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mbms import _core, registry
from mbms.config import Finding, read_layers, read_text, resolve_cell, view
from mbms.consensus import ConsensusConfig
from mbms.errors import ConfigError

#: Tables of a pack file that belong to the engine's PackConfig.
ENGINE_TABLES: frozenset[str] = frozenset({"pack", "estimator", "protection", "limits", "balancing"})
#: Tables of a pack file owned by the node runtime.
NODE_TABLES: frozenset[str] = frozenset({"node", "hardware", "operator"})

#: Node ids are 1..MAX_NODE_ID (rust_core/src/node.rs: the DBC reserves 6-bit node slots).
MAX_NODE_ID = 63


# ----------------------------------------------------------------------------------------------
# pack file: node + hardware
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NodeSection:
    """``[node]`` of a pack file (rust_core/src/node.rs ``NodeConfig``)."""

    id: int
    #: Directory of the persisted engine state and of the event log (created if missing).
    state_dir: Path
    #: Period of the runtime loop: measure -> protection + control step -> command.
    control_period_ms: int
    #: Period of the state estimator inside the logic; a whole multiple of the control period.
    estimation_period_ms: int
    #: Period of the CAN/UDP telemetry frames (dbc/mbms.dbc).
    telemetry_period_ms: int
    #: How often the engine state is written to disk (0 = every control period).
    state_save_ms: int
    #: A measurement older than this is stale: fail-safe (contactors forced open).
    stale_ms: int
    #: A loop iteration starting later than this after its schedule is an overrun: fail-safe.
    overrun_ms: int
    log_format: str
    log_level: str
    #: Retry a latched fault reset this often (s); 0 = wait for an operator.
    auto_reset_s: float
    feedback_mismatch_ms: int
    ramp_open_current_a: float
    ramp_open_timeout_s: float

    @classmethod
    def of(cls, **settings: Any) -> NodeSection:
        """The normalised ``[node]`` table for ``settings`` (missing keys take the Rust
        defaults; ``id`` and ``state_dir`` are required here)."""
        if "state_dir" in settings:
            settings["state_dir"] = str(settings["state_dir"])
        d = dict(_core.node_config(settings))
        for key in ("id", "state_dir"):
            if d.get(key) is None:
                raise ConfigError(f"node.{key}", "missing; this field is required")
        d["state_dir"] = Path(d["state_dir"])
        return view(cls, d)

    def logic_dict(self) -> dict[str, Any]:
        """The ``[node]`` settings as the Rust NodeCore takes them."""
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d["state_dir"] = str(self.state_dir)
        return d


@dataclass(frozen=True)
class HardwareSection:
    """``[hardware]`` of a pack file: which ``mbms.hardware`` adapter (:mod:`mbms.registry`)."""

    adapter: str
    #: Plant link endpoint (adapter "sim"): "udp://127.0.0.1:PORT" or "unix:///path/to.sock".
    link: str
    #: Index of this pack's string in the plant (adapter "sim").
    string: int
    #: No reply from the plant for this long = lost link: fail-safe.
    link_timeout_ms: int
    #: ``[hardware.options]``: settings of a third-party adapter, passed to it unchanged.
    options: dict[str, Any] = field(default_factory=dict)
    #: Adapter "linux" (:mod:`mbms.hardware.linux`): the device tables (schema: rust_core/src/config.rs).
    afe: AfeSection | None = None
    sensor_can: CanTransport | None = None
    current_sensor: CurrentSensorSection | None = None
    contactors: ContactorLinesSection | None = None
    insulation: InsulationSection | None = None


@dataclass(frozen=True)
class AfeSection:
    """``[hardware.afe]``: the LTC6813-1 chain."""

    device: str
    spi_hz: int
    ics: int
    cells_per_ic: int
    temps_per_ic: int
    dcto_code: int
    open_wire_every: int
    ntc_beta_k: float
    ntc_r25_ohm: float
    ntc_pullup_ohm: float


@dataclass(frozen=True)
class CurrentSensorSection:
    """``[hardware.current_sensor]``: the IVT-S on ``sensor_can``."""

    cycle_ms: int
    timeout_cycles: int
    current_sign: float


@dataclass(frozen=True)
class ContactorLinesSection:
    """``[hardware.contactors]``: GPIO chip, line offsets, welded/stuck-open checks."""

    chip: str
    neg_out: int
    pos_out: int
    pre_out: int
    neg_fb: int
    pos_fb: int
    pre_fb: int
    i_open_a: float
    dv_closed_v: float
    confirm_ms: int


@dataclass(frozen=True)
class InsulationSection:
    """``[hardware.insulation]``: the iso165C on ``sensor_can``."""

    min_kohm: float
    warning_kohm: float
    timeout_ms: int


@dataclass(frozen=True)
class MqttSection:
    """``[operator.mqtt]`` (rust_core/src/config.rs ``MqttConfig``): broker, credentials, TLS, rates."""

    host: str
    port: int
    username: str
    password: str
    tls: bool
    ca_file: str
    cert_file: str
    key_file: str
    topic_prefix: str
    discovery_prefix: str
    state_period_ms: int
    cells_period_ms: int
    keepalive_s: int
    qos: int
    queue_max: int


@dataclass(frozen=True)
class MetricsSection:
    """``[operator.metrics]``: the Prometheus endpoint ``http://bind:port/metrics``."""

    bind: str
    port: int


@dataclass(frozen=True)
class UdsSection:
    """``[operator.uds]``: UDS over ISO-TP on a python-can bus (0 ids = the per-node defaults)."""

    interface: str
    channel: str
    port: int
    rx_id: int
    tx_id: int
    security_key_hex: str
    serial: str


@dataclass(frozen=True)
class OperatorSection:
    """``[operator]`` of a pack file: event-log bound and the optional operator gateways."""

    events_max_bytes: int
    events_keep: int
    mqtt: MqttSection | None = None
    metrics: MetricsSection | None = None
    uds: UdsSection | None = None


@dataclass(frozen=True)
class PackFile:
    """A parsed pack file: the node's own tables plus the engine tables (normalised)."""

    source: str
    node: NodeSection
    hardware: HardwareSection
    #: The engine's tables (pack, estimator, ...), normalised by the core.
    engine: dict[str, Any] = field(default_factory=dict)
    #: ``(source, text)`` of this file and the files it extends, base first.
    layers: tuple[tuple[str, str], ...] = ()
    #: The cell parameter file ``pack.cell`` names.
    cell_path: Path | None = None
    #: ``[operator]``: MQTT, metrics, UDS, event-log bound (normalised by the core).
    operator: OperatorSection | None = None


def parse_link(link: str, source: str | None = None, name: str = "hardware.link") -> tuple[str, Any]:
    """Split a plant link endpoint (validated by the core): ``("udp", (host, port))`` or
    ``("unix", path)``."""
    if link.startswith("udp://"):
        host, _, port = link[len("udp://"):].rpartition(":")
        return "udp", (host.strip("[]"), int(port))
    if link.startswith("unix://"):
        return "unix", link[len("unix://"):]
    raise ConfigError(name, f"expected \"udp://IP:PORT\" or \"unix:///PATH\", got {link!r}", source)


# ----------------------------------------------------------------------------------------------
# system file
# ----------------------------------------------------------------------------------------------


def _transport_settings(kind: str, settings: dict[str, Any]) -> dict[str, Any]:
    """``[transport.<kind>]`` normalised by the core (its defaults for what ``settings`` leave
    out, its checks), through the same path as a system file."""
    import tomli_w

    table = dict(settings)
    peers = [f"{host}:{port}" for host, port in table.get("peers", ())]
    if "peers" in table:
        table["peers"] = peers
    doc = {"system_id": "view", "members": list(range(1, max(2, len(peers)) + 1)),
           "transport": {"kind": kind, kind: table}}
    d = _core.node_files([], ("<settings>", tomli_w.dumps(doc)), None)
    for f in d["findings"]:
        if f["severity"] == "error":
            raise Finding(**f).error()
    out = dict(d["system"]["transport"][kind])
    if "peers" in out:
        out["peers"] = [_host_port(p) for p in out["peers"]]
    return out


@dataclass(frozen=True)
class CanTransport:
    """``[transport.can]``: a python-can bus. ``interface`` is python-can's interface name:
    ``socketcan`` on controllers, ``udp_multicast`` between processes on one host, ``virtual``
    within one process."""

    interface: str
    channel: str
    #: Only for udp_multicast: the UDP port.
    port: int
    bitrate: int
    fd: bool

    @classmethod
    def of(cls, **settings: Any) -> CanTransport:
        """The normalised ``[transport.can]`` for ``settings`` (the core's defaults for the rest)."""
        return view(cls, _transport_settings("can", settings))


@dataclass(frozen=True)
class UdpTransport:
    """``[transport.udp]``: one msgpack datagram per message, to a multicast group or peer list."""

    port: int
    group: str
    interface: str
    #: Unicast alternative: (ip, port) of all members, in the order of members.
    peers: tuple[tuple[str, int], ...]
    bind: str
    ttl: int

    @classmethod
    def of(cls, **settings: Any) -> UdpTransport:
        """The normalised ``[transport.udp]`` for ``settings`` (``peers`` as ``(ip, port)`` pairs;
        the core's defaults for the rest)."""
        return view(cls, _transport_settings("udp", settings))


@dataclass(frozen=True)
class TransportSection:
    #: A name in the ``mbms.transports`` registry (:mod:`mbms.registry`): "can", "udp", or installed.
    kind: str
    can: CanTransport | None = None
    udp: UdpTransport | None = None
    #: ``[transport.options]``: settings of a third-party transport, passed to it unchanged.
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class DiscoverySection:
    enabled: bool
    #: Interfaces (IP addresses) zeroconf uses; empty = all.
    interfaces: tuple[str, ...]


@dataclass(frozen=True)
class AuthSection:
    """``[auth]`` of a system file (brief S7): the key file (resolved against the system file's
    folder), or ``off`` (explicit; logged at every start). Read by :mod:`mbms.keys`."""

    key_file: Path | None
    off: bool


@dataclass(frozen=True)
class InverterSection:
    """``[inverter]``: the battery protocol the speaker sends to the inverter (rust_core
    ``InverterConfig``; defaults and checks there). ``protocol`` names a DBC file shipped in
    ``mbms/data/dbc`` ("pylon_lv", "pylon_hv")."""

    protocol: str
    can: CanTransport
    cycle_ms: int
    #: The inverter's communication timeout: a speaker handover must fit inside it.
    timeout_ms: int
    cvl_margin_v_per_cell: float
    dvl_margin_v_per_cell: float
    manufacturer: str
    force_charge_soc: float
    stop_frames: int


@dataclass(frozen=True)
class SystemConfig:
    source: str
    system_id: str
    #: The 32-bit system id of the peer messages: CRC-32 of ``system_id`` (computed by the core).
    system_id_u32: int
    members: tuple[int, ...]
    #: floor(N/2) + 1 of the configured N (brief §3), never of the visible peers.
    quorum: int
    transport: TransportSection
    heartbeat_ms: int
    #: |V_bus - V_string| bound before a main contactor may close (brief S3; foxBMS 2 uses 3 V).
    dv_close_v: float
    #: Duration of a close grant (brief S2), by each peer's own clock.
    lease_ms: int
    discovery: DiscoverySection
    #: The normalised protocol settings: the one Python view of the Rust ``PeerConfig``
    #: (``mbms.consensus.ConsensusConfig``; node_id and seed are placeholders, see :meth:`peer_config`).
    protocol: ConsensusConfig
    #: The normalised consensus PeerConfig (node_id/seed placeholders; see :meth:`peer_config`).
    peer: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)
    #: The file's text (for re-checking it together with a pack file).
    text: str = field(default="", compare=False, repr=False)
    #: Message authentication; None when the file has no ``[auth]`` (a node refuses to start).
    auth: AuthSection | None = None
    #: ``[inverter]``, or None: this system sends no inverter frames.
    inverter: InverterSection | None = None

    def peer_config(self, node_id: int, seed: int) -> dict[str, Any]:
        """The consensus PeerConfig of node ``node_id`` with boot seed ``seed``."""
        return {**self.peer, "node_id": node_id, "seed": seed}


def _system_view(d: dict[str, Any], text: str) -> SystemConfig:
    t = d["transport"]
    udp = None
    if t.get("udp") is not None:
        u = dict(t["udp"])
        u["peers"] = [_host_port(p) for p in u["peers"]]
        udp = view(UdpTransport, u)
    transport = TransportSection(kind=t["kind"], can=view(CanTransport, t["can"]) if t.get("can") else None, udp=udp,
                                 options=dict(t.get("options") or {}))
    p = d["protocol"]
    auth = None
    if d.get("auth") is not None:
        a = d["auth"]
        key = a.get("key_file")
        if key is not None:
            _no_nul(key, "auth.key_file", d["source"])
            key = (Path(d["source"]).parent / Path(os.path.expanduser(key))).resolve()
        auth = AuthSection(key_file=key, off=bool(a.get("off", False)))
    return SystemConfig(
        source=d["source"], system_id=d["system_id"], system_id_u32=d["system_id_u32"],
        members=tuple(d["members"]), quorum=d["quorum"], transport=transport,
        heartbeat_ms=p["heartbeat_ms"], dv_close_v=float(p["dv_close_v"]), lease_ms=p["lease_ms"],
        discovery=view(DiscoverySection, d["discovery"]), protocol=view(ConsensusConfig, p), peer=p, text=text,
        inverter=view(InverterSection, d["inverter"]) if d.get("inverter") else None,
        auth=auth,
    )


def _no_nul(path: str, field: str, source: str) -> None:
    """A path with a NUL character is no path: Path.resolve raised ValueError out of the config
    reader (found by tests/test_fuzz_decoders.py); a ConfigError naming the field instead."""
    if "\0" in path:
        raise ConfigError(field, "a path without NUL characters", source)


def _host_port(s: str) -> tuple[str, int]:
    host, _, port = s.rpartition(":")
    host = host.strip("[]")
    ipaddress.ip_address(host)  # validated by the core
    return host, int(port)


def _pack_view(d: dict[str, Any], layers: list[tuple[str, str]], cell_path: Path | None) -> PackFile:
    source = layers[-1][0]
    n = dict(d["pack"]["node"])
    _no_nul(n["state_dir"], "node.state_dir", source)
    # a relative state_dir is relative to the pack file that is started
    n["state_dir"] = (Path(source).parent / Path(os.path.expanduser(n["state_dir"]))).resolve()
    return PackFile(source=source, node=view(NodeSection, n), hardware=view(HardwareSection, d["pack"]["hardware"]),
                    engine=d["engine"], layers=tuple(layers), cell_path=cell_path,
                    operator=view(OperatorSection, d["pack"]["operator"]))


# ----------------------------------------------------------------------------------------------
# reading: one function for a start and for --check
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NodeFiles:
    """What :func:`load_node` found: the views (None where a file did not parse) and every finding."""

    pack: PackFile | None
    system: SystemConfig | None
    findings: tuple[Finding, ...]

    @property
    def errors(self) -> tuple[Finding, ...]:
        return tuple(f for f in self.findings if f.severity == "error")

    def raise_first(self) -> None:
        if self.errors:
            raise self.errors[0].error()


def _check(layers: list[tuple[str, str]], system: tuple[str, str] | None) -> tuple[dict[str, Any], list[Finding], Path | None]:
    extra: list[Finding] = []
    cell_path = cell_text = None
    first = _core.node_files(layers, system, None) if layers else None
    if first is not None and first["pack"] is not None:
        name = first["pack"]["pack"]["cell"]
        try:
            cell_path = resolve_cell(name, layers[-1][0])
            cell_text = cell_path.read_text()
        except (ConfigError, OSError) as exc:
            msg = exc.message if isinstance(exc, ConfigError) else str(exc)
            extra.append(Finding("error", layers[-1][0], "pack.cell", repr(name), msg))
    d = _core.node_files(layers, system, cell_text)
    findings = [Finding(**f) for f in d["findings"]]
    # the cell problem belongs with the pack findings, before the system's
    return d, extra + _registered(d, layers) + findings, cell_path


def _registered(d: dict[str, Any], layers: list[tuple[str, str]]) -> list[Finding]:
    """The hardware adapter and the transport named must be installed (:mod:`mbms.registry`):
    only Python knows the installed distributions, so this check is not in the Rust schema."""
    out = []
    checks = []
    if d.get("pack") is not None and layers:
        checks.append((registry.HARDWARE, d["pack"]["hardware"]["adapter"], layers[-1][0], "hardware.adapter"))
    if d.get("system") is not None:
        checks.append((registry.TRANSPORTS, d["system"]["transport"]["kind"], d["system"]["source"], "transport.kind"))
    for group, name, source, fld in checks:
        installed = registry.names(group)
        if name and name not in installed:
            out.append(Finding("error", source, fld, repr(name), f"one of {installed} (installed {group} entry points)"))
    return out


def load_node(pack_path: str | os.PathLike[str], system_path: str | os.PathLike[str]) -> NodeFiles:
    """Read and check a node's pack and system files: exactly what a start checks (engine,
    node, hardware, system, transport, discovery and the cross-checks). Unreadable files raise
    :class:`ConfigError`; everything else is a finding."""
    layers = read_layers(pack_path)
    sys_source = str(system_path)
    sys_text = read_text(system_path)
    d, findings, cell_path = _check(layers, (sys_source, sys_text))
    pack = _pack_view(d, layers, cell_path) if d["pack"] is not None else None
    system = _system_view(d["system"], sys_text) if d["system"] is not None else None
    if system is not None:
        findings += _auth_findings(system)
    return NodeFiles(pack, system, tuple(findings))


def _auth_findings(system: SystemConfig) -> list[Finding]:
    """The message keys a start would read (brief S7): a missing, open or foreign key file stops
    a start, so ``--check`` reports it as an error; ``[auth] off = true`` is a warning."""
    from mbms.keys import FileKeyProvider  # keys reads the system view: imported when needed

    auth = system.auth
    if auth is None:
        return [Finding("error", system.source, "auth", None,
                        "an [auth] table: key_file = \"FILE\" (create it with `mbms keys new FILE --system "
                        f"{system.system_id}`), or off = true to run without authentication")]
    if auth.off:
        return [Finding("warning", system.source, "auth.off", "true",
                        "authentication on: any device on the peer network can speak for a node")]
    assert auth.key_file is not None  # the core requires key_file or off
    try:
        FileKeyProvider(auth.key_file, system.system_id, system.source).keys()
    except ConfigError as exc:
        why = exc.message.removeprefix(f"{auth.key_file}: ")
        return [Finding("error", exc.source or system.source, exc.field, str(auth.key_file),
                        f"a key file of this system, mode 0600 ({why})")]
    return []


def load_pack(path: str | os.PathLike[str]) -> PackFile:
    """A pack file alone (no system checks); raises the first error."""
    layers = read_layers(path)
    d, findings, cell_path = _check(layers, None)
    for f in findings:
        if f.severity == "error":
            raise f.error()
    return _pack_view(d, layers, cell_path)


def load_system(path: str | os.PathLike[str]) -> SystemConfig:
    """A system file alone; raises the first error."""
    text = read_text(path)
    d = _core.node_files([], (str(path), text), None)
    # a transport nobody installed first: it explains the other findings about its tables
    for finding in _registered(d, []):
        raise finding.error()
    for f in d["findings"]:
        if f["severity"] == "error":
            raise Finding(**f).error()
    return _system_view(d["system"], text)


def check_membership(pack: PackFile, system: SystemConfig) -> None:
    """The pack and system checked together (node id a member, string index, protocol timing
    against the node's loop): raises the first error."""
    _d, findings, _cell = _check(list(pack.layers), (system.source, system.text))
    for f in findings:
        if f.severity == "error":
            raise f.error()
