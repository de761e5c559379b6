"""Type stubs of the Rust extension module ``mbms._core``."""

from __future__ import annotations

from typing import Any, TypedDict, final

import numpy as np
import numpy.typing as npt
from numpy.typing import NDArray

__all__ = [
    "CellModel",
    "Engine",
    "config_extends",
    "node_files",
    "engine_config_layers",
    "engine_config",
    "peer_config",
    "node_config",
    "join_hold_derived",
    "config_schemas",
    "engine_rules",
    "engine_levels",
    "ConsensusPeer",
    "MessageAuth",
    "MESSAGE_LEN",
    "PHASE_NAMES",
    "CanReassembler",
    "can_segment_classic",
    "can_frame_fd",
    "can_unframe_fd",
    "can_frame_bits_classic",
    "can_bus_load_classic",
    "consensus_sim",
    "consensus_sim_replay",
    "SABOTAGE_MODES",
    "consensus_bus_load",
    "FastSim",
    "load_profile_values",
    "SafetyMonitor",
    "NodeCore",
    "Plant",
    "plant_config_normalize",
    "scenario_config",
]

@final
class CellModel:
    """A cell parameter set parsed from the text of a ``mbms/data/cells/*.toml`` file."""

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
    def stated_model_error_v(self, current_a: list[float], dt_s: float, rest_c: float) -> list[float]: ...
    def simulate(
        self,
        soc0: float,
        current_a: list[float],
        dt_s: float,
        temp_c: float | list[float],
        *,
        capacity_scale: float = 1.0,
        resistance_scale: float = 1.0,
    ) -> tuple[list[float], list[float]]: ...

# ---------------------------------------------------------------------------------------
# Peer coordination (consensus): bindings/src/consensus.rs over crate mbms-consensus.
# Typed wrapper: mbms.consensus.
# ---------------------------------------------------------------------------------------

from typing import Any

@final
class ConsensusPeer:
    """One peer of the leader-less coordination (sans-IO; times in ms of the node's clock).

    ``config``: dict of PeerConfig fields (system_id, node_id, members, heartbeat_ms,
    dv_close_v, lease_ms, max_drift_ppm, dwell_ms, precharge_settle_a, precharge_timeout_ms,
    close_confirm_ms, fail_timeout_ms, grant_wait_ms, listen_periods, bus_live_v, seed,
    dcdc, dcdc_soc_gain); missing fields take the defaults. Raises ValueError((field, message)).
    """

    def __new__(cls, config: dict[str, Any], incarnation: int, keys: list[bytes] | None) -> ConsensusPeer: ...
    def on_message(self, now_ms: int, data: bytes) -> str | None:
        """None if accepted; else the drop reason (counted): malformed, unauthenticated, forged,
        old_boot, unknown_sender, own_echo, duplicate, stale, duplicate_id."""
    def tick(self, now_ms: int, local: dict[str, Any]) -> dict[str, Any]:
        """``local``: ocv_v, r_ohm, soc, dcl_a, ccl_a, dcl_peak_a, ccl_peak_a, fault, may_close,
        v_string_v, v_bus_v, i_a, feedback=(neg, pos, pre). Returns command=(neg, pos, pre),
        phase, system_dcl_a, system_ccl_a, closed_set, live_set, quorum, speaker,
        dcdc_setpoint_a, messages (list[bytes]), events (list[dict] with "kind")."""
    def counters(self) -> dict[str, int]: ...
    def receive_counters(self) -> list[tuple[int, int, int]]: ...
    def restore_receive_counters(self, counters: list[tuple[int, int, int]]) -> int: ...
    @property
    def phase(self) -> str: ...
    @property
    def node_id(self) -> int: ...
    @property
    def quorum_size(self) -> int: ...

@final
class CanReassembler:
    """Reassembles classic-CAN-segmented peer messages; bad frames are counted and dropped."""

    def __new__(cls) -> CanReassembler: ...
    def push(self, can_id: int, data: bytes) -> tuple[int, bytes] | None: ...
    @property
    def dropped_frames(self) -> int: ...
    @property
    def messages(self) -> int: ...
    @property
    def last_error(self) -> str | None: ...
    @property
    def last_error_kind(self) -> str | None: ...

