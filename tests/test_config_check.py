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
    key = tmp_path / "example-sim.key"  # the key file the shipped text names, next to the copy
    if not key.exists():
        from mbms.keys import new_key_file

        new_key_file(key, "example-sim")
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
    # a pack setting removed in issue 16 (now the cell file's C-rate): refused, naming it
    ("removed-r0-step", "[estimator]\nr0_step_min_a = 5.0\n", None, None, "estimator.r0_step_min_a", "node"),
    ("inf", "", ("stale_ms = 500", "stale_ms = inf"), None, "node.stale_ms", "node"),
    ("uv-above-ov", "[protection.cell_undervoltage_v]\nwarning = 4.30\nalarm = 4.28\nfault = 4.26\n", None, None,
     "protection.cell_undervoltage_v.warning", "node"),
    ("dv-close-100", "", None, ("dv_close_v = 3.0", "dv_close_v = 100.0"), "dv_close_v", "system"),
    ("string-99", "", ("string = 0 ", "string = 99 "), None, "hardware.string", "node"),
    ("id-not-member", "", ("id = 1", "id = 9"), None, "node.id", "node"),
    ("close-confirm-below-loop", "", None, ("close_confirm_ms = 400", "close_confirm_ms = 150"),
     "protocol.close_confirm_ms", "system"),
    # temperature faults against the cell file's [temperature] windows (LG M50: charge 0..45 °C,
    # discharge -20..60 °C; margin 2 °C), each rule against its own direction's window
    ("overtemp-charge-above-datasheet", "[protection.overtemp_charge_c]\nfault = 48.0\n", None, None,
     "protection.overtemp_charge_c.fault", "node"),
    ("undertemp-charge-below-datasheet", "[protection.undertemp_charge_c]\nfault = -5.0\n", None, None,
     "protection.undertemp_charge_c.fault", "node"),
    ("overtemp-discharge-above-datasheet", "[protection.overtemp_discharge_c]\nfault = 65.0\n", None, None,
     "protection.overtemp_discharge_c.fault", "node"),
    ("undertemp-discharge-below-datasheet", "[protection.undertemp_discharge_c]\nfault = -25.0\n", None, None,
     "protection.undertemp_discharge_c.fault", "node"),
    # the system file's [inverter] and the node's [operator] are checked by both too
    ("inverter-timeout-below-handover", "", None,
     ("[discovery]", '[inverter]\nprotocol = "pylon_lv"\ntimeout_ms = 1000\n[inverter.can]\ninterface = "virtual"\n'
                     'channel = "inv"\n\n[discovery]'), "inverter.timeout_ms", "system"),
    ("inverter-can-without-interface", "", None,
     ("[discovery]", '[inverter]\nprotocol = "pylon_lv"\n[inverter.can]\ninterface = ""\nchannel = "inv"\n\n'
                     "[discovery]"), "inverter.can.interface", "system"),
    ("mqtt-qos-3", '[operator.mqtt]\nhost = "127.0.0.1"\nqos = 3\n', None, None, "operator.mqtt.qos", "node"),
    ("uds-without-interface", '[operator.uds]\ninterface = ""\nchannel = "can0"\n', None, None,
     "operator.uds.interface", "node"),
    ("metrics-bind-not-an-address", '[operator.metrics]\nbind = "localhost"\n', None, None, "operator.metrics.bind",
     "node"),
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


def test_a_removed_setting_names_what_replaced_it(tmp_path: Path) -> None:
    node = _node_file(tmp_path, "[estimator]\nr0_step_min_a = 5.0\n")
    text = _mbms("--config", str(node), "--system", str(_system_file(tmp_path)), "--check")
    assert text.returncode == 2
    line = next(x for x in text.stdout.splitlines() if "estimator.r0_step_min_a" in x)
    assert "r0_step_min_c" in line and "C-rate" in line, line


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
@pytest.mark.usefixtures("shipped_keys")
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


LINUX_NODE1 = (PACKS / "linux_node1.toml").read_text()


def _linux_node_file(tmp_path: Path, replace: tuple[str, str]) -> Path:
    text = LINUX_NODE1.replace('extends = "example_pack.toml"', f'extends = "{PACKS / "example_pack.toml"}"')
    text = text.replace('state_dir = "/var/lib/mbms/node1"', f'state_dir = "{tmp_path / "state"}"')
    assert replace[0] in text, replace
    p = tmp_path / "linux_node.toml"
    p.write_text(text.replace(*replace, 1))
    return p


# hardware adapter "linux": the LTC6813 chain must measure exactly the pack's series elements and
# temperature sensors, and its sensor bus must be a bus python-can can open
LINUX_BAD = [
    ("afe-cells-not-series", ("ics = 6", "ics = 5"), "hardware.afe.cells_per_ic"),
    ("afe-temps-not-sensors", ("temps_per_ic = 4", "temps_per_ic = 3"), "hardware.afe.temps_per_ic"),
    ("afe-19-cells-per-ic", ("cells_per_ic = 16", "cells_per_ic = 19"), "hardware.afe.cells_per_ic"),
    ("sensor-can-without-channel", ('channel = "239.74.163.9"', 'channel = ""'), "hardware.sensor_can.channel"),
    ("no-contactor-table", ("[hardware.contactors]", "[hardware.contactorz]"), "hardware.contactorz"),
]


