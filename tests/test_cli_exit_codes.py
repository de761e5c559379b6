"""Exit codes and error lines of the ``mbms`` commands, with real processes: 0 ok, 1 a failed
check, 2 usage or configuration, 3 environment (no CAN interface, port in use, permission
denied, unreachable sensor link), 4 a bug. Environment problems are one line, never a traceback."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import types
from pathlib import Path

import pytest
from conftest import free_udp_port
from node_files import pack_file, system_file

from mbms import cli
from mbms.errors import ExitCode


def mbms(*args: str, cwd: Path, user: int | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "mbms", *args]
    if user is not None:
        cmd = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", *cmd]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, timeout=timeout)


def is_info_record(line: str) -> bool:
    if line.startswith("{"):
        return json.loads(line)["level"] in ("info", "debug")
    return " INFO " in line


def error_lines(r: subprocess.CompletedProcess[str]) -> list[str]:
    """stderr without the node's INFO log records (human or JSON lines; they come before the error)."""
    return [ln for ln in r.stderr.splitlines() if ln.strip() and not is_info_record(ln)]


def assert_one_line(r: subprocess.CompletedProcess[str], code: int, prefix: str, *parts: str) -> str:
    lines = error_lines(r)
    assert r.returncode == code, r.stderr
    assert "Traceback" not in r.stderr, r.stderr
    assert len(lines) == 1, r.stderr
    line = lines[0]
    if line.startswith("{"):  # JSON-lines logs (the config's or --log-format's choice)
        rec = json.loads(line)
        assert rec["level"] == "error" and rec["exit_code"] == code, line
        line = f"{rec['command']}: error: {rec['msg']}"
    assert line.startswith(prefix), line
    for p in parts:
        assert p in line, line
    return line


def can_system(tmp: Path, channel: str) -> Path:
    p = tmp / "system_socketcan.toml"
    p.write_text(f"""system_id = "no-can"
members = [1, 2, 3]
[transport]
kind = "can"
[transport.can]
interface = "socketcan"
channel = "{channel}"
[protocol]
close_confirm_ms = 400
[discovery]
enabled = false
[auth]
key_file = "no-can.key"
""")
    if not (tmp / "no-can.key").exists():
        from mbms.keys import new_key_file

        new_key_file(tmp / "no-can.key", "no-can")
    return p


