"""``mbms sunspec --system system.toml --listen 0.0.0.0:502``: serve the battery to an EMS as
SunSpec Modbus TCP (models 1, 802, 803, 804; :mod:`mbms.gateways.sunspec`).

Listens on the peer network with the system's transport (sending nothing), decodes every node's
telemetry and answers Modbus reads from it. Read-only: writes get Modbus exception 1.
``--pack`` (a pack file) gives the nameplate ratings (capacity, nominal voltage); without it
those points read "not implemented".
"""

from __future__ import annotations

import argparse
import asyncio
import signal

from mbms.cli import data_file
from mbms.config_views import load_system
from mbms.paths import system_file


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("sunspec", help="SunSpec Modbus TCP server for an EMS (listens on the peer network)")
    p.add_argument("--system", required=True, type=data_file(system_file),
                   help="system file: a path or a shipped name (example_system_udp)")
    p.add_argument("--listen", default="127.0.0.1:502", help="host:port of the Modbus TCP server")
    p.add_argument("--pack", help="pack file of the strings (nameplate: capacity, nominal voltage)")
    p.add_argument("--duration", type=float, help="serve for this many seconds")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mbms.gateways.sunspec import Nameplate, run_gateway

    from mbms.gateways.web import parse_listen

    host, port = parse_listen(args.listen, "--listen", "0.0.0.0:502")
    system = load_system(args.system)
    plate = Nameplate(serial=system.system_id)
    if args.pack:
        from mbms.config_views import load_pack
        from mbms.gateways.inverter_can import PackRatings

        r = PackRatings.of(load_pack(args.pack))
        plate = Nameplate(serial=system.system_id, capacity_ah_per_string=r.capacity_ah,
                          v_nominal_v=r.series * (r.v_max_v + r.v_min_v) / 2)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        if args.duration is not None:
            loop.call_later(args.duration, stop.set)
        await run_gateway(system, host, port, plate, stop)

    asyncio.run(main())
    return 0
