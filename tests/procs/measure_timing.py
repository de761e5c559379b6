"""Measure the runtime's loop timing (period jitter, step time) with real processes: a plant
server (DoublePlant) and one node (DoubleLogic test double, so the step time is the runtime's
overhead, not NodeCore's). With "engine": the real plant (`mbms plant`, mbms/data/systems/example_plant.toml,
96s) and EngineDoubleLogic (the real pack engine stepped every period).
Usage: measure_timing.py PERIOD_MS DURATION_S [engine]"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from conftest import TESTS, Proc, free_udp_port  # noqa: E402
from node_files import pack_file, system_file  # noqa: E402

from mbms.paths import data_dir  # noqa: E402

period, duration = int(sys.argv[1]), float(sys.argv[2])
engine = len(sys.argv) > 3 and sys.argv[3] == "engine"
with tempfile.TemporaryDirectory() as tmp:
    t = Path(tmp)
    link = f"udp://127.0.0.1:{free_udp_port()}"
    if engine:
        plant = Proc(["-m", "mbms", "plant", "--system", str(data_dir() / "systems" / "example_plant.toml"),
                      "--listen", link])
        plant.read_until(lambda s: s.startswith("plant serving"), 30)
    else:
        plant = Proc([str(TESTS / "procs" / "plant_double_server.py"), link, "2"])
        plant.read_until(lambda s: s.strip() == "ready", 10)
    system = system_file(t, [1, 2], "can", free_udp_port())
    node = Proc([str(TESTS / "procs" / "run_node_double.py"),
                 str(pack_file(t, 1, link, period_ms=period, with_engine=engine)), str(system), str(duration)],
                env={"MBMS_DOUBLE_ENGINE": "1"} if engine else None)
    final = node.read_json("final", duration + 30)
    plant.kill()
    print(json.dumps({"period_ms": period, "engine": engine, **final["timing"]}))
