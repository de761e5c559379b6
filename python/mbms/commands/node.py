"""``mbms node --config pack.toml --system system.toml``: run one pack's node in real time."""

from __future__ import annotations

import argparse
import asyncio
import json
import os

from mbms.cli import data_file
from mbms.logs import setup_logging
from mbms.node.config import load_node
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
    p.add_argument("--check", action="store_true",
                   help="run every check a start runs (engine, node, hardware, system, transport, and the "
                        "cross-checks against the cell file) and exit: 0 no error, 2 errors found")
    p.add_argument("--json", action="store_true",
                   help="with --check: print the findings as JSON (file, field, value, expected, severity)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import logging

    from mbms.errors import ConfigError

    if not args.system:
        raise ConfigError("--system", "expected the path of the system file (or $MBMS_SYSTEM)")
    # One reader and one set of checks for a start and for --check (rust_core/src/config.rs).
    files = load_node(args.config, args.system)
    if args.check:
        return _report(files, as_json=args.json)
    files.raise_first()
    pack, system = files.pack, files.system
    assert pack is not None and system is not None
    setup_logging(pack.node.log_format, pack.node.log_level)
    for f in files.findings:  # warnings only: errors stopped us above
        logging.getLogger("mbms.node").warning("%s: %s: %s%s", f.file, f.field, f.expected,
                                               f", got {f.value}" if f.value is not None else "")
    from mbms.node.app import make_core_logic, run_node

    logic = make_core_logic(pack, system)
    runtime = asyncio.run(run_node(pack, system, logic, duration_s=args.duration))
    if args.timing:
        print(json.dumps(runtime.timing.summary()))
    return 0


def _report(files, as_json: bool) -> int:  # type: ignore[no-untyped-def]
    """--check: every finding, one per line (or a JSON document); exit 2 if any is an error."""
    errors = files.errors
    if as_json:
        print(json.dumps({"ok": not errors, "findings": [f.as_dict() for f in files.findings]}, indent=2))
    else:
        for f in files.findings:
            got = f" (got {f.value})" if f.value is not None else ""
            print(f"{f.severity}: {f.file}: {f.field}: expected {f.expected.removeprefix('expected ')}{got}")
        if not errors and files.pack is not None and files.system is not None:
            pack, system = files.pack, files.system
            print(f"{pack.source}: node {pack.node.id}; {system.source}: system {system.system_id}, "
                  f"members {list(system.members)}, quorum {system.quorum}, transport {system.transport.kind}")
    return 2 if errors else 0