def test_help_of_every_command_documents_exit_codes_and_logging(tmp_path: Path) -> None:
    top = mbms("--help", cwd=tmp_path)
    assert top.returncode == 0 and "exit codes:" in top.stdout and "--log-format" in top.stdout
    for cmd in [*cli.COMMANDS, "bench core", "bench soc"]:
        r = mbms(*cmd.split(), "--help", cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        text = " ".join(r.stdout.split())
        for needle in ("exit codes:", "0 ok", "2 usage or configuration", "3 environment",
                       "-v, --verbose", "--log-level", "--log-format {human,json}"):
            assert needle in text, (cmd, needle)
        assert f"1 {cli.FAILED_CHECK[cmd.split()[0]]}" in text, cmd


def test_usage_and_config_errors_exit_2_in_one_line(tmp_path: Path) -> None:
    assert_one_line(mbms("sim", "--no-such-option", cwd=tmp_path), 2, "mbms: error: unrecognized arguments")
    assert_one_line(mbms("node", "--config", "node1", cwd=tmp_path), 2, "mbms node: error: --system")
    bad = tmp_path / "bad.toml"
    bad.write_text('[scenario]\nextends = "default"\nduration_s = -5\n')
    assert_one_line(mbms("sim", "--scenario", str(bad), cwd=tmp_path), 2, "mbms sim: error:", str(bad),
                    "scenario.duration_s")
    r = mbms("--log-format", "json", "sim", "--scenario", str(bad), cwd=tmp_path)
    assert r.returncode == 2
    rec = json.loads(r.stderr.strip().splitlines()[-1])
    assert rec["level"] == "error" and rec["exit_code"] == 2 and "scenario.duration_s" in rec["msg"]


def test_socketcan_without_a_can_interface_exits_3_in_one_line(tmp_path: Path) -> None:
    # This kernel has no CAN at all (EAFNOSUPPORT); on one with CAN the made-up channel does not
    # exist (ENODEV): both are the machine, not the config.
    pack = pack_file(tmp_path, 1, f"udp://127.0.0.1:{free_udp_port()}", with_engine=True)
    sysf = can_system(tmp_path, "mbmsnocan9")
    r = mbms("node", "--config", str(pack), "--system", str(sysf), "--duration", "5", cwd=tmp_path)
    assert_one_line(r, 3, "mbms node: error: peer transport can:socketcan:mbmsnocan9:")
    # the same through the monitor, and with JSON lines requested
    r = mbms("monitor", "--system", str(sysf), "--once", "--duration", "1", "--log-format", "json", cwd=tmp_path)
    assert r.returncode == 3 and "Traceback" not in r.stderr
    rec = json.loads(r.stderr.strip().splitlines()[-1])
    assert rec["exit_code"] == 3 and rec["msg"].startswith("peer transport can:socketcan:mbmsnocan9")


def test_verbose_shows_the_cause_of_an_environment_problem(tmp_path: Path) -> None:
    pack = pack_file(tmp_path, 1, f"udp://127.0.0.1:{free_udp_port()}", with_engine=True)
    r = mbms("-v", "node", "--config", str(pack), "--system", str(can_system(tmp_path, "mbmsnocan9")),
             "--duration", "5", cwd=tmp_path)
    assert r.returncode == 3
    records = [json.loads(ln) for ln in r.stderr.splitlines()]  # the pack file asks for JSON lines
    cause = [rec for rec in records if rec["msg"] == "environment problem"]
    assert cause and cause[0]["level"] == "debug" and "Traceback" in cause[0]["exc"]  # asked for with -v
    assert records[-1]["level"] == "error" and records[-1]["msg"].startswith("peer transport")
    # --log-level after the command and --log-format over the config's: no INFO lines, one human error line
    r = mbms("node", "--config", str(pack), "--system", str(can_system(tmp_path, "mbmsnocan9")),
             "--duration", "5", "--log-level", "error", "--log-format", "human", cwd=tmp_path)
    assert r.returncode == 3 and r.stderr.count("\n") == 1, r.stderr
    assert r.stderr.startswith("mbms node: error: peer transport")


def test_port_in_use_exits_3_in_one_line(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        r = mbms("plant", "--system", "example_plant", "--listen", f"udp://127.0.0.1:{port}", "--duration", "5",
                 cwd=tmp_path)
    assert_one_line(r, 3, f"mbms plant: error: --listen udp://127.0.0.1:{port}: address already in use")


def test_unreachable_sensor_link_exits_3_in_one_line(tmp_path: Path) -> None:
    pack = pack_file(tmp_path, 1, f"unix://{tmp_path}/no_plant.sock", with_engine=True)
    sysf = system_file(tmp_path, [1, 2, 3], "udp", free_udp_port())
    r = mbms("node", "--config", str(pack), "--system", str(sysf), "--duration", "5", cwd=tmp_path)
    assert_one_line(r, 3, f"mbms node: error: sensor link unix://{tmp_path}/no_plant.sock:", "no such file")


@pytest.mark.skipif(shutil.which("setpriv") is None and os.geteuid() == 0, reason="needs setpriv to drop root")
def test_permission_denied_exits_3_in_one_line(tmp_path: Path) -> None:
    # A port below net.ipv4.ip_unprivileged_port_start needs a privilege an ordinary user lacks.
    start = int(Path("/proc/sys/net/ipv4/ip_unprivileged_port_start").read_text())
    if start <= 80:
        pytest.skip("ordinary users may bind port 80 on this kernel")
    tmp_path.chmod(0o777)
    user = 65534 if os.geteuid() == 0 else None  # nobody
    r = mbms("plant", "--system", "example_plant", "--listen", "udp://127.0.0.1:80", "--duration", "5",
             cwd=tmp_path, user=user)
    assert_one_line(r, 3, "mbms plant: error: --listen udp://127.0.0.1:80: permission denied")


def test_a_member_never_seen_exits_1(tmp_path: Path) -> None:
    sysf = system_file(tmp_path, [1, 2], "udp", free_udp_port())
    r = mbms("monitor", "--system", str(sysf), "--once", "--duration", "0.5", "--json", cwd=tmp_path)
    assert r.returncode == 1, r.stderr
    peers = json.loads(r.stdout)["peers"]
    assert [p["peer_messages"] for p in peers] == [0, 0]


def test_a_bug_exits_4_with_its_traceback(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    def register(sub: object) -> None:
        p = sub.add_parser("boom")  # type: ignore[attr-defined]
        p.set_defaults(func=lambda args: {}["missing key"])

    monkeypatch.setitem(sys.modules, "mbms.commands.boom", types.SimpleNamespace(register=register))
    monkeypatch.setattr(cli, "COMMANDS", (*cli.COMMANDS, "boom"))
    monkeypatch.setitem(cli.FAILED_CHECK, "boom", "not used")
    assert cli.main(["boom"]) == ExitCode.INTERNAL == 4
    err = capsys.readouterr().err
    assert "Traceback" in err and "KeyError: 'missing key'" in err.splitlines()[-1]
