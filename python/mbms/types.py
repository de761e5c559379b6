"""Types shared by every layer of mbms: the node runtime, the transports, the hardware adapters,
telemetry, discovery, the plant link and the simulators.

This module sits at the bottom of the package (it imports only ``mbms._core``): lower layers use
these types without importing the node runtime (``mbms.node``), so data flows one way, from the
hardware and the network up to the runtime. ``tests/test_layers.py`` checks that direction.

* :class:`Phase`: a node's phase. Values 0..7 are the consensus core's ``Phase``
  (consensus/src/peer.rs; the 3-bit phase of every peer message), built here from the Rust enum
  (``mbms._core.PHASE_NAMES``) so Python never restates it; ``FAIL_SAFE`` (8) is the runtime's
  own. The numbers are on the wire (mbms/data/dbc/mbms.dbc, ``MBMS_STATE_<id>.Phase``): never renumber.
* :class:`Contactors`: contactor states or commands (main negative, main positive, precharge).
* :class:`Measurement`: one sample of a pack's sensors as a hardware adapter delivers it.
* :class:`Fault`: an active protection condition, as the Rust core reports it.
* :class:`NodeStatus`: what a node's logic knows, for telemetry, the monitor and the logs.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from mbms import _core

if TYPE_CHECKING:
    # For type checkers only: the same members as the runtime class built from the Rust enum below.
    class Phase(enum.IntEnum):
        OPEN = 0
        REQUESTING = 1
        PRECHARGING = 2
        CLOSING = 3
        CLOSED = 4
        ISOLATED = 5
        LISTENING = 6
        WAITING = 7
        FAIL_SAFE = 8
else:
    def _phase() -> type[enum.IntEnum]:
        names = [str(n).upper() for n in _core.PHASE_NAMES]
        # FAIL_SAFE: the runtime forced all contactors open (stale sensors, lost link, overrun)
        members = [(name, value) for value, name in enumerate(names)] + [("FAIL_SAFE", len(names))]
        cls = enum.IntEnum("Phase", members, module=__name__, qualname="Phase")
        cls.__doc__ = ("Phase of a node's string: 0..7 the consensus core's Phase (Rust, wire order), "
                       "8 the runtime's FAIL_SAFE.")
        return cls

    Phase = _phase()


@dataclass(frozen=True)
class Contactors:
    """Contactor states or commands: main negative, main positive, precharge relay. True = closed.

    The one Python form of the Rust ``Contactors`` (consensus/src/peer.rs for the protocol,
    sim/src/plant/contactor.rs for the plant); it crosses the bindings as ``(neg, pos, pre)``.
    """

    neg: bool = False
    pos: bool = False
    pre: bool = False

    @property
    def main_closed(self) -> bool:
        """Both main contactors closed: the string is on the bus."""
        return self.neg and self.pos

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
class Fault:
    """An active protection condition, as the Rust core reports it in every mode (NodeCore,
    Engine, the fast simulator's report): ``{"rule", "level", "index"}`` with the Rust names
    (``rust_core/src/protection.rs``: ``Rule::name``, ``Level::name``). ``index`` is the cell or
    temperature sensor, ``PACK_INDEX`` (u32::MAX) for a pack-level rule."""

    rule: str
    level: str
    index: int

    PACK_INDEX = 0xFFFF_FFFF

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Fault:
        return cls(str(d["rule"]), str(d["level"]), int(d["index"]))

    def as_dict(self) -> dict[str, Any]:
        return {"rule": self.rule, "level": self.level, "index": self.index}

    def __str__(self) -> str:
        return f"{self.rule}:{self.level}@{'pack' if self.index == self.PACK_INDEX else self.index}"


@dataclass(frozen=True)
class NodeStatus:
    """A snapshot of what the logic knows, for telemetry, the monitor and the logs."""

    node_id: int
    phase: Phase
    soc: float  # 0..1
    dcl_a: float  # own discharge limit
    ccl_a: float  # own charge limit (positive number)
    contactors: Contactors  # as commanded by the logic
    faults: tuple[Fault, ...] = ()
    #: Why the node opened on its own, besides a fault (Rust ``FailSafe::name``), None if not.
    failsafe: str | None = None
    sys_dcl_a: float = 0.0  # agreed system limits (S4/S5)
    sys_ccl_a: float = 0.0
    closed_set: tuple[int, ...] = ()
    speaker: int | None = None  # peer currently holding the close grant, if any
    peers_seen: tuple[int, ...] = ()
