"""Registries of transports and hardware adapters (entry points, python-can style): a third-party
adapter installs as its own distribution and a real node uses it, without editing mbms.

The "installed" distribution is a tiny ``.dist-info`` (METADATA + entry_points.txt) next to its
module in a temporary folder on ``sys.path`` / ``PYTHONPATH``: exactly what an installer leaves in
site-packages, and what importlib.metadata reads.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from mbms import registry
from mbms.config_views import load_node, load_system
from mbms.errors import ConfigError
from mbms.hardware import Hardware, make_hardware
from mbms.paths import data_dir
from mbms.transport import Transport, make_transport
from conftest import free_udp_port
from node_files import system_file

ADAPTER = '''
"""A third-party hardware adapter: a bench emulator of a pack at rest (all cells at one voltage,
no current); the contactors' auxiliary contacts follow the commands; every command is logged."""
import json
import time

import numpy as np

from mbms.hardware.base import Hardware
from mbms.types import Contactors, Measurement


class BenchPack(Hardware):
    @classmethod
    def from_config(cls, cfg):
        return cls(cfg.options)

    def __init__(self, options):
        self.v_cell_v = float(options["v_cell_v"])
        self.series = int(options["series"])
        self.temp_sensors = int(options["temp_sensors"])
        self.log = open(options["command_log"], "a")
        self.feedback = Contactors()
        self.t0 = time.monotonic()

    async def start(self):
        pass

    def read(self):
        now = time.monotonic()
        m = Measurement(t_s=now - self.t0, v_cell_v=np.full(self.series, self.v_cell_v),
                        t_cell_c=np.full(self.temp_sensors, 25.0), i_a=0.0,
                        v_string_v=self.v_cell_v * self.series, v_bus_v=0.0, feedback=self.feedback)
        return m, now

    def command(self, contactors, balance):
        self.feedback = contactors
        self.log.write(json.dumps({"contactors": list(contactors.as_tuple()), "balance": int(balance.sum())}) + "\\n")
        self.log.flush()

    def link_ok(self, now):
        return True

    def close(self):
        self.log.close()


class NotAnAdapter:
    pass
'''


def install_plugin(folder: Path) -> Path:
    """Write the module and its dist-info (one distribution with two entry points)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "mbms_benchpack.py").write_text(ADAPTER)
    info = folder / "mbms_benchpack-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: mbms-benchpack\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(textwrap.dedent("""\
        [mbms.hardware]
        benchpack = mbms_benchpack:BenchPack
        wrongkind = mbms_benchpack:NotAnAdapter
        """))
    return folder


def bench_pack_file(tmp: Path, log: Path, adapter: str = "benchpack") -> Path:
    base = data_dir() / "packs" / "example_pack.toml"
    engine = load_pack_engine(base)
    p = tmp / "bench_pack.toml"
    p.write_text(textwrap.dedent(f"""\
        extends = "{base}"

        [node]
        id = 1
        state_dir = "{tmp}/state"
        control_period_ms = 100
        estimation_period_ms = 100
        log_format = "json"

        [hardware]
        adapter = "{adapter}"

        [hardware.options]
        v_cell_v = 3.7
        series = {engine["series"]}
        temp_sensors = {engine["temp_sensors"]}
        command_log = "{log}"
        """))
    return p


def load_pack_engine(base: Path) -> dict[str, int]:
    """series and temp_sensors of the shipped example pack, as the core normalised them."""
    text = base.read_text()
    import tomllib

    pack = tomllib.loads(text)["pack"]
    return {"series": int(pack["series"]), "temp_sensors": int(pack["temp_sensors"])}


def test_builtins_are_registered() -> None:
    assert {"can", "udp"} <= set(registry.names(registry.TRANSPORTS))
    assert "sim" in registry.names(registry.HARDWARE)
    assert issubclass(registry.load(registry.HARDWARE, "sim", Hardware, "hardware.adapter"), Hardware)
    assert issubclass(registry.load(registry.TRANSPORTS, "udp", Transport, "transport.kind"), Transport)


def test_unknown_names_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as e:
        registry.load(registry.HARDWARE, "nope", Hardware, "hardware.adapter", "pack.toml")
    assert e.value.field == "hardware.adapter" and "'nope'" in e.value.message and "sim" in e.value.message
    # a system file naming a transport nobody installed: refused with the field named
    sys_path = system_file(tmp_path, [1], "udp", free_udp_port())
    sys_path.write_text(sys_path.read_text().replace('kind = "udp"', 'kind = "carrier-pigeon"')
                        .replace("[transport.udp]", "[transport.options]"))
    with pytest.raises(ConfigError) as e:
        load_system(sys_path)
    assert e.value.field == "transport.kind" and "carrier-pigeon" in e.value.message


def test_third_party_adapter_in_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = tmp_path / "commands.jsonl"
    pack_path = bench_pack_file(tmp_path, log)
    sys_path = system_file(tmp_path, [1], "udp", free_udp_port())
    # not installed yet: --check's finding and a start's error name the field
    files = load_node(pack_path, sys_path)
    assert [(f.field, f.value) for f in files.errors] == [("hardware.adapter", "'benchpack'")]

    monkeypatch.syspath_prepend(str(install_plugin(tmp_path / "site")))
    assert "benchpack" in registry.names(registry.HARDWARE)
    files = load_node(pack_path, sys_path)
    assert files.errors == ()
    assert files.pack is not None
    assert files.pack.hardware.options["command_log"] == str(log)
    hw = make_hardware(files.pack.hardware, files.pack.source)
    assert type(hw).__name__ == "BenchPack" and type(hw).__module__ == "mbms_benchpack"
    hw.close()
    with pytest.raises(ConfigError) as e:
        registry.load(registry.HARDWARE, "wrongkind", Hardware, "hardware.adapter")
    assert "not a mbms.hardware.base.Hardware subclass" in e.value.message
    # the built-in transports are still found through the same registry
    assert files.system is not None
    assert type(make_transport(files.system, 1)).__name__ == "UdpTransport"


def test_real_node_start_uses_the_installed_adapter(tmp_path: Path) -> None:
    """``mbms node`` in its own process, with the plug-in only on PYTHONPATH: the node reads the
    adapter's samples and sends it its commands every control period."""
    site = install_plugin(tmp_path / "site")
    log = tmp_path / "commands.jsonl"
    pack_path = bench_pack_file(tmp_path, log)
    sys_path = system_file(tmp_path, [1], "udp", free_udp_port())
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]))
    check = subprocess.run([sys.executable, "-m", "mbms", "node", "--config", str(pack_path), "--system",
                            str(sys_path), "--check"], env=env, capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    run = subprocess.run([sys.executable, "-m", "mbms", "node", "--config", str(pack_path), "--system",
                          str(sys_path), "--duration", "3"], env=env, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr
    commands = [json.loads(line) for line in log.read_text().splitlines()]
    # 3 s at a 100 ms control period: ~30 commands; allow for start-up and a loaded machine
    assert len(commands) >= 10, commands
    assert all(len(c["contactors"]) == 3 for c in commands)
    # without the plug-in on the path the same start is refused, naming the field
    env_without = dict(os.environ)
    refused = subprocess.run([sys.executable, "-m", "mbms", "node", "--config", str(pack_path), "--system",
                              str(sys_path), "--duration", "3"], env=env_without, capture_output=True, text=True,
                             timeout=60)
    assert refused.returncode != 0
    assert "hardware.adapter" in refused.stdout + refused.stderr
