"""Node, hardware and system configuration: examples load; bad files name file, field, expectation."""

from __future__ import annotations

from pathlib import Path

import pytest

from mbms.errors import ConfigError
from mbms.node.config import check_membership, load_pack, load_system
from mbms.paths import data_dir

PACK = (data_dir() / "packs" / "node1.toml").read_text()
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
    ("id = 1\n", "id = 0\n", "node.id", ">= 1"),
    ("id = 1\n", "id = \"one\"\n", "node.id", "integer"),
    ("control_period_ms = 100", "control_period_ms = 30", "node.estimation_period_ms", "multiple"),
    ("log_format = \"human\"", "log_format = \"xml\"", "node.log_format", "['human', 'json']"),
    ("adapter = \"sim\"", "adapter = \"spi\"", "hardware.adapter", "['sim']"),
    ("link = \"udp://127.0.0.1:47000\"", "link = \"tcp://x\"", "hardware.link", "udp://"),
    ("stale_ms = 500", "stale_ms = 500\nstaleness = 3", "node.staleness", "unknown field"),
    ("[balancing]", "[balancng]\nx=1\n[balancing]", "balancng", "unknown top-level table"),
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
    ("members = [1, 2, 3, 4]", "members = [1, 64]", "members[1]", "1..63"),
    ("lease_ms = 4000", "lease_ms = 50", "lease_ms", "more than heartbeat_ms"),
    ("kind = \"can\"", "kind = \"serial\"", "transport.kind", "['can', 'udp']"),
    ("fd = false", "fd = 1", "transport.can.fd", "true or false"),
    ("dv_close_v = 3.0", "dv_close_v = -1", "dv_close_v", "> 0.0"),
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


def test_cli_reports_config_error(tmp_path: Path) -> None:
    import subprocess
    import sys

    p = _write(tmp_path, "bad_pack.toml", PACK.replace("id = 1\n", "id = 99\n", 1))
    out = subprocess.run([sys.executable, "-m", "mbms", "node", "--config", str(p), "--system",
                          str(data_dir() / "systems" / "example_system.toml"), "--check"], capture_output=True, text=True)
    assert out.returncode == 2 and "bad_pack.toml: node.id: expected an integer <= 63, got 99" in out.stderr