#: The consensus Phase names in wire order (0..7); mbms.types.Phase is built from it.
PHASE_NAMES: list[str]

MESSAGE_LEN: int

@final
class MessageAuth:
    """CMAC-AES-128 authentication of one system (32-bit tags): peer messages and telemetry."""

    def __new__(cls, system_id: int, keys: list[bytes] | None) -> MessageAuth: ...
    @property
    def enabled(self) -> bool: ...
    def open(self, data: bytes) -> dict[str, Any]: ...
    @staticmethod
    def decode_unverified(data: bytes) -> dict[str, Any]: ...
    def tag(self, data: bytes) -> bytes: ...
    def verify(self, data: bytes, tag: bytes) -> str | None: ...

def can_segment_classic(data: bytes) -> list[tuple[int, bytes]]: ...
def can_frame_fd(data: bytes) -> tuple[int, bytes]: ...
def can_unframe_fd(can_id: int, data: bytes) -> tuple[int, bytes]: ...
def can_frame_bits_classic(can_id: int, data: bytes, worst: bool = False) -> int: ...
def can_bus_load_classic(peers: int, period_ms: float, bitrate: float) -> float: ...
def consensus_sim(
    seeds: int,
    first_seed: int = 0,
    peers_min: int = 3,
    peers_max: int = 5,
    duration_ms: int = 6000,
    threads: int = 2,
    config: dict[str, Any] | None = None,
    sabotage: str | None = None,
    adversary: bool | None = None,
) -> dict[str, Any]: ...
def consensus_sim_replay(
    seed: int,
    peers_min: int = 3,
    peers_max: int = 5,
    duration_ms: int = 6000,
    sabotage: str | None = None,
    adversary: bool | None = None,
) -> tuple[list[str], list[str]]: ...

#: Names of the protocol simulator's checker self-tests (``consensus_sim(sabotage=...)``), "none" first.
SABOTAGE_MODES: list[str]
def consensus_bus_load(
    peers: int = 16,
    duration_ms: int = 10000,
    seed: int = 1,
    bitrate: float = 500000.0,
    config: dict[str, Any] | None = None,
) -> dict[str, Any]: ...

# ---- plant simulator (bindings/src/plant.rs; Python API: mbms.plant) --------------------

def plant_config_normalize(config_json: str) -> str:
    """Check a plant description (JSON); return it with defaults filled in.
    Raises ValueError((field, message))."""

@final
class Plant:
    """The parallel-string plant. Description errors: ValueError((field, message))."""

    def __new__(cls, config_json: str, cell_tomls: list[str], seed: int) -> Plant: ...
    @property
    def n_strings(self) -> int: ...
    @property
    def t_s(self) -> float: ...
    def series(self, k: int) -> int: ...
    def step(self, dt_s: float) -> None: ...
    def run(self, dt_s: float, n_steps: int, measure_all: bool = False) -> None: ...
    def set_command(
        self,
        k: int,
        neg: bool,
        pos: bool,
        pre: bool,
        balance: list[bool] | None = None,
        dcdc_setpoint_a: float | None = None,
    ) -> None: ...
    def set_load_a(self, i_a: float) -> None: ...
    def set_load_w(self, p_w: float) -> None: ...
    def clear_load_override(self) -> None: ...
    def inject(self, fault_json: str) -> None: ...
    def arm_join_load_step(self, k: int | None, after_s: float, delta_a: float) -> None: ...
    def clear_join_load_steps(self) -> None: ...
    def join_steps_fired(self) -> list[tuple[float, float]]: ...
    def main_close_events(self) -> list[tuple[float, int, float, float]]: ...
    def measure(
        self, k: int, fresh: bool = False
    ) -> tuple[
        float,
        npt.NDArray[np.float64],
        npt.NDArray[np.float64],
        float,
        float,
        float,
        tuple[bool, bool, bool],
        bool,
    ]: ...
    def v_bus_v(self) -> float: ...
    def string_current_a(self) -> npt.NDArray[np.float64]: ...
    def string_peak_current_a(self) -> npt.NDArray[np.float64]: ...
    def string_ocv_v(self) -> npt.NDArray[np.float64]: ...
    def string_voltage_v(self) -> npt.NDArray[np.float64]: ...
    def string_thevenin(self) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]: ...
    def cell_soc(self, k: int) -> npt.NDArray[np.float64]: ...
    def cell_temp_c(self, k: int) -> npt.NDArray[np.float64]: ...
    def cell_capacity_scale(self, k: int) -> npt.NDArray[np.float64]: ...
    def contactor_state(self, k: int) -> tuple[bool, bool, bool]: ...
    def load_a(self) -> float: ...
    def load_limited(self) -> bool: ...
    def capacitor_current_a(self) -> float: ...
    def bleed_current_a(self) -> float: ...
    def energy(self) -> dict[str, float]: ...

