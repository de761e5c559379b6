"""Two network namespaces on a bridge (in a third namespace): the UDP transport and zeroconf work
across them, an nftables/iptables rule cuts the link (partition) and removing it heals it.

Needs root and ``ip netns``; skips with the reason otherwise. Only addresses inside the namespaces
created here are used; everything is removed in a finalizer.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import TESTS, Proc
from node_files import system_file

SUFFIX = f"{os.getpid() % 10000}"
NS_A, NS_B, NS_BR = f"mbmsA{SUFFIX}", f"mbmsB{SUFFIX}", f"mbmsBr{SUFFIX}"
IP_A, IP_B = "10.77.0.1", "10.77.0.2"


def _sh(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), capture_output=True, text=True, check=check)


def _unavailable() -> str | None:
    if os.geteuid() != 0:
        return "network namespaces need root"
    if not shutil.which("ip"):
        return "iproute2 (ip) not installed"
    if not (shutil.which("nft") or shutil.which("iptables")):
        return "neither nft nor iptables installed"
    probe = f"mbmsProbe{SUFFIX}"
    r = _sh("ip", "netns", "add", probe, check=False)
    if r.returncode != 0:
        return f"ip netns unavailable: {r.stderr.strip()}"
    _sh("ip", "netns", "del", probe, check=False)
    return None


@pytest.fixture(scope="module")
def netns() -> Iterator[None]:
    reason = _unavailable()
    if reason:
        pytest.skip(reason)
    try:
        for ns in (NS_A, NS_B, NS_BR):
            _sh("ip", "netns", "add", ns)
            _sh("ip", "-n", ns, "link", "set", "lo", "up")
        _sh("ip", "-n", NS_BR, "link", "add", "br0", "type", "bridge")
        _sh("ip", "-n", NS_BR, "link", "set", "br0", "up")
        for ns, ip in ((NS_A, IP_A), (NS_B, IP_B)):
            _sh("ip", "link", "add", "veth0", "netns", ns, "type", "veth", "peer", "name", f"p{ns[-6:]}", "netns", NS_BR)
            _sh("ip", "-n", NS_BR, "link", "set", f"p{ns[-6:]}", "master", "br0", "up")
            _sh("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", "veth0")
            _sh("ip", "-n", ns, "link", "set", "veth0", "up")
            _sh("ip", "-n", ns, "route", "add", "224.0.0.0/4", "dev", "veth0")
        yield
    finally:
        for ns in (NS_A, NS_B, NS_BR):
            _sh("ip", "netns", "del", ns, check=False)


def _in_ns(ns: str, script: str, *args: str) -> Proc:
    return Proc(["-c", f"import os,sys; os.execvp('ip', ['ip','netns','exec','{ns}','{sys.executable}',"
                       f"'{TESTS / 'procs' / script}', *sys.argv[1:]])", *args])


def _cut(on: bool) -> None:
    """Partition: drop everything from B arriving in A (and A's packets to B)."""
    if shutil.which("nft"):
        if on:
            _sh("ip", "netns", "exec", NS_A, "nft", "add table inet mbms")
            _sh("ip", "netns", "exec", NS_A, "nft", "add chain inet mbms in { type filter hook input priority 0 ; }")
            _sh("ip", "netns", "exec", NS_A, "nft", "add chain inet mbms out { type filter hook output priority 0 ; }")
            _sh("ip", "netns", "exec", NS_A, "nft", f"add rule inet mbms in ip saddr {IP_B} drop")
            _sh("ip", "netns", "exec", NS_A, "nft", "add rule inet mbms out oifname veth0 drop")
        else:
            _sh("ip", "netns", "exec", NS_A, "nft", "delete table inet mbms")
    else:
        op = "-A" if on else "-D"
        _sh("ip", "netns", "exec", NS_A, "iptables", op, "INPUT", "-s", IP_B, "-j", "DROP")
        _sh("ip", "netns", "exec", NS_A, "iptables", op, "OUTPUT", "-o", "veth0", "-j", "DROP")


def _client(procs: list[Proc], port: int, count: int, timeout: float) -> dict:
    c = _in_ns(NS_B, "udp_client.py", str(port), IP_B, "ns-sys", str(count), str(timeout))
    procs.append(c)
    return c.read_json("ok", 60)


def test_udp_transport_across_namespaces_partition_and_heal(netns: None, procs: list[Proc]) -> None:
    port = 47311
    peer = _in_ns(NS_A, "can_peer.py", "udp", str(port), "2", "1,2", "ns-sys", IP_A)
    procs.append(peer)
    peer.read_until(lambda s: s.strip() == "ready", 15)
    assert _client(procs, port, 5, 2.0)["ok"] == 5
    _cut(True)
    try:
        cut = _client(procs, port, 3, 0.5)
        assert cut["ok"] == 0 and cut["stats"]["sent_messages"] == 3
    finally:
        _cut(False)
    assert _client(procs, port, 5, 2.0)["ok"] == 5


def test_zeroconf_across_namespaces(netns: None, procs: list[Proc], tmp_path: Path) -> None:
    system = system_file(tmp_path, [1, 2], "udp", 47312, discovery=True, system_id="ns-sys", iface=IP_A)
    a = _in_ns(NS_A, "disc_peer.py", str(system), "1", IP_A, "1")
    b = _in_ns(NS_B, "disc_peer.py", str(system), "2", IP_B, "1")
    procs.extend([a, b])
    ra, rb = a.read_json("found", 40), b.read_json("found", 40)
    assert ra["found"] and ra["peers"] == {"2": [IP_B]}
    assert rb["found"] and rb["peers"] == {"1": [IP_A]}
