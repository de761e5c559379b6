"""Type stubs of the Rust extension module ``mbms._core``."""

from __future__ import annotations

class CellModel:
    """A cell parameter set parsed from the text of a ``hw/cells/*.toml`` file."""

    @staticmethod
    def from_toml(text: str) -> CellModel: ...
    @property
    def name(self) -> str: ...
    @property
    def chemistry(self) -> str: ...
    @property
    def source(self) -> str: ...
    @property
    def capacity_ah(self) -> float: ...
    @property
    def v_min_v(self) -> float: ...
    @property
    def v_max_v(self) -> float: ...
    def ocv(self, soc: float, temp_c: float) -> float: ...
    def soc_from_ocv(self, v: float, temp_c: float) -> float: ...
    def r0(self, soc: float, temp_c: float) -> float: ...
    def simulate(
        self, soc0: float, current_a: list[float], dt_s: float, temp_c: float
    ) -> tuple[list[float], list[float]]: ...

# ---------------------------------------------------------------------------------------
# Peer coordination (consensus): rust_core/src/py/consensus.rs over crate mbms-consensus.
# Typed wrapper: mbms.consensus.
# ---------------------------------------------------------------------------------------

from typing import Any

class ConsensusPeer:
    """One peer of the leader-less coordination (sans-IO; times in ms of the node's clock).

    ``config``: dict of PeerConfig fields (system_id, node_id, members, heartbeat_ms,
    dv_close_v, lease_ms, max_drift_ppm, dwell_ms, precharge_settle_a, precharge_timeout_ms,
    close_confirm_ms, fail_timeout_ms, grant_wait_ms, listen_periods, bus_live_v, seed,
    dcdc, dcdc_soc_gain); missing fields take the defaults. Raises ValueError((field, message)).
    """

    def __init__(self, config: dict[str, Any], incarnation: int) -> None: ...
    def on_message(self, now_ms: int, data: bytes) -> str | None:
        """None if accepted; else the drop reason (counted): malformed, foreign_system,
        unknown_sender, own_echo, duplicate, stale, duplicate_id."""
    def tick(self, now_ms: int, local: dict[str, Any]) -> dict[str, Any]:
        """``local``: ocv_v, r_ohm, soc, dcl_a, ccl_a, dcl_peak_a, ccl_peak_a, fault, may_close,
        v_string_v, v_bus_v, i_a, feedback=(neg, pos, pre). Returns command=(neg, pos, pre),
        phase, system_dcl_a, system_ccl_a, closed_set, live_set, quorum, speaker,
        dcdc_setpoint_a, messages (list[bytes]), events (list[dict] with "kind")."""
    def counters(self) -> dict[str, int]: ...
    @property
    def phase(self) -> str: ...
    @property
    def node_id(self) -> int: ...
    @property
    def quorum_size(self) -> int: ...

class CanReassembler:
    """Reassembles classic-CAN-segmented peer messages; bad frames are counted and dropped."""

    def __init__(self) -> None: ...
    def push(self, can_id: int, data: bytes) -> tuple[int, bytes] | None: ...
    @property
    def dropped_frames(self) -> int: ...
    @property
    def messages(self) -> int: ...
    @property
    def last_error(self) -> str | None: ...

def can_segment_classic(sender: int, msg_counter: int, data: bytes) -> list[tuple[int, bytes]]: ...
def can_frame_fd(sender: int, data: bytes) -> tuple[int, bytes]: ...
def can_unframe_fd(can_id: int, data: bytes) -> tuple[int, bytes]: ...
def can_frame_bits_classic(can_id: int, data: bytes, worst: bool = False) -> int: ...
def can_bus_load_classic(msg_len: int, peers: int, period_ms: float, bitrate: float) -> float: ...
def consensus_sim(
    seeds: int,
    first_seed: int = 0,
    peers_min: int = 3,
    peers_max: int = 5,
    duration_ms: int = 6000,
    threads: int = 2,
    config: dict[str, Any] | None = None,
) -> dict[str, Any]: ...
def consensus_sim_replay(
    seed: int, peers_min: int = 3, peers_max: int = 5, duration_ms: int = 6000
) -> tuple[list[str], list[str]]: ...
def consensus_bus_load(
    peers: int = 16,
    duration_ms: int = 10000,
    seed: int = 1,
    bitrate: float = 500000.0,
    config: dict[str, Any] | None = None,
) -> dict[str, Any]: ...
