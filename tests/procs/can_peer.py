"""Child process for the transport tests: a peer that answers every message with it reversed.

A message b"stats" is answered with msgpack [echoes, malformed, foreign, replayed, oversized,
duplicate, received_messages]. Prints "ready" once its transport is open.
Usage: can_peer.py can PORT NODE_ID MEMBERS   |   can_peer.py udp PORT NODE_ID MEMBERS SYSTEM_ID [IFACE]
"""

from __future__ import annotations

import asyncio
import sys

import msgpack

from mbms.config_views import CanTransport as CanCfg, UdpTransport as UdpCfg
from mbms.transport.segmentation import MESSAGE_LEN


async def main() -> None:
    kind, port, node_id = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    members = tuple(int(x) for x in sys.argv[4].split(","))
    if kind == "can":
        from mbms.transport.can import CanTransport

        t = CanTransport(CanCfg.of(interface="udp_multicast", channel="239.74.163.2", port=port), node_id, members)
    else:
        from mbms.transport.udp import UdpTransport

        t = UdpTransport(UdpCfg.of(port=port, group="239.255.77.9",
                                 interface=sys.argv[6] if len(sys.argv) > 6 else "127.0.0.1"), node_id, members, sys.argv[5])
    done = asyncio.Event()

    def on_message(src: int, payload: bytes) -> None:
        # over CAN a message has the fixed layout of MESSAGE_LEN bytes: a header byte (sender, kind) + the rest
        body = payload[1:] if kind == "can" else payload
        head = bytes([(node_id - 1) | (payload[0] & 0x40)]) if kind == "can" else b""
        if body.startswith(b"stats"):
            s = t.stats
            st = msgpack.packb([s.echoes, s.malformed, s.incomplete, s.foreign, s.replayed, s.oversized,
                                s.duplicate, s.received_messages])
            t.send(head + (bytes([len(st)]) + st).ljust(MESSAGE_LEN - 1, b"\0") if kind == "can" else st)
        elif body.startswith(b"quit"):
            done.set()
        else:
            t.send(head + body[::-1])

    t.on_message = on_message
    await t.start()
    print("ready", flush=True)
    try:
        await asyncio.wait_for(done.wait(), timeout=120)
    finally:
        t.close()


asyncio.run(main())
