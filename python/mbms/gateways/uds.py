"""UDS diagnostics of a node (ISO 14229-1) over ISO-TP (ISO 15765-2, can-isotp) on a python-can
bus, ``[operator.uds]``. udsoncan gives the request/response types; this is the server side.

Services (negative response codes as ISO 14229-1 Annex A defines them):

* 0x10 DiagnosticSessionControl: default (0x01) and extended (0x03) session; P2 = 50 ms,
  P2* = 5000 ms; the extended session falls back to default after ``S3_S`` without a request.
* 0x3E TesterPresent (keeps the session; suppress-positive-response bit honoured).
* 0x22 ReadDataByIdentifier, one or more DIDs (:data:`DIDS`): SOC, SOH, cell voltages, limits,
  current/voltages, temperatures, software version (0xF195), serial (0xF18C).
* 0x19 ReadDTCInformation: 0x01 number / 0x02 list by status mask, 0x04 snapshot by DTC, 0x0A
  supported DTCs. DTCs come from the node's latched-fault log (:class:`DtcLog`): every
  protection condition and fail-safe seen since the last clear, with the snapshot of the moment
  it was first seen.
* 0x14 ClearDiagnosticInformation: asks the node's core for a fault reset (the same rule as any
  fault reset: a latched fault is cleared only if its cause is gone), then drops the DTCs that are
  no longer active. A DTC whose cause persists stays, and the answer is NRC 0x22.
* 0x27 SecurityAccess level 1 (seed 0x01 / key 0x02) in the extended session: key =
  HMAC-SHA256(secret, seed)[:16] with ``security_key_hex`` as the secret. No secret configured:
  nothing that acts can be unlocked.
* 0x31 RoutineControl 0x0201 (contactor feedback check): extended session, unlocked, and only in
  a safe state (all contactors commanded open and |I| below ``node.ramp_open_current_a``).

A malformed or unknown request gets its negative response; nothing a tester sends can stop the
node (the server runs in a thread of its own; actions run on the control loop via the period hook).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import queue
import struct
import threading
import time
from dataclasses import dataclass
from typing import Any

from mbms.config_views import UdsSection
from mbms.errors import EnvironmentProblem, opening
from mbms.gateways.snapshot import NodeSnapshot
from mbms.types import LEVELS

log = logging.getLogger("mbms.uds")

# Service ids (ISO 14229-1 §9-§13); positive response = sid + 0x40, negative = 0x7F sid nrc.
SID_SESSION, SID_CLEAR, SID_READ_DTC, SID_RDBI, SID_SECURITY, SID_ROUTINE, SID_TESTER = 0x10, 0x14, 0x19, 0x22, 0x27, 0x31, 0x3E
# Negative response codes (ISO 14229-1 Table A.1).
NRC_SERVICE_NOT_SUPPORTED = 0x11
NRC_SUBFUNCTION_NOT_SUPPORTED = 0x12
NRC_INCORRECT_LENGTH = 0x13
NRC_CONDITIONS_NOT_CORRECT = 0x22
NRC_REQUEST_SEQUENCE_ERROR = 0x24
NRC_REQUEST_OUT_OF_RANGE = 0x31
NRC_SECURITY_ACCESS_DENIED = 0x33
NRC_INVALID_KEY = 0x35
NRC_EXCEEDED_ATTEMPTS = 0x36
NRC_SERVICE_NOT_IN_SESSION = 0x7F

#: Data identifiers. Values big endian; scaling in the comment.
DID_SOC = 0x0101  # uint16, 0.01 %
DID_SOH = 0x0102  # uint16 capacity, uint16 resistance, 0.01 %
DID_LIMITS = 0x0103  # 4 x uint16, 0.1 A: own DCL, own CCL, system DCL, system CCL
DID_CELL_VOLTAGES = 0x0104  # uint8 n, n x uint16 mV
DID_ELECTRICAL = 0x0105  # int16 current 0.1 A (+ = discharge), uint16 string V 0.1, uint16 bus V 0.1
DID_TEMPERATURES = 0x0106  # int16 min, int16 max, 0.1 degC
DID_STATE = 0x0107  # uint8 phase index (mbms.types.Phase), uint8 contactors bits neg|pos<<1|pre<<2, uint8 alarms
DID_SW_VERSION = 0xF195  # ASCII (ISO 14229-1 C.1 systemSupplierECUSoftwareVersionNumber)
DID_SERIAL = 0xF18C  # ASCII (ECUSerialNumber)
#: The DIDs of a DTC snapshot record (record number 1).
SNAPSHOT_DIDS = (DID_SOC, DID_ELECTRICAL, DID_TEMPERATURES)

ROUTINE_CONTACTOR_CHECK = 0x0201
#: The extended session ends this long after the last request (ISO 14229-2 S3server = 5 s).
S3_S = 5.0
#: Failed keys before SecurityAccess is locked out, and for how long (s).
MAX_KEY_ATTEMPTS = 3
LOCKOUT_S = 10.0

#: DTC status bits (ISO 14229-1 D.2).
TEST_FAILED = 0x01
CONFIRMED = 0x08
STATUS_AVAILABILITY = TEST_FAILED | CONFIRMED


def dtc_number(rule: str, level: str) -> int:
    """3-byte DTC: 0xA0 (battery), the rule's index + 1 in the engine's rules (Rust order,
    :func:`mbms.telemetry.rule_number`) or 0xF0 for a runtime/core fail-safe or an unknown rule,
    the level (0 warning, 1 alarm, 2 fault)."""
    from mbms.telemetry import rule_number

    high = rule_number(rule) or 0xF0
    return 0xA00000 | high << 8 | (LEVELS.index(level) if level in LEVELS else 2)


def _u16(x: float | None, scale: float) -> bytes:
    return struct.pack(">H", 0 if x is None else max(0, min(0xFFFF, round(x / scale))))


def _i16(x: float | None, scale: float) -> bytes:
    return struct.pack(">h", 0 if x is None else max(-0x8000, min(0x7FFF, round(x / scale))))


def did_value(did: int, snap: NodeSnapshot, sw_version: str, serial: str) -> bytes | None:
    """The bytes of ``did`` from ``snap``; None if the DID is not supported."""
    if did == DID_SOC:
        return _u16(snap.soc_pct, 0.01)
    if did == DID_SOH:
        return _u16(snap.soh_capacity_pct, 0.01) + _u16(snap.soh_resistance_pct, 0.01)
    if did == DID_LIMITS:
        return b"".join(_u16(x, 0.1) for x in (snap.dcl_a, snap.ccl_a, snap.sys_dcl_a, snap.sys_ccl_a))
    if did == DID_CELL_VOLTAGES:
        v = snap.v_cell_v[:255]
        return bytes([len(v)]) + b"".join(_u16(x, 0.001) for x in v)
    if did == DID_ELECTRICAL:
        return _i16(snap.i_a, 0.1) + _u16(snap.v_string_v, 0.1) + _u16(snap.v_bus_v, 0.1)
    if did == DID_TEMPERATURES:
        return _i16(snap.t_cell_min_c, 0.1) + _i16(snap.t_cell_max_c, 0.1)
    if did == DID_STATE:
        from mbms.types import Phase

        phase = Phase[snap.phase].value if snap.phase is not None and snap.phase in Phase.__members__ else 0xFF
        c = snap.contactors
        return bytes([phase, int(c[0]) | int(c[1]) << 1 | int(c[2]) << 2, min(255, len(snap.alarms))])
    if did == DID_SW_VERSION:
        return sw_version.encode()[:32]
    if did == DID_SERIAL:
        return serial.encode()[:32]
    return None


@dataclass
class DtcRecord:
    dtc: int
    rule: str
    level: str
    where: str
    status: int
    first_unix: float
    snapshot: bytes  # the snapshot DIDs' values when first seen
    occurrences: int = 1


class DtcLog:
    """The latched-fault log as DTCs: updated from each snapshot (on the loop)."""

    def __init__(self) -> None:
        self.records: dict[int, DtcRecord] = {}
        self._lock = threading.Lock()

    def update(self, snap: NodeSnapshot, sw: str, serial: str) -> None:
        active: dict[int, Any] = {}
        for a in snap.alarms:
            active.setdefault(dtc_number(a.rule, a.level), a)
        with self._lock:
            for dtc, a in active.items():
                rec = self.records.get(dtc)
                if rec is None:
                    snapshot = b"".join(struct.pack(">H", d) + (did_value(d, snap, sw, serial) or b"") for d in SNAPSHOT_DIDS)
                    self.records[dtc] = DtcRecord(dtc, a.rule, a.level, a.where, TEST_FAILED | CONFIRMED, snap.t_unix, snapshot)
                else:
                    if not rec.status & TEST_FAILED:
                        rec.occurrences += 1
                    rec.status |= TEST_FAILED | CONFIRMED
            for dtc, rec in self.records.items():
                if dtc not in active:
                    rec.status &= ~TEST_FAILED  # history: confirmed, not failing now

    def matching(self, mask: int) -> list[DtcRecord]:
        with self._lock:
            return [r for r in sorted(self.records.values(), key=lambda r: r.dtc) if r.status & mask]

    def get(self, dtc: int) -> DtcRecord | None:
        with self._lock:
            return self.records.get(dtc)

    def clear_inactive(self, group: int) -> list[int]:
        """Drop the DTCs of ``group`` (0xFFFFFF = all) that are not failing; return those that are."""
        with self._lock:
            keep = []
            for dtc in list(self.records):
                if group not in (0xFFFFFF, dtc):
                    continue
                if self.records[dtc].status & TEST_FAILED:
                    keep.append(dtc)
                else:
                    del self.records[dtc]
            return keep


class UdsServer:
    def __init__(self, cfg: UdsSection, rt: Any, node_id: int, sw_version: str) -> None:
        try:
            import isotp  # noqa: F401
            import udsoncan  # noqa: F401
        except ModuleNotFoundError as exc:
            raise EnvironmentProblem(f"python package {exc.name!r}", "not installed",
                                     "install the UDS extra: pip install 'mbms[uds]'") from None
        self.cfg = cfg
        self.rt = rt
        self.node_id = node_id
        self.sw_version = sw_version
        self.serial = cfg.serial or f"MBMS-{node_id:02d}"
        self.rx_id = cfg.rx_id or 0x300 + node_id
        self.tx_id = cfg.tx_id or 0x340 + node_id
        self.secret = bytes.fromhex(cfg.security_key_hex) if cfg.security_key_hex else b""
        self.dtcs = DtcLog()
        self._snap: NodeSnapshot | None = None
        self._actions: queue.Queue[tuple[Any, threading.Event, list[Any]]] = queue.Queue(maxsize=8)
        self.session = 0x01
        self._last_request = 0.0
        self.unlocked = False
        self._seed: bytes | None = None
        self._failed_keys = 0
        self._locked_until = 0.0
        self._routine_result: bytes | None = None
        self.requests = 0
        self.negative = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="mbms-uds", daemon=True)
        self.bus: Any = None
        self.stack: Any = None

    # -------------------------------------------------------------- lifecycle
    def start(self) -> None:
        import can
        import isotp

        kwargs: dict[str, Any] = {"interface": self.cfg.interface, "channel": self.cfg.channel}
        if self.cfg.interface == "udp_multicast":
            kwargs["port"] = self.cfg.port
        with opening(f"UDS CAN bus {self.cfg.interface}:{self.cfg.channel}"):
            self.bus = can.Bus(**kwargs)
        addr = isotp.Address(isotp.AddressingMode.Normal_11bits, rxid=self.rx_id, txid=self.tx_id)
        # blocking_send off, our own thread polls; stmin 0, blocksize 8 (ISO 15765-2 flow control)
        self.stack = isotp.CanStack(self.bus, address=addr, params={"blocksize": 8, "stmin": 0,
                                                                     "tx_data_min_length": 8, "max_frame_size": 4095})
        self.stack.start()
        self._thread.start()
        log.info("UDS on %s:%s, request id 0x%03X, response id 0x%03X", self.cfg.interface, self.cfg.channel,
                 self.rx_id, self.tx_id)

    def close(self) -> None:
        self._stop.set()
        if self._thread.ident is not None:  # a start that failed opening the bus never started it
            self._thread.join(timeout=2)
        if self.stack is not None:
            self.stack.stop()
        if self.bus is not None:
            self.bus.shutdown()

    # ------------------------------------------------------------- loop side
    def on_period(self, snap: NodeSnapshot, now: float) -> None:
        self._snap = snap
        self.dtcs.update(snap, self.sw_version, self.serial)
        while True:
            try:
                fn, done, out = self._actions.get_nowait()
            except queue.Empty:
                break
            try:
                out.append(fn())
            except Exception as exc:  # the tester gets a negative response; the loop goes on
                log.exception("UDS action failed")
                out.append(exc)
            done.set()

    def _on_loop(self, fn: Any, timeout_s: float = 2.0) -> Any:
        """Run ``fn`` on the control loop (between periods) and wait for its result."""
        done, out = threading.Event(), []  # type: ignore[var-annotated]
        try:
            self._actions.put_nowait((fn, done, out))
        except queue.Full:
            raise TimeoutError("control loop busy") from None
        if not done.wait(timeout_s) or isinstance(out[0], Exception):
            raise TimeoutError("control loop did not run the action")
        return out[0]

    # ----------------------------------------------------------- server side
    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.stack.recv(block=True, timeout=0.1)
            except Exception:
                log.exception("ISO-TP receive failed")
                time.sleep(0.1)
                continue
            if data is None:
                if self.session != 0x01 and time.monotonic() - self._last_request > S3_S:
                    self._default_session()
                continue
            self.requests += 1
            self._last_request = time.monotonic()
            try:
                resp = self.handle(bytes(data))
            except Exception:  # a bug here must not kill the server thread
                log.exception("UDS request %s failed", bytes(data).hex())
                resp = bytes([0x7F, data[0] if data else 0, 0x10])  # generalReject
            if resp:
                if resp[0] == 0x7F:
                    self.negative += 1
                self.stack.send(resp)

    def _default_session(self) -> None:
        self.session = 0x01
        self.unlocked = False
        self._seed = None

    def handle(self, req: bytes) -> bytes | None:
        """One request -> its response payload (None: positive response suppressed)."""
        from udsoncan.Request import Request

        if not req:
            return None
        sid = req[0]
        handlers = {SID_SESSION: self._session, SID_TESTER: self._tester, SID_RDBI: self._rdbi,
                    SID_READ_DTC: self._read_dtc, SID_CLEAR: self._clear, SID_SECURITY: self._security,
                    SID_ROUTINE: self._routine}
        if sid not in handlers:
            return bytes([0x7F, sid, NRC_SERVICE_NOT_SUPPORTED])
        try:
            Request.from_payload(req)  # udsoncan's own parse of the request (service, subfunction)
        except Exception:
            return bytes([0x7F, sid, NRC_INCORRECT_LENGTH])
        try:
            return handlers[sid](req)
        except _Nrc as nrc:
            return bytes([0x7F, sid, nrc.code])

    # --- services
    def _session(self, req: bytes) -> bytes | None:
        if len(req) != 2:
            raise _Nrc(NRC_INCORRECT_LENGTH)
        sub, suppress = req[1] & 0x7F, req[1] & 0x80
        if sub not in (0x01, 0x03):
            raise _Nrc(NRC_SUBFUNCTION_NOT_SUPPORTED)
        if sub == 0x01:
            self._default_session()
        else:
            self.session = 0x03
            self.unlocked = False
        # P2server_max 50 ms (1 ms resolution), P2*server_max 5000 ms (10 ms resolution)
        return None if suppress else bytes([0x50, sub]) + struct.pack(">HH", 50, 500)

    def _tester(self, req: bytes) -> bytes | None:
        if len(req) != 2:
            raise _Nrc(NRC_INCORRECT_LENGTH)
        if req[1] & 0x7F != 0:
            raise _Nrc(NRC_SUBFUNCTION_NOT_SUPPORTED)
        return None if req[1] & 0x80 else bytes([0x7E, 0x00])

    def _need_snapshot(self) -> NodeSnapshot:
        if self._snap is None:
            raise _Nrc(NRC_CONDITIONS_NOT_CORRECT)  # no control period yet
        return self._snap

    def _rdbi(self, req: bytes) -> bytes:
        if len(req) < 3 or (len(req) - 1) % 2:
            raise _Nrc(NRC_INCORRECT_LENGTH)
        snap = self._need_snapshot()
        out = bytearray([0x62])
        for i in range(1, len(req), 2):
            did = struct.unpack_from(">H", req, i)[0]
            val = did_value(did, snap, self.sw_version, self.serial)
            if val is None:
                raise _Nrc(NRC_REQUEST_OUT_OF_RANGE)
            out += struct.pack(">H", did) + val
        return bytes(out)

    def _read_dtc(self, req: bytes) -> bytes:
        if len(req) < 2:
            raise _Nrc(NRC_INCORRECT_LENGTH)
        sub = req[1]
        if sub in (0x01, 0x02):
            if len(req) != 3:
                raise _Nrc(NRC_INCORRECT_LENGTH)
            recs = self.dtcs.matching(req[2] & STATUS_AVAILABILITY) if req[2] & STATUS_AVAILABILITY else []
            if sub == 0x01:  # format 0x01: ISO 14229-1 DTC format
                return bytes([0x59, 0x01, STATUS_AVAILABILITY, 0x01]) + struct.pack(">H", len(recs))
            return bytes([0x59, 0x02, STATUS_AVAILABILITY]) + b"".join(r.dtc.to_bytes(3, "big") + bytes([r.status]) for r in recs)
        if sub == 0x0A:
            recs = self.dtcs.matching(0xFF)
            return bytes([0x59, 0x0A, STATUS_AVAILABILITY]) + b"".join(r.dtc.to_bytes(3, "big") + bytes([r.status]) for r in recs)
        if sub == 0x04:
            if len(req) != 6:
                raise _Nrc(NRC_INCORRECT_LENGTH)
            dtc, rec_no = int.from_bytes(req[2:5], "big"), req[5]
            r = self.dtcs.get(dtc)
            if r is None or rec_no not in (0x01, 0xFF):
                raise _Nrc(NRC_REQUEST_OUT_OF_RANGE)
            return (bytes([0x59, 0x04]) + dtc.to_bytes(3, "big") + bytes([r.status, 0x01, len(SNAPSHOT_DIDS)])
                    + r.snapshot)
        raise _Nrc(NRC_SUBFUNCTION_NOT_SUPPORTED)

    def _clear(self, req: bytes) -> bytes:
        if len(req) != 4:
            raise _Nrc(NRC_INCORRECT_LENGTH)
        group = int.from_bytes(req[1:4], "big")
        if group != 0xFFFFFF and self.dtcs.get(group) is None:
            raise _Nrc(NRC_REQUEST_OUT_OF_RANGE)
        rt = self.rt
        reset = getattr(rt.logic, "reset_faults", None)
        if reset is None:
            raise _Nrc(NRC_CONDITIONS_NOT_CORRECT)
        periods = rt.periods
        # the reset runs on the control loop and shows in the next step: longer than P2, so say
        # responsePending (NRC 0x78) first; the tester then waits P2* (ISO 14229-2 §7.2)
        self.stack.send(bytes([0x7F, SID_CLEAR, 0x78]))
        try:
            self._on_loop(lambda: (reset(rt.t_ms()), rt._event("dtc_clear_requested", group=f"0x{group:06X}")))
            # the reset takes effect in the next step: wait for a period after it
            deadline = time.monotonic() + 2.0
            while rt.periods <= periods + 1 and time.monotonic() < deadline:
                time.sleep(0.01)
            self._on_loop(lambda: self.dtcs.update(take_now(rt), self.sw_version, self.serial))
        except TimeoutError:
            raise _Nrc(NRC_CONDITIONS_NOT_CORRECT) from None
        still = self.dtcs.clear_inactive(group)
        if still:  # the cause of these is still there: they stay (the same rule as fault reset)
            raise _Nrc(NRC_CONDITIONS_NOT_CORRECT)
        return bytes([0x54])

    def _security(self, req: bytes) -> bytes:
        if len(req) < 2:
            raise _Nrc(NRC_INCORRECT_LENGTH)
        sub = req[1] & 0x7F
        if sub not in (0x01, 0x02):
            raise _Nrc(NRC_SUBFUNCTION_NOT_SUPPORTED)
        if self.session != 0x03:
            raise _Nrc(NRC_SERVICE_NOT_IN_SESSION)
        if not self.secret:
            raise _Nrc(NRC_CONDITIONS_NOT_CORRECT)  # no key configured: nothing can be unlocked
        if time.monotonic() < self._locked_until:
            raise _Nrc(0x37)  # requiredTimeDelayNotExpired
        if sub == 0x01:
            if len(req) != 2:
                raise _Nrc(NRC_INCORRECT_LENGTH)
            if self.unlocked:
                return bytes([0x67, 0x01]) + bytes(16)  # already unlocked: the zero seed (ISO 14229-1 §10.4)
            self._seed = os.urandom(16)
            return bytes([0x67, 0x01]) + self._seed
        if self._seed is None:
            raise _Nrc(NRC_REQUEST_SEQUENCE_ERROR)
        key = req[2:]
        expect = security_key(self.secret, self._seed)
        self._seed = None
        if not hmac.compare_digest(key, expect):
            self._failed_keys += 1
            if self._failed_keys >= MAX_KEY_ATTEMPTS:
                self._failed_keys = 0
                self._locked_until = time.monotonic() + LOCKOUT_S
                raise _Nrc(NRC_EXCEEDED_ATTEMPTS)
            raise _Nrc(NRC_INVALID_KEY)
        self._failed_keys = 0
        self.unlocked = True
        return bytes([0x67, 0x02])

    def _routine(self, req: bytes) -> bytes:
        if len(req) < 4:
            raise _Nrc(NRC_INCORRECT_LENGTH)
        sub, rid = req[1] & 0x7F, struct.unpack_from(">H", req, 2)[0]
        if rid != ROUTINE_CONTACTOR_CHECK:
            raise _Nrc(NRC_REQUEST_OUT_OF_RANGE)
        if sub not in (0x01, 0x03):
            raise _Nrc(NRC_SUBFUNCTION_NOT_SUPPORTED)
        if self.session != 0x03:
            raise _Nrc(NRC_SERVICE_NOT_IN_SESSION)
        if not self.unlocked:
            raise _Nrc(NRC_SECURITY_ACCESS_DENIED)
        if sub == 0x03:
            if self._routine_result is None:
                raise _Nrc(NRC_REQUEST_SEQUENCE_ERROR)
            return bytes([0x71, 0x03]) + req[2:4] + self._routine_result
        snap = self._need_snapshot()
        rt = self.rt
        i_max = float(rt.node.ramp_open_current_a)
        if any(snap.contactors) or snap.i_a is None or abs(snap.i_a) > i_max:
            raise _Nrc(NRC_CONDITIONS_NOT_CORRECT)  # not in the safe state: open, no current
        # Check every contactor's auxiliary contact reports open while commanded open
        meas = rt.meas
        fb = meas.feedback.as_tuple() if meas is not None else (True, True, True)
        ok = not any(fb)
        self._routine_result = bytes([0x00 if ok else 0x01, int(fb[0]) | int(fb[1]) << 1 | int(fb[2]) << 2])
        rt._event("uds_routine", routine=f"0x{rid:04X}", result="ok" if ok else "feedback closed")
        return bytes([0x71, 0x01]) + req[2:4] + self._routine_result


def take_now(rt: Any) -> NodeSnapshot:
    from mbms.gateways.snapshot import take

    return take(rt)


def security_key(secret: bytes, seed: bytes) -> bytes:
    """The key of SecurityAccess level 1: HMAC-SHA256(secret, seed), first 16 bytes."""
    return hmac.new(secret, seed, hashlib.sha256).digest()[:16]


class _Nrc(Exception):
    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code
