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

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

# The shared types live below the runtime (mbms.types); re-exported here for the logic's users.
from mbms.types import ALL_OPEN, Contactors, Measurement, NodeStatus, Phase

__all__ = ["ALL_OPEN", "Contactors", "Measurement", "NodeLogic", "NodeOutput", "NodeStatus", "Phase"]


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
