"""``mbms keys new|rotate|show``: the message keys of a system (brief S7, :mod:`mbms.keys`)."""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("keys", help="create, rotate or show a system's message key file (mode 0600)")
    ks = p.add_subparsers(dest="keys_command", required=True)
    n = ks.add_parser("new", help="write a new key file (refuses to overwrite one)")
    n.add_argument("file", type=Path)
    n.add_argument("--system", required=True, help="the system_id of the system file")
    n.set_defaults(func=run_new)
    r = ks.add_parser("rotate", help="one step of a key rotation without downtime (three steps)")
    r.add_argument("file", type=Path)
    r.set_defaults(func=run_rotate)
    s = ks.add_parser("show", help="check a key file; print the keys' fingerprints, never the keys")
    s.add_argument("file", type=Path)
    s.add_argument("--system", required=True)
    s.set_defaults(func=run_show)


def run_new(args: argparse.Namespace) -> int:
    from mbms.keys import new_key_file

    new_key_file(args.file, args.system)
    print(f"{args.file}: new key of system {args.system} (mode 0600); reference it from the system "
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
