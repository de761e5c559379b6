"""``mbms node --config pack.toml --system system.toml``: run one pack's node in real time."""

from __future__ import annotations

import argparse
import asyncio
import json
import os

from mbms.cli import data_file
from mbms.logs import setup_logging
from mbms.node.config import check_membership, load_pack, load_system
from mbms.paths import pack_file, system_file


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("node", help="run the node of one pack (one process per pack)")
    p.add_argument("--config", required=True, type=data_file(pack_file),
                   help="pack file (engine, node, hardware tables): a path or a shipped name (node1)")
    p.add_argument("--system", default=os.environ.get("MBMS_SYSTEM"), type=data_file(system_file),
                   help="system file shared by all peers: a path or a shipped name (example_system); "
                        "default $MBMS_SYSTEM")
    p.add_argument("--duration", type=float, help="stop after this many seconds")
    p.add_argument("--timing", action="store_true", help="print the loop timing summary as JSON at exit")
    p.add_argument("--check", action="store_true", help="validate the configuration files and exit")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mbms.errors import ConfigError

    if not args.system:
        raise ConfigError("--system", "expected the path of the system file (or $MBMS_SYSTEM)")
    pack = load_pack(args.config)
    system = load_system(args.system)
    check_membership(pack, system)
    setup_logging(pack.node.log_format, pack.node.log_level)
    if args.check:
        print(f"{pack.source}: node {pack.node.id}; {system.source}: system {system.system_id}, "
              f"members {list(system.members)}, quorum {system.quorum}, transport {system.transport.kind}")
        return 0
    from mbms.node.app import make_core_logic, run_node

    logic = make_core_logic(pack, system)
    runtime = asyncio.run(run_node(pack, system, logic, duration_s=args.duration))
    if args.timing:
        print(json.dumps(runtime.timing.summary()))
    return 0
