"""Peer transports between real processes: python-can udp_multicast (segmented) and UDP multicast."""

from __future__ import annotations

import asyncio
import socket

import can
import msgpack
import pytest
from conftest import TESTS, Proc, free_udp_port

from mbms.config_views import CanTransport as CanCfg, UdpTransport as UdpCfg
from mbms.transport.can import CanTransport
from mbms.transport.segmentation import MESSAGE_LEN, can_id, segment_classic
from mbms.transport.udp import UdpTransport



async def _exchange(t, inbox: asyncio.Queue, payload: bytes, timeout: float = 5.0) -> bytes:
    t.send(payload)
    src, got = await asyncio.wait_for(inbox.get(), timeout)
    assert src == 2
    return got


def _peer(procs: list[Proc], *args: str) -> Proc:
    p = Proc([str(TESTS / "procs" / "can_peer.py"), *args])
    procs.append(p)
    p.read_until(lambda s: s.strip() == "ready", 15)
    return p


def _m(sender: int, body: bytes, kind: int = 0) -> bytes:
    """A message of the fixed 23-byte layout as far as the transport sees it: header + 22 bytes."""
    return bytes([(sender - 1) | kind << 6]) + body.ljust(MESSAGE_LEN - 1, b"\0")[:MESSAGE_LEN - 1]


def test_can_udp_multicast_two_processes_segmented(procs: list[Proc]) -> None:
    port = free_udp_port()
    _peer(procs, "can", str(port), "2", "1,2")

    async def run() -> tuple[list[int], CanTransport]:
        t = CanTransport(CanCfg.of(interface="udp_multicast", channel="239.74.163.2", port=port), 1, (1, 2))
        inbox: asyncio.Queue = asyncio.Queue()
        t.on_message = lambda src, p: inbox.put_nowait((src, p))
        await t.start()
        try:
            for n in range(10):
                body = bytes((i * 7 + n) & 0xFF for i in range(MESSAGE_LEN - 1))
                assert await _exchange(t, inbox, _m(1, body, n & 1)) == _m(2, body[::-1], n & 1), n
            with pytest.raises(ValueError):
                t.send(b"x" * 64)
            with pytest.raises(ValueError, match="not of this node"):
                t.send(_m(2, b"someone else"))
            bus = t._bus
            assert bus is not None
            # foreign: a non-member sender (node 9) and an identifier outside the mbms plan
            fid, data = segment_classic(_m(9, b"hi"))[0]
            bus.send(can.Message(arbitration_id=fid, data=data, is_extended_id=False))
            bus.send(can.Message(arbitration_id=0x7F, data=b"\x01\x02", is_extended_id=False))
            # malformed: frame 0 of node 1 of 5 bytes, and a garbage datagram on the port
            bus.send(can.Message(arbitration_id=can_id(1, 0, 0, 0), data=b"abcde", is_extended_id=False))
            # incomplete: a last frame without its start
            bus.send(can.Message(arbitration_id=can_id(1, 1, 1, 2), data=bytes(MESSAGE_LEN - 17), is_extended_id=False))
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.sendto(b"\xc1garbage", ("239.74.163.2", port))
            reply = await _exchange(t, inbox, _m(1, b"stats"))
            st = msgpack.unpackb(reply[2:2 + reply[1]])
            t.send(_m(1, b"quit"))
            return st, t
        finally:
            t.close()

    st, t = asyncio.run(run())
    echoes, malformed, incomplete, foreign, replayed, oversized, duplicate, received = st
    assert echoes >= 10  # the peer saw its own replies come back and filtered them
    assert foreign == 2 and malformed == 2 and incomplete == 1 and oversized == 0 and replayed == 0
    assert received == 10 + 1  # every message + "stats"
    assert t.stats.echoes >= 10 and t.stats.received_messages == 10 + 1


