"""``mbms keys new|rotate|show``: the message keys of a system (brief S7, :mod:`mbms.keys`)."""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("keys", help="create, rotate or show a system's message key file (mode 0600)")
    ks = p.add_subparsers(dest="keys_command", required=True)
    n = ks.add_parser("new", help="write a new key file (refuses to overwrite one)",
                      description="FILE --system ID, or --for SYSTEM: the key file SYSTEM's [auth] "
                                  "key_file names, for its system_id")
    n.add_argument("file", type=Path, nargs="?")
    n.add_argument("--system", help="the system_id of the system file")
    n.add_argument("--for", dest="system_file", metavar="SYSTEM",
                   help="a system file (path or shipped name): write the key file it names")
    n.set_defaults(func=run_new)
    r = ks.add_parser("rotate", help="one step of a key rotation without downtime (three steps)")
    r.add_argument("file", type=Path)
    r.set_defaults(func=run_rotate)
    s = ks.add_parser("show", help="check a key file; print the keys' fingerprints, never the keys")
    s.add_argument("file", type=Path)
    s.add_argument("--system", required=True)
    s.set_defaults(func=run_show)


def run_new(args: argparse.Namespace) -> int:
    from mbms.errors import ConfigError
    from mbms.keys import new_key_file

    if args.system_file is not None:
        if args.file is not None or args.system is not None:
            raise ConfigError("--for", "expected either FILE --system ID or --for SYSTEM, not both")
        from mbms.config_views import load_system
        from mbms.paths import system_file

        system = load_system(system_file(args.system_file, field="--for"))
        if system.auth is None or system.auth.key_file is None:
            raise ConfigError("auth.key_file", "missing: the system file names no key file ([auth] "
                              "key_file = \"FILE\")", system.source)
        file, system_id = system.auth.key_file, system.system_id
    elif args.file is None or args.system is None:
        raise ConfigError("keys new", "expected FILE --system ID (the system_id of the system file), "
                          "or --for SYSTEM")
    else:
        file, system_id = args.file, args.system
    new_key_file(file, system_id)
    print(f"{file}: new key of system {system_id} (mode 0600); reference it from the system "
          f"file as [auth] key_file and copy it to every node")
    return 0


def run_rotate(args: argparse.Namespace) -> int:
    from mbms.keys import rotate

    print(f"{args.file}: {rotate(args.file)}")
    return 0


def run_show(args: argparse.Namespace) -> int:
    from mbms.keys import FileKeyProvider

    for i, k in enumerate(FileKeyProvider(args.file, args.system).keys()):
        role = "signs and verifies" if i == 0 else "verifies"
        print(f"key {i}: sha256 {hashlib.sha256(k).hexdigest()[:16]}  ({role})")
    return 0