@pytest.mark.parametrize("replace,field", [b[1:] for b in LINUX_BAD], ids=[b[0] for b in LINUX_BAD])
def test_linux_hardware_check_and_start_agree(tmp_path: Path, replace: tuple[str, str], field: str) -> None:
    node = _linux_node_file(tmp_path, replace)
    system = _system_file(tmp_path)
    _assert_both_refuse(node, system, field, str(node))


def test_shipped_linux_node_checks_clean(tmp_path: Path) -> None:
    node = _linux_node_file(tmp_path, ("ics = 6", "ics = 6"))
    out = _mbms("--config", str(node), "--system", str(_system_file(tmp_path)), "--check", "--json")
    assert out.returncode == 0, out.stdout + out.stderr
    assert json.loads(out.stdout)["ok"] is True


@pytest.mark.parametrize("edit,field", [
    (("charge_min_c = 0\n", "charge_min_c = 50\n"), "temperature.charge_min_c"),     # window reversed
    (("discharge_max_c = 60\n", "discharge_max_c = 333\n"), "temperature.discharge_max_c"),  # kelvin for °C
    (("discharge_max_c = 60\n", "discharge_max_c = 60\nmax_c = 70\n"), "max_c"),   # unknown key
], ids=["reversed", "kelvin", "unknown-key"])
def test_a_bad_cell_temperature_window_is_refused_by_both(tmp_path: Path, edit: tuple[str, str], field: str) -> None:
    cell = (data_dir() / "cells" / "lg_m50_nmc.toml").read_text()
    assert edit[0] in cell
    (tmp_path / "my_cell.toml").write_text(cell.replace(*edit, 1))
    node = _node_file(tmp_path, '[pack]\ncell = "my_cell.toml"\n')
    report = _assert_both_refuse(node, _system_file(tmp_path), "pack.cell", str(node))
    assert field in report["expected"], report


def test_a_cell_file_without_a_temperature_window_is_a_warning(tmp_path: Path) -> None:
    cell = (data_dir() / "cells" / "lg_m50_nmc.toml").read_text()
    start = cell.index("[temperature]")
    (tmp_path / "old_cell.toml").write_text(cell[:start] + cell[cell.index("[estimator]"):])
    node = _node_file(tmp_path, '[pack]\ncell = "old_cell.toml"\n')
    out = _mbms("--config", str(node), "--system", str(_system_file(tmp_path)), "--check", "--json")
    assert out.returncode == 0, out.stdout + out.stderr
    warn = [f for f in json.loads(out.stdout)["findings"] if f["severity"] == "warning"]
    assert [(f["field"], f["file"]) for f in warn] == [("pack.cell", str(node))], warn
    assert "[temperature]" in warn[0]["expected"] and warn[0]["value"] == '"old_cell.toml"', warn


def _assert_both_refuse(node: Path, system: Path, field: str, file: str) -> dict:
    """--check --json and a real start both refuse, naming ``file`` and ``field``; the finding
    carries the value and what was expected. Returns the finding."""
    check = _mbms("--config", str(node), "--system", str(system), "--check", "--json")
    assert check.returncode == 2, check.stdout + check.stderr
    errors = [f for f in json.loads(check.stdout)["findings"] if f["severity"] == "error"]
    assert (errors[0]["field"], errors[0]["file"]) == (field, file), errors
    assert errors[0]["expected"], errors[0]
    start = _mbms("--config", str(node), "--system", str(system), "--duration", "5")
    assert start.returncode == 2, start.stdout + start.stderr
    assert "Traceback" not in start.stderr
    line = start.stderr.strip().splitlines()[-1]
    assert f"{file}: {field}:" in line, line
    return errors[0]


# ---- issue 11 item 5 on the sections added since: [inverter], [operator], the Linux adapter's
# [hardware.*] tables and a cell file's [estimator]. Each hostile value must be refused in one
# short line naming its field, before anything is allocated or opened.
HOSTILE = ["1e8", "100000000", "nan", "inf", "-1", "-1e300", '"' + "x" * 200_000 + '"']
#: hostile-looking values that are legal for one field
LEGAL = {("current_sign", "-1")}
LINUX1 = (PACKS / "linux_node1.toml").read_text()
CELL = (data_dir() / "cells" / "lg_m50_nmc.toml").read_text()
INVERTER = '\n[inverter]\nprotocol = "pylon_lv"\n[inverter.can]\ninterface = "virtual"\nchannel = "inv"\n'
OPERATOR = ('\n[operator.mqtt]\nhost = "127.0.0.1"\n[operator.metrics]\nport = 0\n'
            '[operator.uds]\ninterface = "virtual"\nchannel = "uds"\n')
