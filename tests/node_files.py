"""Writers of pack/system files for tests (each test gets its own ports and state dirs)."""

from __future__ import annotations

from pathlib import Path

from mbms.keys import new_key_file
from mbms.paths import data_dir


def pack_file(tmp: Path, k: int, link: str, period_ms: int = 50, with_engine: bool = False, **node: object) -> Path:
    extra = "".join(f"{key} = {v!r}\n".replace("'", '"') for key, v in node.items())
    # the engine tables come from the shipped example pack (extends), as in node1..4.toml;
    # with_engine is kept for callers that ask for them explicitly
    base = data_dir() / "packs" / "example_pack.toml"
    text = f"""extends = "{base}"

[node]
id = {k}
state_dir = "{tmp}/state{k}"
control_period_ms = {period_ms}
estimation_period_ms = {period_ms}
telemetry_period_ms = 100
state_save_ms = 200
stale_ms = 400
overrun_ms = 400
log_format = "json"
{extra}
[hardware]
adapter = "sim"
link = "{link}"
string = {k - 1}
link_timeout_ms = 300
"""
    p = tmp / f"node{k}.toml"
    p.write_text(text)
    return p


def system_file(tmp: Path, members: list[int], kind: str, port: int, discovery: bool = False,
                system_id: str = "test-sys", group: str = "239.255.77.2", iface: str = "127.0.0.1") -> Path:
    if kind == "can":
        transport = f"""[transport]
kind = "can"
[transport.can]
interface = "udp_multicast"
channel = "239.74.163.2"
port = {port}
"""
    else:
        transport = f"""[transport]
kind = "udp"
[transport.udp]
group = "{group}"
port = {port}
interface = "{iface}"
"""
    text = f"""system_id = "{system_id}"
members = {members}
heartbeat_ms = 100
lease_ms = 4000
dv_close_v = 3.0
{transport}
[protocol]
close_confirm_ms = 400
precharge_timeout_ms = 2000
dwell_ms = 200

[discovery]
enabled = {"true" if discovery else "false"}
interfaces = ["{iface}"]
"""
    key = tmp / f"system_{port}.key"
    if not key.exists():
        new_key_file(key, system_id)
    text += f'\n[auth]\nkey_file = "{key}"\n'
    p = tmp / f"system_{kind}_{port}.toml"
    p.write_text(text)
    return p
