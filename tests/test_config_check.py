"""``mbms node --check`` and a real ``mbms node`` start run the same checks (rust_core/src/config.rs):
each kind of bad file is refused by both, naming the same file and dotted field (issues 10 and 11)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from mbms.paths import data_dir

PACKS = data_dir() / "packs"
SYSTEMS = data_dir() / "systems"
NODE1 = (PACKS / "node1.toml").read_text()
SYSTEM = (SYSTEMS / "example_system_udp.toml").read_text()


def _node_file(tmp_path: Path, extra: str = "", replace: tuple[str, str] | None = None) -> Path:
    """node1 with its engine tables from the shipped example_pack.toml (extends), plus edits."""
    text = NODE1.replace('extends = "example_pack.toml"', f'extends = "{PACKS / "example_pack.toml"}"')
    text = text.replace('state_dir = "/var/lib/mbms/node1"', f'state_dir = "{tmp_path / "state"}"')
    if replace is not None:
        assert replace[0] in text, replace
        text = text.replace(*replace, 1)
    p = tmp_path / "node.toml"
    p.write_text(text + "\n" + extra)
    return p


def _system_file(tmp_path: Path, replace: tuple[str, str] | None = None) -> Path:
    text = SYSTEM
    if replace is not None:
        assert replace[0] in text, replace
        text = text.replace(*replace, 1)
    p = tmp_path / "system.toml"
    p.write_text(text)
    return p


def _mbms(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mbms", "node", *args], capture_output=True, text=True, timeout=60)


# (id, extra text for the node file, replacement in the node file, replacement in the system file,
#  the field both must name, which file it is in)
BAD = [
    ("misspelt-key", "[protection.cell_overvoltage_v]\nhysterisis = 0.03\n", None, None,
     "protection.cell_overvoltage_v.hysterisis", "node"),
    ("series-string", '[pack]\nseries = "96"\n', None, None, "pack.series", "node"),
    ("warning-above-fault", "[protection.cell_overvoltage_v]\nwarning = 4.5\n", None, None,
     "protection.cell_overvoltage_v.warning", "node"),
    ("unknown-cell", '[pack]\ncell = "no_such_cell"\n', None, None, "pack.cell", "node"),
    ("ov-fault-above-datasheet", "[protection.cell_overvoltage_v]\nfault = 5.5\n", None, None,
     "protection.cell_overvoltage_v.fault", "node"),
    ("series-1e8-float", "[pack]\nseries = 1e8\n", None, None, "pack.series", "node"),
    ("series-1e8", "[pack]\nseries = 100000000\n", None, None, "pack.series", "node"),
    ("nan", "[estimator]\nvoltage_noise_v = nan\n", None, None, "estimator.voltage_noise_v", "node"),
    ("inf", "", ("stale_ms = 500", "stale_ms = inf"), None, "node.stale_ms", "node"),
    ("uv-above-ov", "[protection.cell_undervoltage_v]\nwarning = 4.30\nalarm = 4.28\nfault = 4.26\n", None, None,
     "protection.cell_undervoltage_v.warning", "node"),
    ("dv-close-100", "", None, ("dv_close_v = 3.0", "dv_close_v = 100.0"), "dv_close_v", "system"),
    ("string-99", "", ("string = 0 ", "string = 99 "), None, "hardware.string", "node"),
    ("id-not-member", "", ("id = 1", "id = 9"), None, "node.id", "node"),
    ("close-confirm-below-loop", "", None, ("close_confirm_ms = 400", "close_confirm_ms = 150"),
     "protocol.close_confirm_ms", "system"),
]


@pytest.mark.parametrize("extra,node_edit,sys_edit,field,where", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_check_and_start_refuse_naming_the_same_field(tmp_path: Path, extra: str, node_edit: tuple[str, str] | None,
                                                      sys_edit: tuple[str, str] | None, field: str,
                                                      where: str) -> None:
    node = _node_file(tmp_path, extra, node_edit)
    system = _system_file(tmp_path, sys_edit)
    file = str(node if where == "node" else system)

    check = _mbms("--config", str(node), "--system", str(system), "--check", "--json")
    assert check.returncode == 2, check.stdout + check.stderr
    report = json.loads(check.stdout)
    assert report["ok"] is False
    errors = [f for f in report["findings"] if f["severity"] == "error"]
    assert errors[0]["field"] == field and errors[0]["file"] == file, errors
    assert errors[0]["expected"], errors[0]

    start = _mbms("--config", str(node), "--system", str(system), "--duration", "5")
    assert start.returncode == 2, start.stdout + start.stderr
    line = start.stderr.strip().splitlines()[-1]
    assert f"{file}: {field}:" in line, line
    assert "Traceback" not in start.stderr


def test_check_reports_value_and_expected(tmp_path: Path) -> None:
    node = _node_file(tmp_path, "[protection.cell_overvoltage_v]\nfault = 5.5\n")
    out = _mbms("--config", str(node), "--system", str(_system_file(tmp_path)), "--check", "--json")
    f = next(x for x in json.loads(out.stdout)["findings"] if x["field"] == "protection.cell_overvoltage_v.fault")
    assert f["value"] == "5.5" and "4.2" in f["expected"] and f["file"] == str(node)
    # a plain --check says the same in one line per finding
    text = _mbms("--config", str(node), "--system", str(_system_file(tmp_path)), "--check")
    assert text.returncode == 2
    assert f"error: {node}: protection.cell_overvoltage_v.fault: expected" in text.stdout


def test_a_field_set_only_in_the_base_file_is_reported_there(tmp_path: Path) -> None:
    base = tmp_path / "base.toml"
    base.write_text((PACKS / "example_pack.toml").read_text().replace("fault = 4.22", "fault = 6.0", 1))
    node = tmp_path / "node.toml"
    node.write_text(NODE1.replace('state_dir = "/var/lib/mbms/node1"', f'state_dir = "{tmp_path}"')
                    .replace('extends = "example_pack.toml"', 'extends = "base.toml"'))
    out = _mbms("--config", str(node), "--system", str(_system_file(tmp_path)), "--check", "--json")
    first = next(x for x in json.loads(out.stdout)["findings"] if x["severity"] == "error")
    assert (first["file"], first["field"]) == (str(base), "protection.cell_overvoltage_v.fault")


@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_shipped_node_files_check_clean(k: int) -> None:
    for system in ("example_system", "example_system_udp"):
        out = _mbms("--config", f"node{k}", "--system", system, "--check", "--json")
        assert out.returncode == 0, out.stdout + out.stderr
        assert json.loads(out.stdout)["ok"] is True


def test_n2_quorum_is_a_warning_not_an_error(tmp_path: Path) -> None:
    system = _system_file(tmp_path, ("members = [1, 2, 3, 4]", "members = [1, 2]"))
    out = _mbms("--config", str(_node_file(tmp_path)), "--system", str(system), "--check", "--json")
    assert out.returncode == 0, out.stdout
    warn = [f for f in json.loads(out.stdout)["findings"] if f["severity"] == "warning"]
    assert [f["field"] for f in warn] == ["members"]


def test_a_copied_node_file_keeps_its_shipped_base(tmp_path: Path) -> None:
    """node1.toml copied out of the shipped folder: its ``extends = "example_pack.toml"`` is
    not next to it any more and is found in the pack folders, so the copy keeps its engine
    tables; a base that exists nowhere is still an error naming ``extends``."""
    from mbms.config import read_layers
    from mbms.config_views import load_pack
    from mbms.errors import ConfigError

    copy = tmp_path / "node1.toml"
    copy.write_text(NODE1)
    layers = read_layers(copy)
    assert [Path(src).name for src, _ in layers] == ["example_pack.toml", "node1.toml"]
    assert Path(layers[0][0]).resolve() == (PACKS / "example_pack.toml").resolve()
    assert load_pack(copy).engine == load_pack(PACKS / "node1.toml").engine
    lost = tmp_path / "lost.toml"
    lost.write_text(NODE1.replace('extends = "example_pack.toml"', 'extends = "no_such_base.toml"'))
    with pytest.raises(ConfigError) as exc:
        read_layers(lost)
    assert exc.value.field == "extends" and "no_such_base.toml" in exc.value.message
