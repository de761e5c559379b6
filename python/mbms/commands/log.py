"""``mbms log decode FILE [--system SYSTEM_FILE] [--json]``: a recorded log of the peer bus as
readable messages (issue 15).

FILE is read with python-can's readers: a ``candump -L`` log (``.log``, ``(t) can0 123#11223344``)
or a Vector ASC log (``.asc``). python-can has no reader for candump's default screen format
(``can0  123   [4]  11 22 33 44``): such lines are counted as unparsable. Lines are read one at a
time, so a line python-can cannot parse is counted and listed and the rest of the file is still
read.

Frames of the peer protocol (ids 0x400..0x7FF) go through the consensus core's reassembler and
decoder (``mbms._core.CanReassembler`` and ``MessageAuth``: the code a node runs, never a second
decoder). One line per message: time, CAN id of its first frame, sender, kind, freshness
(boot/counter), phase, flags, request/grant and the body in A, V, Ω. With ``--system`` (its
``[auth] key_file`` names the key) every message is verified: ``verified``, ``bad tag`` (no key of
the system made it: forged, corrupted or of another system), ``unauthenticated`` (a zero tag: a
node with ``[auth] off``) or ``replay`` (a valid tag, but not newer than what its sender already
sent: boot, then counter, as a node checks); without a key, ``not verifiable``. Frames of other ids
(telemetry, UDS) are counted by range. Frames the reassembler drops (bad length, out of order) and
lines that are no frame are counted and listed.

Exit 1 when ``--system`` is given and a message did not verify (bad tag, unauthenticated, replay).
"""

from __future__ import annotations

import argparse
import io
import json
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import can

from mbms.cli import data_file
from mbms.paths import system_file

# Telemetry ranges of the peer bus (mbms.telemetry; docs/security.md "CAN identifiers")
_RANGES = ((0x200, "state"), (0x240, "limits"), (0x280, "cells"), (0x2C0, "temps"), (0x300, "uds request"),
           (0x340, "uds response"), (0x380, "cellv"), (0x3C0, "auth"))
