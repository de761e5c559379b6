"""Child process: the real PlantServer around the DoublePlant test double.
Usage: plant_double_server.py LISTEN N_STRINGS [COMMAND_TIMEOUT_S]"""

from __future__ import annotations

import asyncio
import sys

from node_double import DoublePlant

from mbms.plant_server import PlantServer

n = int(sys.argv[2])
server = PlantServer(DoublePlant(n), n, dt_s=0.01,
                     command_timeout_s=float(sys.argv[3]) if len(sys.argv) > 3 else 0.5)
asyncio.run(server.serve(sys.argv[1], ready=lambda: print("ready", flush=True)))