# ---- node logic and fast simulation (bindings/src/node.rs, fastsim.rs) ------------------

@final
class NodeCore:
    """One BMU's sans-IO decision logic: pack engine + peer coordination + contactor sequencing."""

    def __new__(
        cls,
        engine: dict[str, Any],
        cell_toml: str,
        peer: dict[str, Any],
        node: dict[str, Any],
        incarnation: int,
        keys: list[bytes] | None,
    ) -> NodeCore: ...
    @property
    def node_id(self) -> int: ...
    @property
    def incarnation(self) -> int: ...
    @property
    def n_cells(self) -> int: ...
    @property
    def n_temps(self) -> int: ...
    def step(
        self,
        t_ms: int,
        meas_t_ms: int,
        v_cell_v: npt.NDArray[np.float64],
        t_cell_c: npt.NDArray[np.float64],
        i_a: float,
        v_string_v: float,
        v_bus_v: float,
        feedback: tuple[bool, bool, bool],
        valid: bool,
    ) -> dict[str, Any]: ...
    def receive(self, t_ms: int, payload: bytes) -> bool: ...
    def fail_safe(self) -> None: ...
    def reset_faults(self, t_ms: int) -> None: ...
    def export_state(self) -> bytes: ...
    def import_state(self, data: bytes) -> list[str]: ...
    def counters(self) -> dict[str, int]: ...
    def receive_counters(self) -> list[tuple[int, int, int]]: ...
    def restore_receive_counters(self, counters: list[tuple[int, int, int]]) -> int: ...

@final
class FastSim:
    """Plant + N NodeCores + a simulated peer network on a virtual clock (``mbms sim`` fast mode)."""

    def __new__(
        cls,
        plant_json: str,
        cells: list[str],
        engines: list[dict[str, Any]],
        system: dict[str, Any],
        node: dict[str, Any],
        drift_ppm: list[float],
        seed: int,
        dt_ms: int,
        record_every: int,
    ) -> FastSim: ...
    @property
    def t_ms(self) -> int: ...
    @property
    def n(self) -> int: ...
    @staticmethod
    def system_channels() -> list[str]: ...
    @staticmethod
    def string_channels() -> list[str]: ...
    def run_until(self, t_ms: int) -> None: ...
    def set_loss(self, p: float) -> None: ...
    def set_duplicate(self, p: float) -> None: ...
    def set_delay(self, max_ms: int) -> None: ...
    def set_groups(self, groups: list[int]) -> None: ...
    def set_clip_load(self, on: bool) -> None: ...
    def set_node_period(self, period_ms: int | None = None) -> None: ...
    def set_hold_load_during_join(self, on: bool) -> None: ...
    def set_hold_latency_ms(self, ms: int) -> None: ...
    def freeze_plant(self, ms: int) -> None: ...
    def arm_join_load_step(self, k: int | None, after_s: float, delta_a: float) -> None: ...
    def clear_join_load_steps(self) -> None: ...
    def join_steps_fired(self) -> list[tuple[float, float]]: ...
    def plant_t_s(self) -> float: ...
    def arm_join_request_step(self, k: int | None, after_ms: int, delta_a: float) -> None: ...
    def clear_request_steps(self) -> None: ...
    def main_close_events(self) -> list[tuple[float, int, float, float]]: ...
    def node_state(self, k: int) -> dict[str, Any] | None:
        """``{phase, command: {neg, pos, pre}, fault, aborts, closes}`` (sim/src/fastsim.rs NodeState)."""
    def plant_load_a(self) -> float: ...
    def kill(self, k: int) -> None: ...
    def restart(self, k: int) -> None: ...
    def inject(self, fault_json: str) -> None: ...
    def last(self) -> tuple[list[float], list[list[float]]] | None: ...
    def records(self) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]: ...
    def report(self) -> dict[str, Any]: ...

