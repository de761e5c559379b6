"""Transports and duplicate ids: a second live node with an id must reach the peer protocol
(which decides by incarnation), while own echoes and replays are still dropped."""

from __future__ import annotations

import asyncio

from conftest import free_udp_port, wait_for

from mbms.config_views import CanTransport as CanCfg
from mbms.config_views import UdpTransport as UdpCfg
from mbms.transport.can import CanTransport
from mbms.transport.segmentation import MESSAGE_LEN
from mbms.transport.udp import UdpTransport


def test_udp_older_run_still_speaking_is_delivered_replays_are_not() -> None:
    async def run() -> tuple[list[bytes], list[bytes], UdpTransport, UdpTransport]:
        cfg = UdpCfg.of(port=free_udp_port(), group="239.255.77.9", interface="127.0.0.1")
        rx, a, b = (UdpTransport(cfg, n, (1, 2, 3), "s") for n in (1, 2, 2))
        b.boot = a.boot + 5  # b: a later run with the same id
        got: list[bytes] = []
        own: list[bytes] = []
        rx.on_message = lambda src, p: got.append(p)
        a.on_message = lambda src, p: own.append(p)
        for t in (rx, a, b):
            await t.start()
        a.send(b"a0")
        await asyncio.sleep(0.05)
        b.send_telemetry([])  # the newer run's first datagram is telemetry
        await asyncio.sleep(0.05)
        for k in range(1, 4):
            a.send(b"a%d" % k)
            b.send(b"b%d" % k)
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.1)
        for t in (rx, a, b):
            t.close()
        return got, own, rx, a

    got, own, rx, a = asyncio.run(run())
    assert sorted(got) == [b"a0", b"a1", b"a2", b"a3", b"b1", b"b2", b"b3"]
    # node a hears b (its own id, another run) but not its own echoes
    assert sorted(own) == [b"b1", b"b2", b"b3"] and a.stats.own_id == 3 and a.stats.echoes >= 4


def _m(body: bytes) -> bytes:
    """A message of node 2 in the fixed 23-byte layout (header byte + 22 bytes)."""
    return bytes([1]) + body.ljust(MESSAGE_LEN - 1, b"\0")[:MESSAGE_LEN - 1]


def test_can_own_id_message_that_is_no_echo_is_delivered() -> None:
    async def run() -> tuple[list[bytes], CanTransport]:
        cfg = CanCfg.of(interface="udp_multicast", channel="239.74.163.2", port=free_udp_port())
        a, twin = CanTransport(cfg, 2, (1, 2, 3)), CanTransport(cfg, 2, (1, 2, 3))
        got: list[bytes] = []
        a.on_message = lambda src, p: got.append(p)
        await a.start()
        await twin.start()
        for k in range(3):
            a.send(_m(b"mine %d, three frames" % k))
            twin.send(_m(b"twin %d" % k))
        await asyncio.get_running_loop().run_in_executor(
            None, lambda: wait_for(lambda: len(got) >= 3 and a.stats.echoes >= 3, 5, "twin messages"))
        a.close()
        twin.close()
        return got, a

    got, a = asyncio.run(run())
    assert got == [_m(b"twin %d" % k) for k in range(3)] and a.stats.own_id == 3 and a.stats.echoes == 3
