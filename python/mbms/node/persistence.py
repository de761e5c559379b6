"""Persistence of a node: the logic's state blob and an append-only event log in the state dir.

* ``state.bin``: the latest ``NodeLogic.export_state()`` blob in a small envelope
  (magic ``MBMS``, format version, length, CRC-32, and since format 2 the wall-clock time of the
  save). Written atomically: a temp file in the same directory, ``fsync``, ``rename`` over the old
  file, ``fsync`` of the directory. A reader thus sees either the old or the new state, never a
  mix, also after ``kill -9`` or a power cut.
* ``rx_counters.json``: the peer's receive counters (per sender: boot and last message counter
  accepted, brief S7 freshness), saved with the state and restored at the next start, so that a
  restarted node takes no replay of what it had accepted before (a dead peer's captured messages).
  Written atomically like the state, with a CRC-32; missing or corrupt means no memory (as a node
  without it) and a warning, never a refused start.
* ``events.jsonl``: one JSON object per line (time, node, kind, fields), appended and flushed at
  once, fsync'ed at each state save. A torn last line (killed mid-write) is skipped with a warning.
  Bounded (issue 13): at ``events_max_bytes`` the file is renamed ``events.jsonl.1`` (the older
  ones shift to ``.2`` ... and the one beyond ``events_keep`` is deleted), so the log of a node
  that runs for years takes at most ``(1 + events_keep) x events_max_bytes`` (plus one line).

A missing state file means a first start (defaults, info); a corrupt one (bad magic, length or CRC)
gives a clear warning, is kept as ``state.bin.corrupt`` for analysis, and the node starts from
defaults (the logic's own, e.g. SOC from OCV). A checksum only proves the file is what was
written, not that it makes sense: a state saved in the future (by more than
``FUTURE_TOLERANCE_S``: the clock went back, or the file is not ours) is treated the same way, and
the values inside are checked by the logic itself (``import_state`` drops implausible ones).
"""

from __future__ import annotations

import json
import logging
import os
import struct
import threading
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mbms.errors import EnvironmentProblem

log = logging.getLogger("mbms.node.persistence")

MAGIC = b"MBMS"
FORMAT = 2
_HEADER_V1 = struct.Struct("<4sHII")  # magic, format, length, crc32 (of the blob)
_HEADER = struct.Struct("<4sHIIq")  # ... + saved_unix_ms; crc32 of saved_unix_ms + blob
#: A state saved later than now by more than this is implausible. Generous enough for an NTP
#: step after boot on a controller whose RTC ran a little slow; a state from days ahead is not ours.
FUTURE_TOLERANCE_S = 300.0


@dataclass
class LoadResult:
    data: bytes | None
    status: str  # "ok" | "missing" | "corrupt" | "implausible"
    detail: str = ""
    saved_unix_ms: int | None = None  # None for a format-1 file