# ---- the safety monitor (bindings/src/monitor.rs over sim/src/monitor.rs) -----------------

@final
class SafetyMonitor:
    """The one S1-S6 monitor of every simulation mode, for processes mode: fed the plant's
    truth and each node's telemetry. ``config``: the peer configuration the nodes run."""

    def __new__(cls, config: dict[str, Any]) -> SafetyMonitor: ...
    def node_report(
        self,
        k: int,
        alive: bool,
        phase: int | None = None,
        reports_open: bool = False,
        system_dcl_a: float | None = None,
        system_ccl_a: float | None = None,
        local_dcl_a: float | None = None,
        local_ccl_a: float | None = None,
        closed_count: int | None = None,
        limits_binding: bool = False,
    ) -> None: ...
    def main_close_event(self, k: int, dv_v: float) -> None: ...
    def plant_step(
        self,
        t_s: float,
        v_bus_v: float,
        contactors: list[tuple[bool, bool, bool]],
        v_string_v: list[float],
        i_a: list[float],
        healthy: bool,
    ) -> list[dict[str, Any]]:
        """Violations found at this instant: ``{rule, t_s, detail, what}`` (mbms.types.Violation)."""
    def finish(self, t_s: float) -> None: ...
    def violations(self) -> list[dict[str, Any]]:
        """Every violation so far: ``{rule, t_s, detail, what}`` (mbms.types.Violation)."""
    def figures(self) -> dict[str, Any]: ...
    @staticmethod
    def margins() -> dict[str, float]: ...

# ---------------------------------------------------------------------------------------------
# Pack engine (bindings/src/engine.rs); use the typed wrapper mbms.engine.Engine.
# ---------------------------------------------------------------------------------------------

class _FaultRecord(TypedDict):
    """mbms_core::protection::ActiveFault's Serialize: the one fault form (mbms.types.Fault)."""

    rule: str
    level: str
    index: int


class _EngineOutput(TypedDict):
    """Engine.output() (bindings/src/engine.rs): the outputs of the last step."""

    action: int
    faults: list[_FaultRecord]
    soc: NDArray[np.float64]
    soc_sigma: NDArray[np.float64]
    soc_cc: NDArray[np.float64]
    balance: NDArray[np.bool_]
    capacity_ah: NDArray[np.float64]
    soc_min: float
    soc_max: float
    soc_mean: float
    soe_wh: float
    ocv_string_v: float
    r_string_ohm: float
    dcl_a: float
    ccl_a: float
    dcl_peak_a: float
    ccl_peak_a: float
    soh_capacity: float
    soh_resistance: float
    transfers: list[tuple[int, int, float]]  # (from cell, to cell, amount Ah)


