"""Node, hardware and system configuration: examples load; bad files name file, field, expectation."""

from __future__ import annotations

from pathlib import Path

import pytest

from mbms.errors import ConfigError
from mbms.config_views import check_membership, load_pack, load_system
from mbms.paths import data_dir

# node1 extends example_pack.toml by a relative path: written elsewhere, it names the shipped one
PACK = (data_dir() / "packs" / "node1.toml").read_text().replace(
    'extends = "example_pack.toml"', f'extends = "{data_dir() / "packs" / "example_pack.toml"}"')
SYSTEM = (data_dir() / "systems" / "example_system.toml").read_text()


def test_examples_load() -> None:
    for k in (1, 2, 3, 4):
        pack = load_pack(data_dir() / "packs" / f"node{k}.toml")
        assert pack.node.id == k and pack.hardware.string == k - 1 and "protection" in pack.engine
    for name in ("example_system.toml", "example_system_udp.toml"):
        sysc = load_system(data_dir() / "systems" / name)
        assert sysc.members == (1, 2, 3, 4) and sysc.quorum == 3
        check_membership(load_pack(data_dir() / "packs" / "node4.toml"), sysc)


def test_engine_accepts_the_node_pack_files() -> None:
    from mbms.engine import PackConfig

    for k in (1, 2, 3, 4):
        cfg = PackConfig.from_toml(data_dir() / "packs" / f"node{k}.toml")
        assert cfg.pack.series == 96


def _write(tmp: Path, name: str, text: str) -> Path:
    p = tmp / name
    p.write_text(text)
    return p


@pytest.mark.parametrize(("old", "new", "field", "expect"), [
    ("id = 1\n", "id = 0\n", "node.id", "1..=63"),
    ("id = 1\n", "id = \"one\"\n", "node.id", "invalid type: string"),
    ("control_period_ms = 100", "control_period_ms = 30", "node.estimation_period_ms", "multiple"),
    ("log_format = \"human\"", "log_format = \"xml\"", "node.log_format", "`human` or `json`"),
    # the adapter and transport names are looked up in the installed registries (mbms.registry)
    ("adapter = \"sim\"", "adapter = \"spi\"", "hardware.adapter", "one of ['linux', 'sim'"),
    ("link = \"udp://127.0.0.1:47000\"", "link = \"tcp://x\"", "hardware.link", "udp://"),
    ("stale_ms = 500", "stale_ms = 500\nstaleness = 3", "node.staleness", "unknown field"),
    ("[hardware]", "[hardwar]\nx=1\n[hardware]", "hardwar", "unknown field"),
])
def test_bad_pack_names_file_and_field(tmp_path: Path, old: str, new: str, field: str, expect: str) -> None:
    assert old in PACK
    p = _write(tmp_path, "bad_pack.toml", PACK.replace(old, new, 1))
    with pytest.raises(ConfigError) as ei:
        load_pack(p)
    assert ei.value.field == field and ei.value.source == str(p)
    assert expect in str(ei.value) and "bad_pack.toml" in str(ei.value)


@pytest.mark.parametrize(("old", "new", "field", "expect"), [
    ("members = [1, 2, 3, 4]", "members = [1, 2, 2]", "members[2]", "unique"),
    ("members = [1, 2, 3, 4]", "members = []", "members", "non-empty"),
    ("members = [1, 2, 3, 4]", "members = [1, 64]", "members[1]", "1..=63"),
    ("lease_ms = 4000", "lease_ms = 50", "lease_ms", "grant_wait_ms + precharge_timeout_ms"),
    ("kind = \"can\"", "kind = \"serial\"", "transport.kind", "one of ['can', 'udp'"),
    ("fd = false", "fd = 1", "transport.can.fd", "expected a boolean"),
    ("dv_close_v = 3.0", "dv_close_v = -1", "dv_close_v", "(0, 10]"),
    ("dv_close_v = 3.0", "dv_close_v = 100", "dv_close_v", "(0, 10]"),
    ("dwell_ms = 100", "dwell_ms = 100\nnode_id = 3", "protocol.node_id", "not a protocol setting"),
    ("dwell_ms = 100", "dwell_ms = 100\nlease_ms = 3000", "lease_ms", "given twice"),
    ("interfaces = []", "interfaces = [\"eth0\"]", "discovery.interfaces[0]", "IP address"),
    ("system_id = \"example-rack\"", "system_id = \"a b\"", "system_id", "letters"),
])
def test_bad_system_names_file_and_field(tmp_path: Path, old: str, new: str, field: str, expect: str) -> None:
    assert old in SYSTEM
    p = _write(tmp_path, "bad_system.toml", SYSTEM.replace(old, new, 1))
    with pytest.raises(ConfigError) as ei:
        load_system(p)
    assert ei.value.field == field and expect in str(ei.value) and "bad_system.toml" in str(ei.value)


