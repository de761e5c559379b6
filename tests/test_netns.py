"""Two network namespaces on a bridge (in a third namespace): the UDP transport and zeroconf work
across them, an nftables/iptables rule cuts one off (partition) and removing it heals it.

Needs root and ``ip netns``; skips with the reason otherwise. Only addresses inside the namespaces
created here are used; everything is removed in a finalizer.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import TESTS, Proc
from netns_util import Lab, unavailable
from node_files import system_file


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    reason = unavailable()
    if reason:
        pytest.skip(reason)
    lab = Lab("n", 2, subnet="10.77.0")
    try:
        lab.up()
        yield lab
    finally:
        lab.down()


def _script(lab: Lab, i: int, script: str, *args: str) -> Proc:
    import sys

    return Proc(lab.argv(i, sys.executable, str(TESTS / "procs" / script), *args))


def _client(lab: Lab, procs: list[Proc], port: int, count: int, timeout: float) -> dict:
    c = _script(lab, 1, "udp_client.py", str(port), lab.ips[1], "ns-sys", str(count), str(timeout))
    procs.append(c)
    return c.read_json("ok", 60)


def test_udp_transport_across_namespaces_partition_and_heal(lab: Lab, procs: list[Proc]) -> None:
    port = 47311
    peer = _script(lab, 0, "can_peer.py", "udp", str(port), "2", "1,2", "ns-sys", lab.ips[0])
    procs.append(peer)
    peer.read_until(lambda s: s.strip() == "ready", 15)
    assert _client(lab, procs, port, 5, 2.0)["ok"] == 5
    lab.isolate(0, True)
    try:
        cut = _client(lab, procs, port, 3, 0.5)
        assert cut["ok"] == 0 and cut["stats"]["sent_messages"] == 3
    finally:
        lab.isolate(0, False)
    assert _client(lab, procs, port, 5, 2.0)["ok"] == 5


def test_zeroconf_across_namespaces(lab: Lab, procs: list[Proc], tmp_path: Path) -> None:
    system = system_file(tmp_path, [1, 2], "udp", 47312, discovery=True, system_id="ns-sys", iface=lab.ips[0])
    a = _script(lab, 0, "disc_peer.py", str(system), "1", lab.ips[0], "1")
    b = _script(lab, 1, "disc_peer.py", str(system), "2", lab.ips[1], "1")
    procs.extend([a, b])
    ra, rb = a.read_json("found", 40), b.read_json("found", 40)
    assert ra["found"] and ra["peers"] == {"2": [lab.ips[1]]}
    assert rb["found"] and rb["peers"] == {"1": [lab.ips[0]]}
