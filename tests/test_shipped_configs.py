"""Issue 11 item 2: every shipped system and pack file starts a real node.

The shipped CAN system file said ``[discovery] interfaces = []`` ("all") and every node started
from it died before its loop (``TypeError: choice must be a list or InterfaceChoice, got 'all'``)
while ``--check`` passed it. Here each shipped system file is started with each shipped node
pack file, as real ``mbms node`` processes against the shipped plant (``mbms plant``), and each
must log that its control loop runs and stop cleanly on SIGTERM.

Files are found through :func:`mbms.paths.hw_dir` (wherever the package keeps them). The copies
started change only what must differ per test run on a shared machine: the state directory, the
plant link, the peer network's port and the system id (other runs may use the same files at the
same time); everything else, including ``[discovery]``, is as shipped. A system file naming
``socketcan`` is first started exactly as shipped: this machine has no SocketCAN, so the node
must stop with a one-line environment error (exit code 3) naming its peer transport;
then it is started as a user of this machine would run it, with ``interface = "udp_multicast"``.
"""

from __future__ import annotations

import copy
import os
import signal
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import tomli_w
from conftest import Proc, free_udp_port, wait_for
from test_cli_exit_codes import assert_one_line

from mbms.paths import hw_dir

LOOP_LINE = "control loop running"


def _toml(p: Path) -> dict[str, Any]:
    return tomllib.loads(p.read_text())


def _shipped(kind: str, key: str) -> list[Path]:
    return sorted(p for p in (hw_dir() / kind).glob("*.toml") if key in _toml(p))


SYSTEMS = _shipped("systems", "transport")  # system files (plant descriptions live there too)
NODE_PACKS = _shipped("packs", "node")  # pack files with a node table (one per BMU)
PLANTS = _shipped("systems", "strings")


def test_every_shipped_file_is_classified() -> None:
    """Every file in packs/ is a node pack or an engine-only pack (the engine tables that
    mbms sim, demo and bench use), every file in systems/ a system file or a plant: a new file
    is started by the test below or fails here."""
    from mbms.engine import PackConfig

    assert SYSTEMS and NODE_PACKS and PLANTS
    for p in sorted((hw_dir() / "packs").glob("*.toml")):
        if p not in NODE_PACKS:
            PackConfig.from_toml(p)  # an engine-only pack must at least be a valid engine config
    assert set((hw_dir() / "systems").glob("*.toml")) == set(SYSTEMS) | set(PLANTS)


def _node(pack: Path, system: Path) -> Proc:
    return Proc(["-m", "mbms", "node", "--config", str(pack), "--system", str(system)])


def _stderr(p: Proc) -> str:
    p.err.flush()
    p.err.seek(0)
    return p.err.read()


def _packs_for(tmp: Path, link: str, sensor_port: int = 0) -> list[Path]:
    out = []
    for src in NODE_PACKS:
        d = _toml(src)
        d["node"]["state_dir"] = str(tmp / "state" / src.stem)
        hw = d["hardware"]
        if hw["adapter"] == "linux":  # the plant's emulated devices (mbms plant --devices tmp/dev)
            hw["afe"]["device"] = hw["afe"]["device"].replace("/tmp/mbms-devices", str(tmp / "dev"))
            hw["contactors"]["chip"] = hw["contactors"]["chip"].replace("/tmp/mbms-devices", str(tmp / "dev"))
            hw["sensor_can"]["port"] = sensor_port
        else:
            hw["link"] = link
        if "extends" in d:  # the shipped base file (engine tables), wherever the copy goes
            d["extends"] = str((src.parent / d["extends"]).resolve())
        dst = tmp / "packs" / src.name
        dst.parent.mkdir(exist_ok=True)
        dst.write_text(tomli_w.dumps(d))
        out.append(dst)
    return out


def _system_copy(src: Path, dst: Path, port: int, interface: str | None = None) -> Path:
    d = copy.deepcopy(_toml(src))
    d["system_id"] = f"{d['system_id']}-t{port}"
    t = d["transport"]
    if t["kind"] == "udp":
        t["udp"]["port"] = port
    else:
        t["can"]["port"] = port
        if interface is not None:
            t["can"]["interface"] = interface
            t["can"]["channel"] = "239.74.163.2"  # python-can's IPv4 group for udp_multicast
    dst.write_text(tomli_w.dumps(d))
    # the system's message keys, provisioned as a user does (the shipped file names the key file
    # next to it; a node refuses to start without it)
    key = dst.parent / d["auth"]["key_file"]
    if not key.exists():
        subprocess.run([sys.executable, "-m", "mbms", "keys", "new", str(key), "--system", d["system_id"]],
                       check=True, capture_output=True, text=True, timeout=60)
    return dst


@pytest.mark.parametrize("system_src", SYSTEMS, ids=lambda p: p.stem)
def test_shipped_system_starts_every_shipped_pack(system_src: Path, tmp_path: Path, procs: list[Proc]) -> None:
    link = f"unix://{tmp_path}/plant.sock"
    sensor_port = free_udp_port()
    plant = Proc(["-m", "mbms", "plant", "--system", str(PLANTS[0]), "--listen", link,
                  "--devices", str(tmp_path / "dev"), "--sensor-can-port", str(sensor_port)])
    procs.append(plant)
    plant.read_until(lambda s: s.startswith("plant serving"), 60)
    packs = _packs_for(tmp_path, link, sensor_port)
    port = free_udp_port()
    shipped = _toml(system_src)
    if shipped["transport"]["kind"] == "can" and shipped["transport"]["can"].get("interface", "socketcan") == "socketcan":
        as_shipped = _system_copy(system_src, tmp_path / "as_shipped.toml", port)
        out = subprocess.run([sys.executable, "-m", "mbms", "node", "--config", str(packs[0]), "--system",
                              str(as_shipped)], capture_output=True, text=True, timeout=60)
        can = shipped["transport"]["can"]
        assert_one_line(out, 3, f"mbms node: error: peer transport can:socketcan:{can['channel']}:")
        system = _system_copy(system_src, tmp_path / system_src.name, port, interface="udp_multicast")
    else:
        system = _system_copy(system_src, tmp_path / system_src.name, port)
    nodes = [_node(p, system) for p in packs]
    procs.extend(nodes)
    for pack, n in zip(packs, nodes):
        wait_for(lambda n=n: LOOP_LINE in _stderr(n) or n.p.poll() is not None, 90, f"{pack.name}: the loop")
        assert n.p.poll() is None and LOOP_LINE in _stderr(n), f"{pack.name} exited {n.p.poll()}: {_stderr(n)[-2000:]}"
    for n in nodes:
        n.p.send_signal(signal.SIGTERM)
    for pack, n in zip(packs, nodes):
        assert n.p.wait(30) == 0, f"{pack.name}: {_stderr(n)[-2000:]}"
        assert "Traceback" not in _stderr(n), _stderr(n)[-3000:]
