"""Child process (netns test): register node NODE_ID of SYSTEM_FILE on IFACE, print the peers found
as JSON once EXPECT peers are seen, then stay registered until killed.
Usage: disc_peer.py SYSTEM_FILE NODE_ID IFACE EXPECT"""

from __future__ import annotations

import asyncio
import json
import sys

from mbms.discovery import Discovery
from mbms.config_views import load_system


async def main() -> None:
    system = load_system(sys.argv[1])
    d = Discovery(system, int(sys.argv[2]), f"udp:{sys.argv[3]}:47100", interfaces=(sys.argv[3],))
    await d.start()
    found = await d.wait_until(lambda r: len(r.peers) >= int(sys.argv[4]), 30)
    print(json.dumps({"found": found, "peers": {k: list(p.addresses) for k, p in d.report.peers.items()}}), flush=True)
    await asyncio.Event().wait()


asyncio.run(main())