class StateStore:
    def __init__(self, state_dir: str | os.PathLike[str], node_id: int, source: str | None = None,
                 events_max_bytes: int | None = None, events_keep: int = 0) -> None:
        self.dir = Path(state_dir)
        #: ``[operator]`` events_max_bytes / events_keep (None: no rotation, tests of one run)
        self.events_max_bytes = events_max_bytes
        self.events_keep = events_keep
        self.rotations = 0
        # event() (loop thread) may rotate while the saver thread fsyncs the event file
        self._events_lock = threading.Lock()
        self.node_id = node_id
        self.state_path = self.dir / "state.bin"
        self.events_path = self.dir / "events.jsonl"
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            for stale in self.dir.glob(".state.bin.*.tmp"):  # left by a writer killed mid-save
                if stale.name != f".state.bin.{os.getpid()}.tmp":
                    stale.unlink(missing_ok=True)
            self._events = open(self.events_path, "a", encoding="utf-8")
            probe = self.dir / f".write-test.{os.getpid()}"  # the state is written here every state_save_ms
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:  # the machine's answer (permissions, read-only fs, not a directory)
            where = f"{source}: " if source else ""
            raise EnvironmentProblem(f"{where}node.state_dir {str(self.dir)!r}", f"cannot be written: {exc.strerror or exc}",
                                     "choose a directory this user can write (it holds the state and events.jsonl)") from None
        if self._events.tell() > 0:
            with open(self.events_path, "rb") as f:
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":  # a line torn by a kill: end it so the next event is whole
                    self._events.write("\n")
        self.saves = 0

    # ---------------------------------------------------------------- state
    def save(self, blob: bytes) -> None:
        saved_ms = time.time_ns() // 1_000_000
        stamp = struct.pack("<q", saved_ms)
        data = _HEADER.pack(MAGIC, FORMAT, len(blob), zlib.crc32(stamp + blob), saved_ms) + blob
        tmp = self.dir / f".state.bin.{os.getpid()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            view = memoryview(data)
            while view:
                n = os.write(fd, view)
                view = view[n:]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.state_path)
        dfd = os.open(self.dir, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
        # event() flushes every line itself; only the fsync here (may run in the saver thread)
        with self._events_lock:
            if not self._events.closed:
                os.fsync(self._events.fileno())
        self.saves += 1

    def load(self) -> LoadResult:
        try:
            raw = self.state_path.read_bytes()
        except FileNotFoundError:
            log.info("no saved state in %s: first start, using defaults", self.dir)
            return LoadResult(None, "missing")
        detail = ""
        if len(raw) < _HEADER_V1.size:
            detail = f"{len(raw)} bytes, shorter than the {_HEADER_V1.size}-byte header"
        else:
            magic, fmt, length, crc = _HEADER_V1.unpack_from(raw)
            saved_ms: int | None = None
            if fmt == FORMAT and len(raw) >= _HEADER.size:
                saved_ms = _HEADER.unpack_from(raw)[4]
                blob = raw[_HEADER.size:]
                crc_of = raw[_HEADER_V1.size:_HEADER.size] + blob
            else:  # format 1: no save time
                blob = raw[_HEADER_V1.size:]
                crc_of = blob
            if magic != MAGIC:
                detail = f"bad magic {magic!r}, expected {MAGIC!r}"
            elif fmt not in (1, FORMAT):
                detail = f"format {fmt}, expected 1 or {FORMAT}"
            elif length != len(blob):
                detail = f"length {len(blob)}, header says {length}"
            elif zlib.crc32(crc_of) != crc:
                detail = "CRC-32 mismatch"
            elif saved_ms is not None and saved_ms / 1000 > time.time() + FUTURE_TOLERANCE_S:
                ahead_s = saved_ms / 1000 - time.time()
                detail = (f"saved {ahead_s:.0f} s in the future (at unix ms {saved_ms}); the clock went back "
                          f"or the file is not this node's")
                self.quarantine(detail, kind="state_implausible")
                return LoadResult(None, "implausible", detail, saved_ms)
            else:
                return LoadResult(blob, "ok", saved_unix_ms=saved_ms)
        self.quarantine(detail)
        return LoadResult(None, "corrupt", detail)

    def quarantine(self, detail: str, kind: str = "state_corrupt") -> None:
        """Keep an unusable state file aside and warn; the node starts from defaults (the
        estimator from the measurements)."""
        log.warning("saved state %s is corrupt or implausible (%s): starting from defaults (the estimator from the "
                    "measurements); kept as %s.corrupt",
                    self.state_path, detail, self.state_path.name)
        try:
            os.replace(self.state_path, self.state_path.with_suffix(".bin.corrupt"))
        except OSError:
            pass
        self.event(kind, detail=detail)

    # --------------------------------------------------------------- events
    def event(self, kind: str, **fields: Any) -> None:
        rec = {"t": round(time.time(), 3), "node": self.node_id, "kind": kind, **fields}
        with self._events_lock:
            if self._events.closed:
                return
            self._events.write(json.dumps(rec, default=str, separators=(",", ":")) + "\n")
            self._events.flush()
            if self.events_max_bytes is not None and self._events.tell() >= self.events_max_bytes:
                self._rotate()

    def rotated_paths(self) -> list[Path]:
        """The rotated event logs that exist, newest first (``events.jsonl.1``, ``.2``, ...)."""
        return [p for k in range(1, self.events_keep + 1) if (p := self.dir / f"events.jsonl.{k}").exists()]

    def _rotate(self) -> None:
        """events.jsonl -> .1 -> .2 ... (under the lock); the one beyond ``events_keep`` goes."""
        self._events.close()
        try:
            if self.events_keep == 0:
                self.events_path.unlink(missing_ok=True)
            else:
                (self.dir / f"events.jsonl.{self.events_keep}").unlink(missing_ok=True)
                for k in range(self.events_keep - 1, 0, -1):
                    src = self.dir / f"events.jsonl.{k}"
                    if src.exists():
                        os.replace(src, self.dir / f"events.jsonl.{k + 1}")
                os.replace(self.events_path, self.dir / "events.jsonl.1")
        except OSError as exc:  # the log is for operators; a full disk must not stop the node
            log.warning("event log rotation in %s failed: %s", self.dir, exc)
        self._events = open(self.events_path, "a", encoding="utf-8")
        self.rotations += 1

    def read_events(self) -> list[dict[str, Any]]:
        out = []
        with open(self.events_path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError:
                    log.warning("%s line %d is torn or corrupt: skipped", self.events_path, n)
        return out

    def close(self) -> None:
        with self._events_lock:
            if not self._events.closed:
                self._events.flush()
                os.fsync(self._events.fileno())
                self._events.close()


class BackgroundSaver:
    """Writes the latest state blob in a thread of its own, so an fsync (tens of ms on a busy
    disk) never delays a control period. Latest wins: a blob submitted while a write is in
    progress replaces any older pending one. ``close`` writes what is pending, then stops."""

    def __init__(self, store: StateStore) -> None:
        self.store = store
        self._cond = threading.Condition()
        self._pending: bytes | None = None
        self._pending_rx: list[tuple[int, int, int]] | None = None
        self._stop = False
        self.errors = 0
        self._thread = threading.Thread(target=self._run, name="mbms-state-saver", daemon=True)
        self._thread.start()

    def submit(self, blob: bytes, rx_counters: list[tuple[int, int, int]] | None = None) -> None:
        """``rx_counters``: the peer's receive counters, saved after the blob (latest wins too)."""
        with self._cond:
            self._pending = blob
            if rx_counters is not None:
                self._pending_rx = rx_counters
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._pending is None and not self._stop:
                    self._cond.wait()
                blob, self._pending = self._pending, None
                rx, self._pending_rx = self._pending_rx, None
                if blob is None and self._stop:
                    return
            try:
                assert blob is not None
                self.store.save(blob)
            except OSError:
                self.errors += 1
                log.exception("state save to %s failed", self.store.state_path)
            if rx is not None:
                try:
                    save_receive_counters(self.store.dir, rx)
                except OSError:
                    self.errors += 1
                    log.exception("receive counters save to %s failed", self.store.dir)

    def close(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify()
        self._thread.join(timeout=10)


#: The boot counter file in the state dir (brief S7 freshness).
BOOT_FILE = "boot"
#: The wire carries 16 bits of the boot counter.
BOOT_MAX = 0xFFFF


def next_boot(state_dir: str | os.PathLike[str], source: str | None = None) -> int:
    """This start's boot counter: one more than the last one saved in ``state_dir/boot``, saved
    (atomically, fsync'ed) BEFORE the node sends anything. Peers accept a new boot of a node only
    if it is higher than the last they authenticated, so a boot is never reused: a lost or
    corrupt file is an error, not a restart at 1 (which peers would drop as a replay)."""
    d = Path(state_dir)
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # named as the StateStore names it: the pack file and its field
        where = f"{source}: " if source else ""
        raise EnvironmentProblem(f"{where}node.state_dir {str(d)!r}", f"cannot be created: {exc.strerror or exc}") from None
    p = d / BOOT_FILE
    last = 0
    if p.exists():
        text = p.read_text().strip()
        if not text.isdigit() or not 0 < int(text) <= BOOT_MAX:
            raise EnvironmentProblem(str(p), f"boot counter {text[:20]!r} is not 1..{BOOT_MAX}",
                                     "restore it from a backup, or set it above the highest boot any peer saw")
        last = int(text)
    if last >= BOOT_MAX:
        raise EnvironmentProblem(str(p), f"boot counter exhausted ({BOOT_MAX} starts)",
                                 "rotate the system's keys (mbms keys rotate) and reset every node's boot file")
    boot = last + 1
    tmp = d / f".{BOOT_FILE}.tmp"
    with open(tmp, "w") as f:
        f.write(f"{boot}\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, p)
    dfd = os.open(d, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
    return boot


def save_boot(state_dir: str | os.PathLike[str], boot: int) -> None:
    """Raise the saved boot counter to ``boot`` (the core moves to a new boot when its message
    counter would wrap)."""
    p = Path(state_dir) / BOOT_FILE
    try:
        last = int(p.read_text().strip())
    except (OSError, ValueError):
        last = 0
    if boot > last:
        tmp = p.with_name(f".{BOOT_FILE}.tmp")
        tmp.write_text(f"{boot}\n")
        os.replace(tmp, p)


#: The receive counters file in the state dir (brief S7 freshness across a restart).
RX_COUNTERS_FILE = "rx_counters.json"
RX_COUNTERS_FORMAT = 1


@dataclass
class RxCountersLoad:
    """What :func:`load_receive_counters` found: (sender, boot, counter) entries and a status
    ("ok", "missing" or "corrupt" with ``detail``)."""

    counters: list[tuple[int, int, int]]
    status: str
    detail: str = ""


def _rx_crc(counters: list[list[int]]) -> int:
    return zlib.crc32(json.dumps(counters, separators=(",", ":")).encode())


def _write_atomic(p: Path, data: bytes) -> None:
    tmp = p.with_name(f".{p.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, p)
    dfd = os.open(p.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def save_receive_counters(state_dir: str | os.PathLike[str], counters: list[tuple[int, int, int]]) -> None:
    """Save the peer's receive counters (``NodeCore.receive_counters()``) atomically: a reader
    sees the old or the new file, never a mix."""
    rows = sorted([int(s), int(b), int(c)] for s, b, c in counters)
    doc = {"format": RX_COUNTERS_FORMAT, "counters": rows, "crc32": _rx_crc(rows)}
    _write_atomic(Path(state_dir) / RX_COUNTERS_FILE, (json.dumps(doc) + "\n").encode())


def load_receive_counters(state_dir: str | os.PathLike[str]) -> RxCountersLoad:
    """The receive counters saved by the previous run. Missing: none (a first start, or a node
    from before they were saved). Corrupt (unreadable, bad JSON, format, CRC or a value out of
    range): none and a warning naming the file; the node then takes a first message from each
    sender as it did without the file (a replay of older traffic is possible until the sender's
    own newer messages arrive), it never refuses to start over it."""
    p = Path(state_dir) / RX_COUNTERS_FILE
    try:
        text = p.read_text()
    except FileNotFoundError:
        return RxCountersLoad([], "missing")
    except (OSError, UnicodeDecodeError) as exc:
        return _rx_corrupt(p, f"unreadable: {exc}")
    try:
        doc = json.loads(text)
    except ValueError as exc:
        return _rx_corrupt(p, f"not JSON: {exc}")
    if not isinstance(doc, dict) or doc.get("format") != RX_COUNTERS_FORMAT:
        return _rx_corrupt(p, f"expected a JSON object with format = {RX_COUNTERS_FORMAT}")
    rows = doc.get("counters")
    if not isinstance(rows, list) or not all(
            isinstance(r, list) and len(r) == 3 and all(isinstance(v, int) and not isinstance(v, bool) for v in r)
            for r in rows):
        return _rx_corrupt(p, "counters: expected a list of [sender, boot, counter] integers")
    if doc.get("crc32") != _rx_crc(rows):
        return _rx_corrupt(p, "crc32 does not match the counters")
    for s, b, c in rows:
        # ids 1..63 (the wire's 6 bits), the 16-bit boot and the message counter (u32 in the core)
        if not (1 <= s <= 63 and 0 <= b <= BOOT_MAX and 0 <= c <= 0xFFFF_FFFF):
            return _rx_corrupt(p, f"counters: entry {[s, b, c]} out of range (sender 1..63, boot 0..{BOOT_MAX})")
    return RxCountersLoad([(s, b, c) for s, b, c in rows], "ok")


def _rx_corrupt(p: Path, detail: str) -> RxCountersLoad:
    log.warning("receive counters %s ignored (%s): this start remembers no peer's message counters, "
                "so a replay of traffic captured before it is taken until the peers' own newer messages arrive",
                p, detail)
    return RxCountersLoad([], "corrupt", detail)
