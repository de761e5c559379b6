"""Leader-less peer coordination (typed wrapper of the Rust core in ``mbms._core``).

The protocol itself lives in the Rust crate ``mbms-consensus`` (sans-IO): a :class:`Peer`
takes received bytes (:meth:`Peer.on_message`) and, every control period, the time and the
string's own measurements (:meth:`Peer.tick`); it returns the contactor command, the agreed
system limits, the closed/live sets, the speaker, the messages to broadcast and events.
Time is always an argument (milliseconds of this node's monotonic clock).

Messages are a fixed layout of :data:`MESSAGE_LEN` bytes with a 32-bit CMAC-AES-128 tag
(consensus/src/wire.rs, auth.rs): a peer verifies the tag and the freshness of every message
before it touches any state (brief S7). CAN transport helpers: :func:`segment_classic` /
:class:`CanReassembler` (classic CAN: three frames of 8, 8, 6 bytes, id
0x400 | (sender-1)<<4 | kind<<3 | toggle<<2 | index) and :func:`frame_fd` / :func:`unframe_fd`
(one CAN FD frame per message).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from mbms import _core
from mbms.config import view
from mbms.errors import FrameError
# the one Contactors and Phase of the package (Phase built from the Rust enum)
from mbms.types import Contactors, Phase

__all__ = [
    "CanReassembler",
    "ConsensusConfig",
    "ConsensusEvent",
    "Contactors",
    "LocalState",
    "MESSAGE_LEN",
    "MessageAuth",
    "Peer",
    "PeerOutput",
    "Phase",
    "bus_load_classic",
    "frame_bits_classic",
    "frame_fd",
    "segment_classic",
    "unframe_fd",
]


@dataclass(frozen=True)
class ConsensusConfig:
    """Protocol configuration of one peer: a read-only view of the Rust ``PeerConfig``
    (consensus/src/config.rs: schema, defaults and ranges live there, never here).

    Build it with :meth:`of` (missing settings take the Rust defaults). Times are milliseconds of
    the peer's own clock. ``members`` is the configured member set (ids 1..64); quorum =
    floor(N/2)+1 of it.
    """

    system_id: int
    node_id: int
    members: tuple[int, ...]
    heartbeat_ms: int
    dv_close_v: float
    lease_ms: int
    max_drift_ppm: int
    dwell_ms: int
    precharge_settle_a: float
    precharge_timeout_ms: int
    close_confirm_ms: int
    fail_timeout_ms: int
    grant_wait_ms: int
    listen_periods: int
    bus_live_v: float
    seed: int
    dcdc: bool
    dcdc_soc_gain: float
    main_close_time_ms: int
    verify_timeout_ms: int
    max_bus_slew_v_per_s: float
    join_hold_lead_ms: int
    #: Uncertainty the S4 limits account for (brief §4; consensus sharing::Uncertainty).
    share_ocv_uncertainty_v: float
    share_r_uncertainty: float
    share_i_uncertainty: float
    #: The sent source voltage stands until the new one is this far from it (V; counted in the S4 margin).
    share_ocv_hold_v: float
    #: The same for the resistance, as a fraction of it (counted in the S4 margin).
    share_r_hold: float

    @classmethod
    def of(cls, *, check: bool = True, **settings: Any) -> ConsensusConfig:
        """The normalised config for ``settings`` (any PeerConfig fields). Raises
        :class:`mbms.errors.ConfigError` naming the field; ``check=False`` skips the range checks (for a
        base that a caller completes with node_id and members)."""
        if "members" in settings:
            settings["members"] = list(settings["members"])
        return view(cls, _core.peer_config(settings, check=check))

    def replace(self, **changes: Any) -> ConsensusConfig:
        """A validated copy with some settings changed."""
        return ConsensusConfig.of(**{**self.to_dict(), **changes})

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["members"] = list(self.members)
        return d

    @property
    def quorum(self) -> int:
        return len(self.members) // 2 + 1



@dataclass(frozen=True)
class LocalState:
    """This string's own estimates and measurements (current: discharge positive)."""

    ocv_v: float
    r_ohm: float
    soc: float
    dcl_a: float
    ccl_a: float
    dcl_peak_a: float
    ccl_peak_a: float
    fault: bool
    may_close: bool
    v_string_v: float
    v_bus_v: float
    i_a: float
    feedback: Contactors = field(default_factory=Contactors)

    def to_dict(self) -> dict[str, Any]:
        return {
            "ocv_v": float(self.ocv_v),
            "r_ohm": float(self.r_ohm),
            "soc": float(self.soc),
            "dcl_a": float(self.dcl_a),
            "ccl_a": float(self.ccl_a),
            "dcl_peak_a": float(self.dcl_peak_a),
            "ccl_peak_a": float(self.ccl_peak_a),
            "fault": bool(self.fault),
            "may_close": bool(self.may_close),
            "v_string_v": float(self.v_string_v),
            "v_bus_v": float(self.v_bus_v),
            "i_a": float(self.i_a),
            "feedback": (self.feedback.neg, self.feedback.pos, self.feedback.pre),
        }


