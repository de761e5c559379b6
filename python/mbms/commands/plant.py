"""``mbms plant --system plant.toml --listen udp://127.0.0.1:47000``: serve a simulated plant."""

from __future__ import annotations

import argparse
import asyncio

from mbms.cli import data_file
from mbms.errors import opening
from mbms.logs import setup_logging
from mbms.paths import system_file


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("plant", help="run the simulated plant in real time and serve it to the nodes")
    p.add_argument("--system", required=True, type=data_file(system_file),
                   help="plant description (TOML) of mbms.plant: a path or a shipped name (example_plant)")
    p.add_argument("--listen", required=True, help="udp://IP:PORT or unix:///PATH")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dt", type=float, default=0.01, help="plant step, s of wall time (default 0.01)")
    p.add_argument("--time-scale", type=float, default=1.0, help="plant seconds per wall second")
    p.add_argument("--load-a", type=float, default=0.0, help="initial bus load current, A (+ = discharge)")
    p.add_argument("--command-timeout", type=float, default=0.5,
                   help="open a string whose node sent no command for this long, s (driver watchdog)")
    p.add_argument("--duration", type=float, help="stop after this many seconds")
    p.add_argument("--devices", metavar="DIR",
                   help="also serve every string as devices for hardware adapter \"linux\": an emulated LTC6813 "
                        "chain (DIR/afeK.sock), GPIO chip (DIR/gpioK.sock), and an IVT-S and iso165C on "
                        "udp_multicast CAN port --sensor-can-port + K (mbms.emulators.device_server)")
    p.add_argument("--sensor-can-port", type=int, default=45000,
                   help="udp_multicast port of string 0's sensor CAN bus (string K: + K)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mbms.errors import ConfigError
    from mbms.plant_server import PlantServer, load_plant

    if args.dt <= 0 or args.time_scale <= 0:
        raise ConfigError("--dt/--time-scale", "expected positive numbers")
    setup_logging()
    plant, n_strings = load_plant(args.system, args.seed)
    if args.devices:
        from mbms.emulators.device_server import DeviceServer

        with opening(f"--devices {args.devices}"):
            server: PlantServer = DeviceServer(plant, n_strings, args.devices, can_port=args.sensor_can_port,
                                               dt_s=args.dt, time_scale=args.time_scale,
                                               command_timeout_s=args.command_timeout)
    else:
        server = PlantServer(plant, n_strings, dt_s=args.dt, time_scale=args.time_scale,
                             command_timeout_s=args.command_timeout)
    plant.set_load_a(args.load_a)
    server.load_a = args.load_a

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        import signal

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        if args.duration:
            loop.call_later(args.duration, stop.set)
        await server.serve(args.listen, stop, ready=lambda: print(f"plant serving {n_strings} strings on {args.listen}", flush=True))

    try:
        with opening(f"--listen {args.listen}"):  # binding: port in use, permission denied, bad address
            asyncio.run(main())
    finally:
        close = getattr(server, "close", None)
        if close is not None:
            close()
    return 0
