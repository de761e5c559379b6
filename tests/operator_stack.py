"""A real plant and real `mbms node` processes (Rust NodeCore) with `[operator]` tables, and a
real mosquitto broker: what the operator-gateway tests run against."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest
from conftest import Proc, free_udp_port, wait_for
from node_files import pack_file, system_file

from mbms.paths import data_dir
from mbms.plant_link import pack, unpack

MOSQUITTO = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if os.path.exists("/usr/sbin/mosquitto") else None)


def free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def plant_cmd(link: str, op: dict) -> dict:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(f"\0mbms-op-test-{os.getpid()}-{id(op)}")
    with s:
        s.settimeout(2)
        s.sendto(pack(op), link.removeprefix("unix://"))
        return unpack(s.recv(65536))


def start_plant(procs: list[Proc], tmp: Path, soc: float = 0.60) -> str:
    link = f"unix://{tmp}/plant.sock"
    text = re.sub(r"(?m)^initial_soc = [0-9.]+", f"initial_soc = {soc:.2f}",
                  (data_dir() / "systems" / "example_plant.toml").read_text())
    plant = tmp / "plant_equal_soc.toml"
    plant.write_text(text)
    p = Proc(["-m", "mbms", "plant", "--system", str(plant), "--listen", link, "--command-timeout", "0.5", "--load-a", "0"])
    procs.append(p)
    p.read_until(lambda s: s.startswith("plant serving"), 30)
    return link


def node_pack(tmp: Path, k: int, link: str, operator: str = "", extra: str = "", **node: object) -> Path:
    p = pack_file(tmp, k, link, period_ms=100, with_engine=True, **node)
    p.write_text(p.read_text() + "\n" + extra + "\n" + operator)
    return p


def start_node(procs: list[Proc], pack: Path, system: Path, env: dict[str, str] | None = None) -> Proc:
    p = Proc(["-m", "mbms", "node", "--config", str(pack), "--system", str(system)], env=env)
    procs.append(p)
    return p


def can_system(tmp: Path, members: list[int]) -> Path:
    return system_file(tmp, members, "can", free_udp_port())


class Mosquitto:
    """A mosquitto broker on a free loopback port (optionally with a password file)."""

    def __init__(self, tmp: Path, users: dict[str, str] | None = None, port: int | None = None,
                 tls: tuple[Path, Path, Path] | None = None) -> None:
        if MOSQUITTO is None:
            pytest.skip("mosquitto is not installed (apt-get install -y mosquitto; .ci/run installs it)")
        self.port = port or free_tcp_port()
        self.dir = Path(tempfile.mkdtemp(dir=tmp))
        conf = [f"listener {self.port} 127.0.0.1", "persistence false", "log_dest stderr"]
        if os.geteuid() == 0:  # as root mosquitto drops to user 'mosquitto', who cannot read the test's tmp dir
            conf.append("user root")
        if users:
            pw = self.dir / "passwd"
            for i, (u, p) in enumerate(users.items()):
                subprocess.run(["mosquitto_passwd", "-b", *([] if i else ["-c"]), str(pw), u, p], check=True)
            os.chmod(pw, 0o600)
            conf += ["allow_anonymous false", f"password_file {pw}"]
        else:
            conf.append("allow_anonymous true")
        if tls:
            ca, cert, key = tls
            conf += [f"cafile {ca}", f"certfile {cert}", f"keyfile {key}"]
        self.conf = self.dir / "mosquitto.conf"
        self.conf.write_text("\n".join(conf) + "\n")
        self.p: subprocess.Popen | None = None
        self.start()

    def start(self) -> None:
        self.log = open(self.dir / "mosquitto.log", "a")
        self.p = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)], stdout=self.log, stderr=self.log)

        def up() -> bool:
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return True
            except OSError:
                return False
        wait_for(up, 10, "mosquitto listening")

    def stop(self) -> None:
        if self.p is not None and self.p.poll() is None:
            self.p.kill()
            self.p.wait(5)


class Subscriber:
    """A paho-mqtt client that keeps the latest payload of every topic (and every event)."""

    def __init__(self, port: int, topics: list[str], username: str | None = None, password: str | None = None) -> None:
        import threading

        import paho.mqtt.client as mqtt

        self.latest: dict[str, bytes] = {}
        self.all: list[tuple[str, bytes]] = []
        self.lock = threading.Lock()
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"test-sub-{os.getpid()}-{id(self)}")
        if username:
            self.c.username_pw_set(username, password)

        def on_connect(c, u, f, rc, p=None):  # type: ignore[no-untyped-def]
            for t in topics:
                c.subscribe(t, qos=1)
            self.connected = True

        def on_message(c, u, m):  # type: ignore[no-untyped-def]
            with self.lock:
                self.latest[m.topic] = m.payload
                self.all.append((m.topic, m.payload))
        self.connected = False

        def on_disconnect(c, u, f, rc, p=None):  # type: ignore[no-untyped-def]
            self.connected = False
        self.c.on_disconnect = on_disconnect
        self.c.reconnect_delay_set(1, 2)
        self.c.on_connect = on_connect
        self.c.on_message = on_message
        self.c.connect("127.0.0.1", port, 30)
        self.c.loop_start()

    def get(self, topic: str) -> bytes | None:
        with self.lock:
            return self.latest.get(topic)

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()