def test_udp_system_checks(tmp_path: Path) -> None:
    base = (data_dir() / "systems" / "example_system_udp.toml").read_text()
    p = _write(tmp_path, "s.toml", base.replace('group = "239.255.77.1"', 'group = "10.0.0.1"'))
    with pytest.raises(ConfigError, match=r"transport\.udp\.group: expected an IPv4 multicast"):
        load_system(p)
    p = _write(tmp_path, "s.toml", base.replace("# peers = [", "peers = [\"127.0.0.1:1\"]\n# ["))
    with pytest.raises(ConfigError, match=r"transport\.udp\.peers: expected one"):
        load_system(p)


def test_membership_and_unreadable_files(tmp_path: Path) -> None:
    sysc = load_system(_write(tmp_path, "s.toml", SYSTEM.replace("members = [1, 2, 3, 4]", "members = [2, 3]")))
    with pytest.raises(ConfigError, match=r"node\.id: expected one of the system's members \[2, 3\]"):
        check_membership(load_pack(data_dir() / "packs" / "node1.toml"), sysc)
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_system(_write(tmp_path, "t.toml", "members = [1,"))
    with pytest.raises(ConfigError, match="cannot read"):
        load_pack(tmp_path / "missing.toml")


def test_extends_cycle_and_missing_base(tmp_path: Path) -> None:
    a = _write(tmp_path, "a.toml", 'extends = "b.toml"\n')
    _write(tmp_path, "b.toml", 'extends = "a.toml"\n')
    with pytest.raises(ConfigError, match="cycle") as ei:
        load_pack(a)
    assert ei.value.field == "extends"
    c = _write(tmp_path, "c.toml", 'extends = "nowhere.toml"\n')
    with pytest.raises(ConfigError, match="not found") as ei:
        load_pack(c)
    assert ei.value.field == "extends" and ei.value.source == str(c)


def test_defaults_are_rusts() -> None:
    """Python restates no default: a pack without the optional [node] keys gets Rust's values."""
    from mbms import _core
    from mbms.config_views import NodeSection

    rust = _core.node_config({})
    n = NodeSection.of(id=1, state_dir="/tmp/x")
    for key in ("stale_ms", "auto_reset_s", "feedback_mismatch_ms", "ramp_open_current_a", "control_period_ms"):
        assert getattr(n, key) == rust[key]
    # the settled disagreements (issue 9)
    assert rust["stale_ms"] == 500 and rust["auto_reset_s"] == 60.0
    peer = _core.peer_config({})
    assert peer["dv_close_v"] == 3.0 and peer["lease_ms"] == 2000


def test_cli_reports_config_error(tmp_path: Path) -> None:
    import subprocess
    import sys

    p = _write(tmp_path, "bad_pack.toml", PACK.replace("id = 1\n", "id = 99\n", 1))
    out = subprocess.run([sys.executable, "-m", "mbms", "node", "--config", str(p), "--system",
                          str(data_dir() / "systems" / "example_system.toml"), "--check"], capture_output=True, text=True)
    assert out.returncode == 2 and f"error: {p}: node.id: expected a node id 1..=63 (got 99)" in out.stdout
    start = subprocess.run([sys.executable, "-m", "mbms", "node", "--config", str(p), "--system",
                            str(data_dir() / "systems" / "example_system.toml")], capture_output=True, text=True)
    assert start.returncode == 2 and f"{p}: node.id: expected a node id 1..=63, got 99" in start.stderr



def test_views_cover_every_rust_field() -> None:
    """A setting added to a Rust config type must show in its Python view (else a view built
    from it would silently drop it): the views' fields are exactly the normalised keys."""
    from dataclasses import fields

    from mbms import _core
    from mbms.consensus import ConsensusConfig
    from mbms.config_views import NodeSection, SystemConfig
    from mbms.sim.processes import PROTOCOL_KEYS, SYSTEM_TOP_KEYS

    peer = set(_core.peer_config({}))
    assert {f.name for f in fields(ConsensusConfig)} == peer
    # one Python view of the peer fields: the system file's protocol is that same view
    assert SystemConfig.__dataclass_fields__["protocol"].type == "ConsensusConfig"
    identity = {"system_id", "node_id", "members", "seed", "heartbeat_ms", "dv_close_v", "lease_ms"}
    assert PROTOCOL_KEYS == peer - identity and SYSTEM_TOP_KEYS < peer
    assert {f.name for f in fields(NodeSection)} == set(_core.node_config({}))
