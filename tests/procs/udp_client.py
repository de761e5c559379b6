"""Child process (netns test): send COUNT messages to the reversing peer, wait up to TIMEOUT s for
each reply, print {"ok": n_replies}. Usage: udp_client.py PORT IFACE SYSTEM_ID COUNT TIMEOUT"""

from __future__ import annotations

import asyncio
import json
import sys

from mbms.config_views import UdpTransport as UdpCfg
from mbms.transport.udp import UdpTransport


async def main() -> None:
    port, iface, sysid, count, timeout = int(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4]), float(sys.argv[5])
    t = UdpTransport(UdpCfg.of(port=port, group="239.255.77.9", interface=iface), 1, (1, 2), sysid)
    inbox: asyncio.Queue = asyncio.Queue()
    t.on_message = lambda src, p: inbox.put_nowait(p)
    await t.start()
    ok = 0
    for i in range(count):
        msg = f"ping {i}".encode()
        t.send(msg)
        try:
            while (await asyncio.wait_for(inbox.get(), timeout)) != msg[::-1]:
                pass
            ok += 1
        except asyncio.TimeoutError:
            pass
    t.close()
    print(json.dumps({"ok": ok, "stats": t.stats.as_dict()}), flush=True)


asyncio.run(main())
