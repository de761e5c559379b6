"""The production :class:`~mbms.node.logic.NodeLogic`: ``mbms._core.NodeCore`` (pack engine +
peer coordination + contactor sequencing, Rust) behind the runtime's protocol.

Configuration mapping:

* engine: the pack file's engine tables as the core normalised them (``PackFile.engine``), with
  the cell file's text;
* peer (consensus ``PeerConfig``): the system file's normalised protocol (``SystemConfig.peer``:
  ``system_id`` = CRC-32 of the system name, ``members``, every protocol setting) with this
  node's ``node_id``; ``seed`` = the incarnation;
* node logic: the whole ``[node]`` table (stale_ms, auto_reset_s, feedback_mismatch_ms, the
  ramp-open settings), the same settings fast mode takes;
* incarnation: this start's boot counter (``node/persistence.next_boot``: +1 per start, saved in
  the state dir before anything is sent). Peers accept a node's new boot only if it is higher
  than the last one they authenticated (brief S7); two live boots of one id are a duplicate id.
* keys: the system's message keys (``mbms.keys.system_keys``: the key file of ``[auth]``, checked
  for permissions; None only with ``[auth] off = true``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mbms.config_views import PackFile, SystemConfig
from mbms.node.logic import Contactors, Measurement, NodeOutput, NodeStatus, Phase
from mbms.types import Fault


class CoreLogic:
    """Adapts ``mbms._core.NodeCore`` to :class:`~mbms.node.logic.NodeLogic`."""

    def __init__(self, core: Any, node_id: int, incarnation: int | None = None) -> None:
        self.core = core
        self.node_id = node_id
        #: This run's boot nonce (in every peer message; discovery advertises it too).
        self.incarnation = incarnation
        self.last: dict[str, Any] = {}

    @classmethod
    def from_configs(cls, core_cls: Any, pack: PackFile, system: SystemConfig,
                     incarnation: int | None = None) -> CoreLogic:
        from mbms.errors import ConfigError
        from mbms.keys import system_keys
        from mbms.node.persistence import next_boot

        assert pack.cell_path is not None
        keys = system_keys(system)  # before the boot counter moves: a missing key stops here
        inc = next_boot(pack.node.state_dir, pack.source) if incarnation is None else incarnation
        try:
            # every value as the core normalised it (pack.engine, system.peer, pack.node)
            core = core_cls(pack.engine, pack.cell_path.read_text(), system.peer_config(pack.node.id, inc),
                            pack.node.logic_dict(), inc, keys)
        except ConfigError as exc:  # the core names the field; say which file it is in
            if exc.source is not None:
                raise
            source = system.source if exc.field.startswith("protocol.") else pack.source
            raise ConfigError(exc.field, exc.message, source) from None
        return cls(core, pack.node.id, inc)

    def step(self, t_ms: int, meas: Measurement) -> NodeOutput:
        d = self.core.step(
            t_ms, max(0, t_ms - int(meas.age_ms)),
            np.ascontiguousarray(meas.v_cell_v, dtype=np.float64), np.ascontiguousarray(meas.t_cell_c, dtype=np.float64),
            float(meas.i_a), float(meas.v_string_v), float(meas.v_bus_v), meas.feedback.as_tuple(), bool(meas.valid),
        )
        self.last = d
        c = Contactors(*d["contactors"])
        # the core's one output schema (mbms_core::node::NodeReport): phase by name, faults as
        # {rule, level, index}, the fail-safe reason by name or None
        status = NodeStatus(
            node_id=self.node_id, phase=Phase[str(d["phase"]).upper()], soc=float(d["soc"]),
            dcl_a=float(d["local_dcl_a"]), ccl_a=float(d["local_ccl_a"]), contactors=c,
            faults=tuple(Fault.from_dict(f) for f in d["faults"]), failsafe=d["failsafe"],
            sys_dcl_a=float(d["system_dcl_a"]), sys_ccl_a=float(d["system_ccl_a"]),
            closed_set=tuple(d["closed_set"]), speaker=d["speaker"], peers_seen=tuple(d["live_set"]),
        )
        return NodeOutput(c, np.asarray(d["balance"], dtype=bool), list(d["messages"]), status, list(d.get("events", ())),
                          sample_request=bool(d["sample_request"]), join_in_progress=bool(d["join_in_progress"]))

    def receive(self, t_ms: int, payload: bytes) -> bool:
        return bool(self.core.receive(t_ms, payload))

    def boot_now(self) -> int:
        """The boot counter the core's messages carry now (it moves on by itself on a counter
        wrap or a twin with this node's id); the runtime saves it with the state."""
        return int(self.core.incarnation)

    def receive_counters(self) -> list[tuple[int, int, int]]:
        """Per sender (sender, boot, last message counter accepted): saved with the state."""
        return [(int(s), int(b), int(c)) for s, b, c in self.core.receive_counters()]

    def restore_receive_counters(self, counters: list[tuple[int, int, int]]) -> int:
        """Restore what a previous run had accepted (before the first message); only stricter."""
        return int(self.core.restore_receive_counters(list(counters)))

    def counters(self) -> dict[str, int]:
        """The peer's message counters (received by reason, incl. forged/unauthenticated/old_boot)."""
        return {str(k): int(v) for k, v in self.core.counters().items()}
    def reset_faults(self, t_ms: int) -> None:
        """An operator's fault reset (UDS ClearDiagnosticInformation): the core clears only
        latched faults whose cause is gone."""
        self.core.reset_faults(t_ms)

    def fail_safe(self, t_ms: int, reason: str) -> None:
        self.core.fail_safe()

    def export_state(self) -> bytes:
        return bytes(self.core.export_state())

    def import_state(self, data: bytes) -> list[str]:
        return list(self.core.import_state(data) or [])