@dataclass(frozen=True)
class ConsensusEvent:
    """``kind`` is one of peer_joined, peer_lost, peer_restarted, duplicate_id,
    quorum_gained, quorum_lost, request_sent, request_withdrawn, granted, grant_released,
    precharge_started, main_closing, closed, aborted, opened, isolated, rejoining,
    speaker_changed; ``data`` holds its fields (id, ticket, reason, speaker, ...)."""

    kind: str
    data: dict[str, Any]


@dataclass(frozen=True)
class PeerOutput:
    command: Contactors
    phase: Phase
    system_dcl_a: float
    system_ccl_a: float
    #: member ids, ascending: the closed set has one type in every output (NodeStatus too)
    closed_set: tuple[int, ...]
    live_set: tuple[int, ...]
    quorum: bool
    speaker: int | None
    dcdc_setpoint_a: float | None
    messages: list[bytes]
    events: list[ConsensusEvent]

    @property
    def closed_ids(self) -> list[int]:
        return list(self.closed_set)

    @property
    def live_ids(self) -> list[int]:
        return list(self.live_set)


#: Length of every peer message (bytes).
MESSAGE_LEN: int = int(_core.MESSAGE_LEN)
MessageAuth = _core.MessageAuth


class Peer:
    """One peer of the coordination. Raises :class:`mbms.errors.ConfigError` on a bad configuration.
    ``keys``: the system's message keys (the first signs); None = no authentication."""

    def __init__(self, config: ConsensusConfig, incarnation: int, keys: list[bytes] | None) -> None:
        # a bad config raises mbms.errors.ConfigError from the core, naming the field
        self._p = _core.ConsensusPeer(config.to_dict(), int(incarnation), keys)
        self.config = config

    def on_message(self, now_ms: int, data: bytes) -> str | None:
        """Feed received bytes. None if accepted, else why it was dropped (and counted):
        malformed, unauthenticated, forged, old_boot, unknown_sender, own_echo, duplicate, stale,
        duplicate_id."""
        return self._p.on_message(int(now_ms), bytes(data))

    def tick(self, now_ms: int, local: LocalState) -> PeerOutput:
        o = self._p.tick(int(now_ms), local.to_dict())
        neg, pos, pre = o["command"]
        return PeerOutput(
            command=Contactors(neg, pos, pre),
            phase=Phase[str(o["phase"]).upper()],
            system_dcl_a=o["system_dcl_a"],
            system_ccl_a=o["system_ccl_a"],
            closed_set=tuple(o["closed_set"]),
            live_set=tuple(o["live_set"]),
            quorum=o["quorum"],
            speaker=o["speaker"],
            dcdc_setpoint_a=o["dcdc_setpoint_a"],
            messages=list(o["messages"]),
            events=[ConsensusEvent(e.pop("kind"), e) for e in o["events"]],
        )

    def counters(self) -> dict[str, int]:
        return dict(self._p.counters())

    @property
    def phase(self) -> Phase:
        return Phase[str(self._p.phase).upper()]


def segment_classic(message: bytes) -> list[tuple[int, bytes]]:
    """The three classic CAN frames (can_id, data) of one message."""
    try:
        return _core.can_segment_classic(bytes(message))
    except ValueError as exc:
        raise FrameError(str(exc)) from None


CanReassembler = _core.CanReassembler


def frame_fd(message: bytes) -> tuple[int, bytes]:
    try:
        return _core.can_frame_fd(bytes(message))
    except ValueError as exc:
        raise FrameError(str(exc)) from None


def unframe_fd(can_id: int, data: bytes) -> tuple[int, bytes]:
    try:
        return _core.can_unframe_fd(can_id, bytes(data))
    except ValueError as exc:
        raise FrameError(str(exc)) from None


def frame_bits_classic(can_id: int, data: bytes, worst: bool = False) -> int:
    return _core.can_frame_bits_classic(can_id, bytes(data), worst)


def bus_load_classic(peers: int, period_ms: float, bitrate: float = 500_000.0) -> float:
    """Worst-case classic CAN bus load (fraction) for peers sending one message each period."""
    return _core.can_bus_load_classic(peers, period_ms, bitrate)