def test_udp_multicast_two_processes(procs: list[Proc]) -> None:
    port = free_udp_port()
    _peer(procs, "udp", str(port), "2", "1,2", "sysA")

    async def run() -> list[int]:
        cfg = UdpCfg.of(port=port, group="239.255.77.9", interface="127.0.0.1")
        t = UdpTransport(cfg, 1, (1, 2), "sysA")
        inbox: asyncio.Queue = asyncio.Queue()
        t.on_message = lambda src, p: inbox.put_nowait((src, p))
        await t.start()
        try:
            for n in (0, 1, 100, 1400):
                payload = bytes(range(256)) * (n // 256) + bytes(range(n % 256))
                assert await _exchange(t, inbox, payload) == payload[::-1]
            with pytest.raises(ValueError, match="exceeds"):
                t.send(b"x" * 1401)
            base = {"v": 1, "sys": "sysA", "src": 1, "boot": t.boot, "k": "m", "d": b"zz"}
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton("127.0.0.1"))
                dst = ("239.255.77.9", port)
                s.sendto(b"\xc1not msgpack", dst)  # malformed
                s.sendto(msgpack.packb({"v": 1}), dst)  # malformed: fields missing
                s.sendto(msgpack.packb({**base, "sys": "other", "seq": 10**6}), dst)  # foreign system
                s.sendto(msgpack.packb({**base, "src": 7, "seq": 10**6}), dst)  # non-member
                # an old header is delivered: the header is not authenticated, so nothing is decided
                # on it (a forged boot of 2**62 once locked a node out); the core checks freshness
                s.sendto(msgpack.packb({**base, "seq": 1}), dst)
                s.sendto(b"\x00" * 2000, dst)  # oversized
            src, zz = await asyncio.wait_for(inbox.get(), 5)
            assert (src, zz) == (2, b"zz")
            return msgpack.unpackb(await _exchange(t, inbox, b"stats"))
        finally:
            t.send(b"quit")
            t.close()

    echoes, malformed, incomplete, foreign, replayed, oversized, duplicate, received = asyncio.run(run())
    assert incomplete == 0  # UDP carries whole messages
    assert echoes >= 4 and malformed == 2 and foreign == 2 and replayed == 0 and oversized == 1
    assert received == 6


def test_udp_unicast_peer_list() -> None:
    p1, p2, p3 = free_udp_port(), free_udp_port(), free_udp_port()
    peers = (("127.0.0.1", p1), ("127.0.0.1", p2), ("127.0.0.1", p3))
    cfg = UdpCfg.of(peers=peers, bind="127.0.0.1")

    async def run() -> tuple[list, list, list]:
        ts = [UdpTransport(cfg, k, (1, 2, 3), "uni") for k in (1, 2, 3)]
        boxes: list[asyncio.Queue] = [asyncio.Queue() for _ in ts]
        for t, box in zip(ts, boxes):
            t.on_message = lambda src, p, box=box: box.put_nowait((src, p))
            await t.start()
        try:
            ts[0].send(b"from 1")
            ts[2].send(b"from 3")
            got = [sorted([await asyncio.wait_for(b.get(), 5) for _ in range(n)]) for b, n in zip(boxes, (1, 2, 1))]
            return got, [t.endpoint for t in ts], [t.stats.echoes for t in ts]
        finally:
            for t in ts:
                t.close()

    got, endpoints, echoes = asyncio.run(run())
    assert got == [[(3, b"from 3")], [(1, b"from 1"), (3, b"from 3")], [(1, b"from 1")]]
    assert endpoints[1] == f"udp:127.0.0.1:{p2}" and echoes == [0, 0, 0]  # unicast: nothing sent to oneself


def test_can_fd_one_frame_per_message() -> None:
    port = free_udp_port()
    cfg = CanCfg.of(interface="udp_multicast", channel="239.74.163.2", port=port, fd=True)

    async def run() -> tuple[list, int, int]:
        a, b = CanTransport(cfg, 1, (1, 2)), CanTransport(cfg, 2, (1, 2))
        box: asyncio.Queue = asyncio.Queue()
        b.on_message = lambda src, p: box.put_nowait((src, p))
        await a.start()
        await b.start()
        try:
            msgs = [_m(1, bytes(range(n)), n & 1) for n in (1, 8, 20, 23)]
            for m in msgs:
                a.send(m)
            got = [await asyncio.wait_for(box.get(), 5) for _ in msgs]
            return got, a.stats.sent_frames, a.stats.echoes
        finally:
            a.close()
            b.close()

    got, frames, _ = asyncio.run(run())
    assert got == [(1, _m(1, bytes(range(n)), n & 1)) for n in (1, 8, 20, 23)] and frames == 4
