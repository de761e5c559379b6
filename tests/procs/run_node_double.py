"""Child process: the real node runtime (run_node: hardware link, transport, persistence,
telemetry, discovery) driving the DoubleLogic test double. Prints one JSON status line per second
and a final line with the timing summary.  Usage: run_node_double.py PACK SYSTEM [DURATION_S]"""

from __future__ import annotations

import asyncio
import json
import sys

from node_double import DoubleLogic, EngineDoubleLogic

from mbms.logs import setup_logging
from mbms.node.app import run_node
from mbms.config_views import load_pack, load_system

pack, system = load_pack(sys.argv[1]), load_system(sys.argv[2])
setup_logging("json", "warning")
import os

logic = EngineDoubleLogic(pack.node.id, sys.argv[1]) if os.environ.get("MBMS_DOUBLE_ENGINE") else DoubleLogic(pack.node.id)


async def main() -> None:
    holder = {}

    async def report() -> None:
        while True:
            rt = holder.get("rt")
            if rt is not None:
                print(json.dumps({"status": rt.periods, "fail_safe": rt.fail_safe_reason, "peers": sorted(logic.peers),
                                  "accepted": rt.accepted_messages, "soc": logic.soc,
                                  "commanded": list(rt.commanded.as_tuple()), "fail_safes": rt.fail_safe_count,
                                  "overruns": rt.timing.overruns, "periods": rt.periods,
                                  "malformed": rt.transport.stats.malformed}), flush=True)
            await asyncio.sleep(0.2)

    task = asyncio.create_task(report())
    rt = await run_node(pack, system, logic, duration_s=float(sys.argv[3]) if len(sys.argv) > 3 else None,
                        on_ready=lambda r: holder.update(rt=r))
    task.cancel()
    print(json.dumps({"final": True, "timing": rt.timing.summary(), "transport": rt.transport.stats.as_dict()}), flush=True)


asyncio.run(main())
