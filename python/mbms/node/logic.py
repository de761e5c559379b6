"""The interface between the node runtime (I/O) and the node's decision logic (sans-IO).

The runtime (:mod:`mbms.node.runtime`) owns clocks, sockets, the hardware link and the disk. The
logic (the Rust ``mbms._core.NodeCore``: pack engine + consensus + contactor sequencing) owns every
decision. The runtime drives it through :class:`NodeLogic`, passing time as an argument, so the same
logic runs in real time here and in virtual time in the simulator.

Contract (what the runtime guarantees and expects):

* ``step`` is called once per control period with a monotone ``t_ms`` (node's own clock, ms since
  an arbitrary origin; clocks of different nodes are not synchronised) and the latest measurement.
* when a step returns ``sample_request``, the runtime asks the hardware for a new sample at once
  and calls ``step`` again (same contract, later ``t_ms``) as soon as one taken after that
  request has arrived, before the next period; it then sends the resulting command at once.
* ``receive`` is called for each peer message the transport delivered (already reassembled, own
  echoes removed); it returns False when the message was rejected (malformed, foreign system,
  replayed/stale sequence, bad authentication): the runtime counts it, nothing else happens.
* ``fail_safe`` tells the logic the runtime has forced all contactors open by itself (stale or
  invalid measurements, lost hardware link, loop overrun). The logic must treat its string as open
  and re-sequence any later close (precharge first). After a fail-safe the runtime keeps forcing
  all contactors open until the logic itself has commanded all-open for one period (re-arm), so a
  logic that missed the news can never close a main contactor without precharge.
* ``export_state`` / ``import_state``: an opaque blob of what must survive a restart (SOC, SOH,
  counters); the runtime writes it atomically and restores it at start. ``import_state`` raises
  ``ValueError`` for a blob it cannot use; the runtime then starts from defaults with a warning.
  A usable blob with implausible values (SOC 150 %, capacity 1e6 Ah) is restored without them:
  ``import_state`` returns what it dropped (the runtime logs it as an event).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np


class Phase(enum.IntEnum):
    """Phase of a node's string, as reported in status and in the telemetry frame (DBC VAL_ table).

    Values 0..7 are the consensus core's ``Phase`` (consensus/src/peer.rs, also the 3-bit phase in
    every peer message), so NodeCore's phase maps over unchanged; 8 is the runtime's own. The
    numbers are on the wire (mbms/data/dbc/mbms.dbc, MBMS_STATE_<id>.Phase): do not renumber.
    """

    OPEN = 0  # contactors open, healthy, not requesting
    REQUESTING = 1  # asking peers for a close grant (S2)
    PRECHARGING = 2  # holding a grant: negative + precharge closed, waiting for the match (S3)
    CLOSING = 3  # main positive commanded, waiting for its feedback
    CLOSED = 4  # negative + positive closed, on the bus
    ISOLATED = 5  # opened on a confirmed local fault (S1); rejoins when healthy
    LISTENING = 6  # after a start: learning the state before acting
    WAITING = 7  # backing off after a withdrawn request or an aborted close
    FAIL_SAFE = 8  # the runtime forced all contactors open (stale sensors, lost link, overrun)


@dataclass(frozen=True)
class Contactors:
    """Contactor states or commands: main negative, main positive, precharge relay. True = closed."""

    neg: bool = False
    pos: bool = False
    pre: bool = False

    def any_closed(self) -> bool:
        return self.neg or self.pos or self.pre

    def as_tuple(self) -> tuple[bool, bool, bool]:
        return (self.neg, self.pos, self.pre)


#: All three contactors open: the safe state.
ALL_OPEN = Contactors(False, False, False)


@dataclass(frozen=True)
class Measurement:
    """One sample of a pack's sensors, as the hardware adapter delivers it.

    ``t_s`` is the hardware's own sample time (plant time for the simulator); ``valid`` is False
    when the adapter knows the sample is unusable (sensor error, no sample yet).
    """

    t_s: float
    v_cell_v: np.ndarray  # float64, one per series cell
    t_cell_c: np.ndarray  # float64, one per temperature sensor
    i_a: float  # string current, positive = discharge
    v_string_v: float  # inside the contactors
    v_bus_v: float  # outside the contactors
    feedback: Contactors  # auxiliary contacts of the contactors
    valid: bool = True
    #: Age of the sample by the node's own clock when ``step`` is called (set by the runtime).
    age_ms: float = 0.0


@dataclass(frozen=True)
class NodeStatus:
    """A snapshot of what the logic knows, for telemetry, the monitor and the logs."""

    node_id: int
    phase: Phase
    soc: float  # 0..1
    dcl_a: float  # own discharge limit
    ccl_a: float  # own charge limit (positive number)
    contactors: Contactors  # as commanded by the logic
    faults: tuple[str, ...] = ()
    sys_dcl_a: float = 0.0  # agreed system limits (S4/S5)
    sys_ccl_a: float = 0.0
    closed_set: tuple[int, ...] = ()
    speaker: int | None = None  # peer currently holding the close grant, if any
    peers_seen: tuple[int, ...] = ()


@dataclass
class NodeOutput:
    """What one ``step`` decides."""

    contactors: Contactors
    balance: np.ndarray  # bool, one per series cell: bleed switch on
    messages: list[bytes] = field(default_factory=list)  # to broadcast to the peers
    status: NodeStatus | None = None
    #: What the peer protocol noticed this step, as dicts with a "kind" (peer_restarted,
    #: duplicate_id, peer_lost, ...; mbms.consensus); the runtime logs them.
    events: list[dict[str, Any]] = field(default_factory=list)
    #: Two-phase main close (brief S3, issue 11): the logic's precharge dwell is over and it
    #: commands the main contactor only on a sample taken from now on. The runtime requests
    #: one at once and steps the logic again as soon as it arrives (not a period later).
    sample_request: bool = False
    #: A string is joining (precharging/closing): the load should be held steady.
    join_in_progress: bool = False


@runtime_checkable
class NodeLogic(Protocol):
    """What the runtime drives; implemented by ``mbms._core.NodeCore`` (via a thin adapter)."""

    def step(self, t_ms: int, meas: Measurement) -> NodeOutput:
        """One control period."""
        ...

    def receive(self, t_ms: int, payload: bytes) -> bool:
        """One peer message; False = rejected (the runtime counts it and drops it)."""
        ...

    def fail_safe(self, t_ms: int, reason: str) -> None:
        """The runtime has forced all contactors open by itself (see module docstring)."""
        ...

    def export_state(self) -> bytes: ...

    def import_state(self, data: bytes) -> list[str] | None:
        """Restore; returns the implausible items dropped (empty or None: all restored)."""
        ...
