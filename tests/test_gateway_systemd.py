"""systemd supervision: a real `mbms node` process gets the notify socket systemd would give it
(``$NOTIFY_SOCKET``, ``$WATCHDOG_USEC``); it sends READY=1 after its first control period and
WATCHDOG=1 from the control loop; when the loop stalls the pings stop (systemd would kill and
restart it); the shipped unit is Type=notify with a watchdog; the event log stays bounded."""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path

from conftest import Proc, wait_for
from operator_stack import can_system, node_pack, start_node, start_plant

from mbms.paths import data_dir


def test_ready_watchdog_pings_and_stall(tmp_path: Path, procs: list[Proc]) -> None:
    link = start_plant(procs, tmp_path)
    system = can_system(tmp_path, [1])
    sock_path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(sock_path)
    sock.settimeout(0.05)
    node = start_node(procs, node_pack(tmp_path, 1, link), system,
                      env={"NOTIFY_SOCKET": sock_path, "WATCHDOG_USEC": "400000"})  # pings every 0.2 s
    got: list[tuple[float, str]] = []

    def recv_until(pred, timeout_s: float, what: str) -> None:  # type: ignore[no-untyped-def]
        def step() -> bool:
            try:
                got.append((time.monotonic(), sock.recv(4096).decode()))
            except socket.timeout:
                pass
            return pred()
        wait_for(step, timeout_s, what, poll_s=0)

    recv_until(lambda: any(m.startswith("READY=1") for _, m in got), 30, "READY=1")
    ready = next(m for _, m in got if m.startswith("READY=1"))
    assert f"MAINPID={node.p.pid}" in ready
    recv_until(lambda: sum(m == "WATCHDOG=1" for _, m in got) >= 10, 10, "ten watchdog pings")
    pings = [t for t, m in got if m == "WATCHDOG=1"]
    gaps = [b - a for a, b in zip(pings[-9:], pings[-8:])]
    assert max(gaps) < 0.4, gaps  # within WATCHDOG_USEC: systemd would not fire

    # stall the loop (the process stops being scheduled): the pings stop
    os.kill(node.p.pid, signal.SIGSTOP)
    stalled_at = time.monotonic()
    try:
        while sock.recv(4096):  # drain what was sent before the stop
            pass
    except socket.timeout:
        pass
    end = stalled_at + 1.0  # an observation window of 2.5 x WATCHDOG_USEC: no ping may arrive in it
    while time.monotonic() < end:
        try:
            msg = sock.recv(4096).decode()
        except socket.timeout:
            continue
        assert msg != "WATCHDOG=1", "a stalled loop still pinged the watchdog"
    os.kill(node.p.pid, signal.SIGCONT)
    got.clear()
    recv_until(lambda: any(m == "WATCHDOG=1" for _, m in got), 10, "pings again after the stall")
    node.p.terminate()
    recv_until(lambda: any(m == "STOPPING=1" for _, m in got), 10, "STOPPING=1 on SIGTERM")
    node.p.wait(10)
    sock.close()


def test_shipped_unit_is_notify_with_watchdog() -> None:
    import configparser

    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read_string((data_dir() / "linux" / "mbms-node@.service").read_text())
    svc = unit["Service"]
    assert svc["Type"] == "notify" and svc["WatchdogSec"] and svc["Restart"] == "always"
    assert svc["User"] == "mbms" and svc["NoNewPrivileges"] == "yes" and "CapabilityBoundingSet" in svc
    net = configparser.ConfigParser(strict=False, interpolation=None)
    net.optionxform = str  # type: ignore[assignment,method-assign]
    net.read_string((data_dir() / "linux" / "80-mbms-can.network").read_text())
    assert net["Match"]["Name"] == "can0" and net["CAN"]["BitRate"] == "500K"


def test_event_log_rotates_at_its_bound(tmp_path: Path) -> None:
    from mbms.node.persistence import StateStore

    store = StateStore(tmp_path, 1, events_max_bytes=4096, events_keep=2)
    for i in range(2000):
        store.event("tick", i=i, pad="x" * 40)
    store.close()
    files = [tmp_path / "events.jsonl", *store.rotated_paths()]
    assert [p.name for p in files] == ["events.jsonl", "events.jsonl.1", "events.jsonl.2"]
    assert not (tmp_path / "events.jsonl.3").exists()
    line = 100  # one record is under 100 bytes here
    assert all(p.stat().st_size < 4096 + line for p in files)
    # the newest record is in the live file, the older ones in order in .1 and .2
    last = StateStore(tmp_path, 1).read_events()[-1]
    assert last["i"] == 1999 and store.rotations >= 20