class _EngineTables(TypedDict):
    """Engine.tables() (bindings/src/engine.rs): the packed cell tables the engine evaluates,
    rows of 2-d tables by temperature; r2/tau2_s are None for a one-RC cell."""

    ocv: NDArray[np.float64]
    docv_dt: NDArray[np.float64]
    energy: NDArray[np.float64]
    temps: NDArray[np.float64]
    r0: NDArray[np.float64]
    r1: NDArray[np.float64]
    has_rc2: bool
    r2: NDArray[np.float64] | None
    tau_temps: NDArray[np.float64]
    tau1_s: NDArray[np.float64]
    tau2_s: NDArray[np.float64] | None
    hysteresis_gamma: float
    model_temp_deadband_c: float
    t_ref_c: float
    capacity_ah: float
    v_min_v: float
    v_max_v: float
    coulombic_efficiency: float
    hysteresis_m_v: float
    model_error_v: float
    model_error_v_per_c: float
    model_error_corr_s: float
    model_error_relax_s: float
    r0_step_min_c: float
    r0_step_ct_fraction: float
    r0_step_i0_c: float
    r0_step_i0_ea_kj_per_mol: float
    r0_step_pulse_ratio: float
    r0_soh_min_temp_c: float
    r0_ratio_rc_share: float
    soc_sigma_floor: float
    rc_polarisation_rel_error: float
    rc_time_constant_rel_error: float
    r0_prior_weight: float
    r0_count_cap: float
    gas_constant_j_per_mol_k: float
    offset_horizon_s: float
    offset_settle_s: float


@final
class Engine:
    """The Rust pack engine. ``config``: the engine tables (pack, estimator, protection,
    limits, balancing) as a dict; ``cell_toml``: the cell parameter file's text. Raises
    mbms.errors.ConfigError(field, message, source) on a bad configuration."""

    def __new__(cls, config: dict[str, Any], cell_toml: str, source: str | None = None) -> Engine: ...
    @property
    def n_cells(self) -> int: ...
    @property
    def n_temps(self) -> int: ...
    def step(
        self,
        t_s: float,
        v_cell_v: npt.NDArray[np.float64],
        t_cell_c: npt.NDArray[np.float64],
        i_a: float,
    ) -> None: ...
    def step_many(
        self,
        t_s: npt.NDArray[np.float64],
        v_cell_v: npt.NDArray[np.float64],
        t_cell_c: npt.NDArray[np.float64],
        i_a: npt.NDArray[np.float64],
        record_soc: bool = False,
    ) -> npt.NDArray[np.float64] | None: ...
    def output(self) -> _EngineOutput: ...
    def tables(self) -> _EngineTables: ...
    def reset_faults(self, t_s: float) -> None: ...
    def export_state(self) -> bytes: ...
    def import_state(self, data: bytes) -> list[str]: ...


# ---- configs (bindings/src/config.rs): one conversion path; errors are mbms.errors.ConfigError ----

def config_extends(source: str, text: str) -> str | None: ...
def node_files(
    layers: list[tuple[str, str]], system: tuple[str, str] | None, cell_text: str | None
) -> dict[str, Any]: ...
def engine_config_layers(layers: list[tuple[str, str]]) -> dict[str, Any]: ...
def engine_config(value: dict[str, Any], source: str | None = None) -> dict[str, Any]: ...
def peer_config(
    value: dict[str, Any], prefix: str = "", source: str | None = None, check: bool = True
) -> dict[str, Any]: ...
def node_config(value: dict[str, Any], prefix: str = "node", source: str | None = None) -> dict[str, Any]: ...
def join_hold_derived(value: dict[str, Any], hold_latency_ms: int, lease_given: bool = False) -> dict[str, int]:
    """The join hold lead and lease a system file derives for an inverter whose hold arrives
    ``hold_latency_ms`` late (mbms_core::config::derive_join_hold): {join_hold_lead_ms, lease_ms}."""
def config_schemas() -> dict[str, str]: ...
def scenario_config(value: dict[str, Any], source: str | None = None) -> dict[str, Any]:
    """A scenario's tables (extends resolved) normalised by the simulator's schema
    (bindings/src/scenario.rs); raises mbms.errors.ConfigError naming file and dotted field."""
def engine_rules() -> list[str]: ...
def engine_levels() -> list[str]: ...

# ---- load profile for the processes mode of mbms sim (bindings/src/load_profile.rs) --------

def load_profile_values(config_json: str, t_s: list[float]) -> tuple[list[float], bool]:
    """(values at each time, is_power) of a plant description's ``load`` profile."""
    ...