_ASC_HEADER = re.compile(r"^\s*(date\s|base\s|//|(no\s+)?internal\s+events\s+logged)", re.IGNORECASE)
_ASC_STRUCTURE = re.compile(r"^\s*(begin\s+triggerblock|end\s+triggerblock|\d+\.\d+\s+start of measurement)",
                            re.IGNORECASE)


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("log", help="decode a recorded candump (-L) or ASC log of the peer bus")
    ls = p.add_subparsers(dest="log_command", required=True)
    d = ls.add_parser("decode", help="one readable line per peer message; verify tags with --system",
                      description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    d.add_argument("file", type=Path, help="a candump -L log (.log) or a Vector ASC log (.asc)")
    d.add_argument("--system", type=data_file(system_file), default=None,
                   help="the system file: its [auth] key_file verifies each message's tag")
    d.add_argument("--json", action="store_true", help="JSON lines: one object per message, per unparsed "
                   "item, and a last summary object")
    d.set_defaults(func=run_decode)


@dataclass(frozen=True)
class Frame:
    line: int
    t_s: float
    can_id: int
    data: bytes
    extended: bool
    fd: bool
    special: str | None  # "error" / "remote" frame, else None


@dataclass(frozen=True)
class Unparsed:
    line: int
    reason: str
    text: str


def _one(reader: Any, line_no: int, text: str) -> Frame | Unparsed:
    try:
        msgs = list(reader)
    except (ValueError, IndexError, KeyError) as exc:  # python-can's parsers raise these on bad text
        return Unparsed(line_no, f"not a frame ({type(exc).__name__}: {exc})", text)
    if len(msgs) != 1:
        return Unparsed(line_no, "not a frame", text)
    m = msgs[0]
    special = "error" if m.is_error_frame else "remote" if m.is_remote_frame else None
    return Frame(line_no, float(m.timestamp), int(m.arbitration_id), bytes(m.data or b""), bool(m.is_extended_id),
                 bool(m.is_fd), special)


def read_frames(path: Path) -> Iterator[Frame | Unparsed]:
    """The frames of a log, line by line (python-can's readers), and what is not a frame."""
    lines = path.read_text(errors="replace").splitlines()
    suffix = path.suffix.lower()
    if suffix == ".asc":
        header = [s for s in lines if _ASC_HEADER.match(s) and not s.lstrip().startswith("//")]
        # the reader learns base and time format from the header; a closing "no internal events
        # logged" ends its header scan without eating the frame line after it
        head = "\n".join([s for s in header if not re.search(r"internal\s+events", s, re.I)]
                         + ["no internal events logged", ""])
        for no, text in enumerate(lines, 1):
            if not text.strip() or _ASC_HEADER.match(text) or _ASC_STRUCTURE.match(text):
                continue
            yield _one(can.io.ASCReader(io.StringIO(head + text + "\n")), no, text)
    elif suffix == ".log":
        for no, text in enumerate(lines, 1):
            if text.strip():
                yield _one(can.io.CanutilsLogReader(io.StringIO(text + "\n")), no, text)
    else:
        raise argparse.ArgumentTypeError(f"{path}: expected a .log (candump -L) or .asc (Vector ASC) file")


@dataclass
class Decoder:
    """Peer frames to messages with the core's reassembler and decoder; verification with the
    system's keys (``auth`` an ``_core.MessageAuth``, None: not verifiable)."""

    auth: Any = None
    messages: list[dict[str, Any]] = field(default_factory=list)
    unparsed: list[dict[str, Any]] = field(default_factory=list)
    other_ids: Counter[str] = field(default_factory=Counter)
    status: Counter[tuple[int, str]] = field(default_factory=Counter)
    frames: int = 0

    def __post_init__(self) -> None:
        from mbms import _core

        self._core = _core
        self._r = _core.CanReassembler()
        self._first: dict[int, Frame] = {}  # sender -> first frame of the message being reassembled
        self._fresh: dict[int, tuple[int, int]] = {}  # sender -> (boot, counter) of its newest verified

    def push(self, item: Frame | Unparsed) -> dict[str, Any] | None:
        if isinstance(item, Unparsed):
            return self._bad(item.line, item.reason, item.text)
        self.frames += 1
        f = item
        if f.special is not None or f.extended or not 0x400 <= f.can_id <= 0x7FF:
            name = f"{f.special} frame" if f.special else "extended id" if f.extended else next(
                (f"{n} (0x{b:03X}+id)" for b, n in reversed(_RANGES) if f.can_id >= b and f.can_id < 0x400),
                f"other id 0x{f.can_id:03X}")
            self.other_ids[name] += 1
            return None
        if f.fd:
            try:
                sender, msg = self._core.can_unframe_fd(f.can_id, f.data)
            except ValueError as exc:
                return self._bad(f.line, f"CAN FD frame: {exc}", f"0x{f.can_id:03X}#{f.data.hex()}")
            return self._message(f, int(sender), bytes(msg))
        dropped = self._r.dropped_frames
        out = self._r.push(f.can_id, f.data)
        if self._r.dropped_frames != dropped:
            return self._bad(f.line, f"{self._r.last_error_kind}: {self._r.last_error}", f"0x{f.can_id:03X}#{f.data.hex()}")
        sender = ((f.can_id >> 4) & 0x3F) + 1
        if f.can_id & 3 == 0:
            self._first[sender] = f
        if out is None:
            return None
        return self._message(self._first.pop(sender, f), int(out[0]), bytes(out[1]))

    def _bad(self, line: int, reason: str, text: str) -> dict[str, Any]:
        d = {"type": "unparsed", "line": line, "reason": reason, "text": text}
        self.unparsed.append(d)
        return d

    def _message(self, first: Frame, sender: int, msg: bytes) -> dict[str, Any] | None:
        status = "not verifiable"
        try:
            if self.auth is not None and self.auth.enabled:
                try:
                    d = self.auth.open(msg)
                    status = "verified"
                except ValueError as exc:
                    reason = exc.args[0] if exc.args else "malformed"
                    if reason == "malformed":
                        raise
                    status = {"forged": "bad tag"}.get(str(reason), str(reason))
                    d = self._core.MessageAuth.decode_unverified(msg)
            else:
                d = self._core.MessageAuth.decode_unverified(msg)
        except ValueError as exc:
            return self._bad(first.line, f"message of sender {sender}: {exc.args[-1] if exc.args else exc}",
                             msg.hex())
        if status == "verified":
            # freshness as a node sees it: a newer boot, or a higher counter in the same boot
            mark = (int(d["incarnation"]), int(d["counter"]))
            last = self._fresh.get(sender)
            if last is not None and mark <= last:
                status = "replay"
            else:
                self._fresh[sender] = mark
        phases = self._core.PHASE_NAMES
        row = {
            "type": "message", "line": first.line, "t_s": first.t_s, "can_id": first.can_id, "sender": sender,
            "kind": d["kind"], "boot": d["incarnation"], "counter": d["counter"],
            "phase": phases[d["phase"]] if 0 <= d["phase"] < len(phases) else d["phase"],
            "fault": d["fault"], "main_closed": d["main_closed"], "pre_closed": d["pre_closed"],
            "may_close": d["may_close"], "req_ticket": d["req_ticket"], "grant_to": d["grant_to"],
            "grant_ticket": d["grant_ticket"], "values": d["values"], "tag": bytes(d["tag"]).hex(), "status": status,
        }
        self.messages.append(row)
        self.status[(sender, status)] += 1
        return row

    def summary(self) -> dict[str, Any]:
        per: dict[str, dict[str, int]] = {}
        for (sender, status), n in sorted(self.status.items()):
            per.setdefault(str(sender), {})[status] = n
        return {"type": "summary", "frames": self.frames, "messages": len(self.messages),
                "per_sender": per, "unparsed": len(self.unparsed), "other_ids": dict(self.other_ids),
                "incomplete_at_end": len(self._first)}


def _text(row: dict[str, Any]) -> str:
    if row["type"] == "unparsed":
        return f"line {row['line']}: UNPARSED {row['reason']}: {row['text']}"
    flags = "".join(c for c, on in (("F", row["fault"]), ("M", row["main_closed"]), ("P", row["pre_closed"]),
                                     ("m", row["may_close"])) if on) or "-"
    coord = f"req {row['req_ticket']}"
    if row["grant_to"]:
        coord += f" grant {row['grant_to']}/{row['grant_ticket']}"
    vals = " ".join(f"{k}={v:g}" for k, v in row["values"].items())
    return (f"{row['t_s']:.6f} 0x{row['can_id']:03X} node {row['sender']:>2} {row['kind']:<6} "
            f"boot {row['boot']} ctr {row['counter']} {row['phase']} {flags} {coord} {vals} [{row['status']}]")


def run_decode(args: argparse.Namespace) -> int:
    auth = None
    if args.system is not None:
        from mbms import _core
        from mbms.config_views import load_system
        from mbms.keys import system_keys

        system = load_system(args.system)
        auth = _core.MessageAuth(system.system_id_u32, system_keys(system))
    if not args.file.is_file():
        raise FileNotFoundError(2, "no such log file", str(args.file))
    dec = Decoder(auth)
    for item in read_frames(args.file):
        row = dec.push(item)
        if row is not None:
            print(json.dumps(row) if args.json else _text(row))
    s = dec.summary()
    if args.json:
        print(json.dumps(s))
    else:
        print(f"{s['frames']} frames, {s['messages']} peer messages, {s['unparsed']} unparsed")
        for sender, st in s["per_sender"].items():
            print(f"  node {sender}: " + ", ".join(f"{n} {k}" for k, n in st.items()))
        if s["other_ids"]:
            print("  other frames: " + ", ".join(f"{n} {k}" for k, n in sorted(s["other_ids"].items())))
        if s["incomplete_at_end"]:
            print(f"  {s['incomplete_at_end']} message(s) cut off at the end of the log")
    failed = sum(n for (_, st), n in dec.status.items() if st in ("bad tag", "unauthenticated", "replay"))
    return 1 if auth is not None and auth.enabled and failed else 0