#: (file kind, table, key): file kinds "system" (with [inverter]), "operator" (node1 with
#: [operator.*]), "linux" (linux_node1), "cell" (a copy of the NMC cell file)
NEWER = [
    *[("system", "inverter", k) for k in ("cycle_ms", "timeout_ms", "cvl_margin_v_per_cell", "force_charge_soc",
                                          "manufacturer", "stop_frames")],
    *[("system", "inverter.can", k) for k in ("bitrate", "interface", "channel")],
    *[("operator", "operator.mqtt", k) for k in ("port", "state_period_ms", "queue_max", "keepalive_s", "qos",
                                                 "host", "topic_prefix")],
    ("operator", "operator.metrics", "bind"), ("operator", "operator.uds", "rx_id"),
    ("operator", "operator.uds", "serial"), ("operator", "operator.uds", "channel"),
    *[("linux", "hardware.afe", k) for k in ("ics", "cells_per_ic", "spi_hz", "open_wire_every", "ntc_beta_k",
                                             "dcto_code", "device")],
    *[("linux", "hardware.sensor_can", k) for k in ("bitrate", "interface", "channel")],
    *[("linux", "hardware.current_sensor", k) for k in ("cycle_ms", "timeout_cycles", "current_sign")],
    *[("linux", "hardware.contactors", k) for k in ("neg_out", "i_open_a", "dv_closed_v", "confirm_ms", "chip")],
    ("linux", "hardware.insulation", "timeout_ms"), ("linux", "hardware", "link_timeout_ms"),
    *[("cell", "estimator", k) for k in ("model_error_v", "model_error_v_per_c", "model_error_corr_s",
                                         "full_charge_soc_sigma", "full_charge_dv_v", "full_charge_taper_c",
                                         "empty_ocv_v", "empty_current_c", "empty_soc", "empty_soc_sigma")],
]


def _set(text: str, table: str, key: str, value: str) -> str:
    """``key = value`` in ``[table]`` of a TOML text (replacing the key, or adding it)."""
    lines, out, inside, done = text.split("\n"), [], False, False
    for line in lines:
        bare = line.split("#")[0].strip()
        if bare.startswith("["):
            if inside and not done:
                out.append(f"{key} = {value}")
                done = True
            inside = bare == f"[{table}]"
        if inside and bare.split("=")[0].strip() == key:
            out.append(f"{key} = {value}")
            done = True
            continue
        out.append(line)
    if not done:
        out.append(f"{key} = {value}" if inside else f"\n[{table}]\n{key} = {value}")
    return "\n".join(out)


def _newer_files(tmp: Path, kind: str, table: str, key: str, value: str) -> tuple[Path, Path]:
    tmp.mkdir(parents=True, exist_ok=True)
    node = NODE1.replace('extends = "example_pack.toml"', f'extends = "{PACKS / "example_pack.toml"}"')
    node = node.replace('state_dir = "/var/lib/mbms/node1"', f'state_dir = "{tmp / "state"}"')
    system = SYSTEM
    if kind == "system":
        system = _set(SYSTEM + INVERTER, table, key, value)
    elif kind == "operator":
        node = _set(node + OPERATOR, table, key, value)
    elif kind == "linux":
        node = _set(LINUX1.replace('extends = "example_pack.toml"', f'extends = "{PACKS / "example_pack.toml"}"')
                    .replace('"/var/lib/mbms/node1"', f'"{tmp / "state"}"'), table, key, value)
    else:
        (tmp / "cell.toml").write_text(_set(CELL, table, key, value))
        node += f'\n[pack]\ncell = "{tmp / "cell.toml"}"\n'
    (tmp / "node.toml").write_text(node)
    (tmp / "system.toml").write_text(system)
    return tmp / "node.toml", tmp / "system.toml"


@pytest.mark.parametrize("kind,table,key", NEWER, ids=[f"{t}.{k}" for _, t, k in NEWER])
def test_hostile_values_in_newer_sections_are_one_short_line_naming_the_field(tmp_path: Path, kind: str, table: str,
                                                                             key: str) -> None:
    from mbms.config_views import load_node

    for i, value in enumerate(HOSTILE):
        if key in ("manufacturer", "host", "topic_prefix", "serial", "interface", "channel", "device", "chip", "bind") \
                and not value.startswith('"'):
            continue  # a number where a name goes is a type error (covered); the long name is the case
        if (key, value) in LEGAL:
            continue
        node, system = _newer_files(tmp_path / str(i), kind, table, key, value)
        errors = load_node(str(node), str(system)).errors
        assert errors, f"{table}.{key} = {value[:20]} accepted"
        e = errors[0]
        text = f"{e.file}: {e.field}: {e.expected}"
        # the dotted field, or (a cell file, its own TOML) the key in the cell file's message
        assert key in e.field or key in e.expected, (value[:20], text[:300])
        assert "\n" not in text and len(text) < 600, (value[:20], text[:300])


def test_a_hostile_value_in_a_newer_section_stops_a_real_start_in_one_line(tmp_path: Path) -> None:
    from test_cli_exit_codes import assert_one_line

    node, system = _newer_files(tmp_path, "linux", "hardware.contactors", "confirm_ms", "100000000")
    out = _mbms("--config", str(node), "--system", str(system), "--duration", "5")
    assert_one_line(out, 2, "mbms node: error:", f"{node}: hardware.contactors.confirm_ms:")
