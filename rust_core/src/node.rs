//! The decision logic of one BMU node, sans-IO: measurements and peer messages in, contactor
//! and balancing commands and peer messages out. It ties the pack [`Engine`] (estimation,
//! protection, limits) to the coordination [`Peer`] (close arbitration, agreed limits).
//!
//! The same object runs under the real-time asyncio runtime (`mbms node`) and in the
//! virtual-time fast simulation (`mbms sim`), so both run one code path.
//!
//! Safety layering (brief §3):
//! * S1: a confirmed engine fault, a failed/stale measurement or an engine input error opens
//!   the contactors in the same step, by this object alone, whatever the peer says.
//! * S2/S3/S6: only the [`Peer`] decides a close (quorum grant, physical dwell match).
//! * The local limits handed to the peer are the engine's; a ramp-down request sets them to 0.

use mbms_consensus::{Contactors, LocalState, Peer, PeerConfig, PeerOutput, Phase};
use serde::{Deserialize, Serialize};

use crate::cell_model::CellParams;
use crate::engine::{Engine, EngineConfig, EngineConfigError};
use crate::protection::{Action, ActiveFault};

/// Log output of the node runtime.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One human-readable line per record.
    Human,
    /// One JSON object per line.
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Debug,
    Info,
    Warning,
    Error,
}

/// The `[node]` table of a pack file: the node's identity, its loop periods and the settings of
/// its decision logic. One schema for `mbms node`, the processes mode and the fast simulator
/// (which takes the same table from a scenario's `[node]`; `id` and `state_dir` are set there by
/// the simulator). Missing keys take [`NodeConfig::default`], unknown keys are errors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(default, deny_unknown_fields)]
pub struct NodeConfig {
    /// This node's id, one of the system's `members` (1..=63: the telemetry DBC reserves 6-bit
    /// slots per node). Required in a pack file.
    pub id: Option<u16>,
    /// Directory of the persisted engine state and of the event log; relative to the pack file.
    /// Required in a pack file.
    pub state_dir: Option<String>,
    /// Runtime loop period: measure -> protection/control step -> command (ms).
    pub control_period_ms: u32,
    /// State-estimator period inside the logic; a whole multiple of `control_period_ms`.
    pub estimation_period_ms: u32,
    /// Period of the DBC telemetry frames (ms).
    pub telemetry_period_ms: u32,
    /// Engine state written to disk this often (ms; 0 = every control period).
    pub state_save_ms: u32,
    /// Measurements older than this are stale: fail-safe open (ms).
    pub stale_ms: u64,
    /// A loop iteration later than this after its schedule is an overrun: fail-safe (ms).
    pub overrun_ms: u32,
    pub log_format: LogFormat,
    pub log_level: LogLevel,
    /// After a fault, ask the engine to reset latched faults this long after the last open
    /// action, repeatedly, so that a string whose conditions cleared rejoins by itself (s).
    /// 0: latched faults wait for an explicit reset (operator or gateway).
    pub auto_reset_s: f64,
    /// Contactor feedback that disagrees with the command for this long is a contactor fault.
    pub feedback_mismatch_ms: u64,
    /// On an alarm (ramp-down request) the string stays closed while the agreed limits fall,
    /// and opens once its current is below this (A) ...
    pub ramp_open_current_a: f64,
    /// ... or this long after the alarm, whichever comes first (s). Opening a parallel string
    /// at low current spares its contactors; a fault opens at once regardless (S1).
    pub ramp_open_timeout_s: f64,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            id: None,
            state_dir: None,
            control_period_ms: 100,
            estimation_period_ms: 100,
            telemetry_period_ms: 100,
            state_save_ms: 1000,
            // Settled: 300 ms here vs 500 ms in the Python node config; 500 won. The stale
            // check guards against a dead sensor link, not the protection latency (each fresh
            // sample is still judged by the protection delays). 5 control periods ride out
            // scheduler jitter of a loaded Linux controller (16 node processes on 2 cores
            // tripped at 300 ms) and stay far below the thermal and voltage time constants.
            stale_ms: 500,
            overrun_ms: 250,
            log_format: LogFormat::Human,
            log_level: LogLevel::Info,
            // Settled: 60 s (this core) vs 30 s (the default scenario, fast mode only); 60 s won
            // as the default: each retry may close a contactor onto a pack that just faulted,
            // so retry rarely (foxBMS 2 never resets on its own). The default story sets 30 s
            // explicitly, now in both simulation modes.
            auto_reset_s: 60.0,
            feedback_mismatch_ms: 500,
            ramp_open_current_a: 2.0,
            ramp_open_timeout_s: 10.0,
        }
    }
}

/// Highest node id: the DBC (hw/dbc/mbms.dbc) reserves 6-bit node slots in its identifiers.
pub const MAX_NODE_ID: u16 = 63;

impl NodeConfig {
    /// Ranges of every value, checked before anything is built. Returns (field, expected).
    pub fn validate(&self) -> Result<(), (String, String)> {
        let e = |f: &str, m: String| Err((f.to_string(), m));
        if let Some(id) = self.id {
            if !(1..=MAX_NODE_ID).contains(&id) {
                return e("id", format!("expected a node id 1..={MAX_NODE_ID}, got {id}"));
            }
        }
        if let Some(d) = &self.state_dir {
            if d.is_empty() {
                return e("state_dir", "expected a non-empty path".into());
            }
        }
        let range_u = |f: &str, v: u64, lo: u64, hi: u64| -> Result<(), (String, String)> {
            if v < lo || v > hi {
                Err((f.to_string(), format!("expected an integer {lo}..={hi}, got {v}")))
            } else {
                Ok(())
            }
        };
        range_u("control_period_ms", self.control_period_ms as u64, 1, 10_000)?;
        range_u("estimation_period_ms", self.estimation_period_ms as u64, 1, 60_000)?;
        range_u("telemetry_period_ms", self.telemetry_period_ms as u64, 10, 60_000)?;
        range_u("state_save_ms", self.state_save_ms as u64, 0, 3_600_000)?;
        range_u("stale_ms", self.stale_ms, 1, 60_000)?;
        range_u("overrun_ms", self.overrun_ms as u64, 1, 60_000)?;
        range_u("feedback_mismatch_ms", self.feedback_mismatch_ms, 1, 60_000)?;
        if self.estimation_period_ms % self.control_period_ms != 0 {
            return e(
                "estimation_period_ms",
                format!(
                    "expected a whole multiple of control_period_ms={}, got {}",
                    self.control_period_ms, self.estimation_period_ms
                ),
            );
        }
        if self.stale_ms < self.control_period_ms as u64 {
            return e(
                "stale_ms",
                format!("expected >= control_period_ms={}, got {}", self.control_period_ms, self.stale_ms),
            );
        }
        // one day: a longer retry is no auto-reset at all; use 0 for that
        if !(self.auto_reset_s.is_finite() && (0.0..=86_400.0).contains(&self.auto_reset_s)) {
            return e("auto_reset_s", format!("expected 0 (off) or a time in (0, 86400] s, got {}", self.auto_reset_s));
        }
        if !(self.ramp_open_current_a.is_finite() && self.ramp_open_current_a >= 0.0) {
            return e("ramp_open_current_a", format!("expected a finite current >= 0 A, got {}", self.ramp_open_current_a));
        }
        if !(self.ramp_open_timeout_s.is_finite() && (0.0..=3600.0).contains(&self.ramp_open_timeout_s)) {
            return e("ramp_open_timeout_s", format!("expected a time in [0, 3600] s, got {}", self.ramp_open_timeout_s));
        }
        Ok(())
    }
}

/// Why the node opened on its own (besides an engine protection fault). Crosses to Python
/// and logs as its snake_case name (`"stale_measurement"`), `None` as null.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum FailSafe {
    None = 0,
    /// Hardware said the measurement is not valid (sensor link lost, chip error).
    InvalidMeasurement = 1,
    /// No fresh measurement within `stale_ms`.
    StaleMeasurement = 2,
    /// The engine rejected the input (wrong length, time going backwards).
    EngineInput = 3,
    /// A contactor's feedback disagreed with its command for too long (weld, fails to close).
    ContactorFeedback = 4,
    /// The runtime forced the contactors open by itself (lost hardware link, loop overrun).
    Runtime = 5,
}

/// One step's measurements, as the hardware adapter reads them.
#[derive(Debug, Clone, Copy)]
pub struct NodeInputs<'a> {
    pub t_ms: u64,
    /// Time the measurement was taken (ms, same clock as `t_ms`).
    pub meas_t_ms: u64,
    pub v_cell_v: &'a [f64],
    pub t_cell_c: &'a [f64],
    pub i_a: f64,
    pub v_string_v: f64,
    pub v_bus_v: f64,
    pub feedback: Contactors,
    pub valid: bool,
}

/// One node step's output as every binding hands it out (issue 9: one schema, never built
/// by hand per binding): the [`NodeOutput`] fields, the engine's SOC figures, the active
/// faults ([`ActiveFault`]); the peer's events of this step come with the output.
#[derive(Debug, Clone, Serialize)]
pub struct NodeReport<'a> {
    #[serde(flatten)]
    pub out: &'a NodeOutput,
    pub soc: f64,
    pub soc_min: f64,
    pub soc_max: f64,
    pub ocv_string_v: f64,
    pub r_string_ohm: f64,
    pub soh_capacity: f64,
    /// resistance state of health (1.0 = as new): MQTT, metrics, UDS
    pub soh_resistance: f64,
    pub faults: &'a [ActiveFault],
}

impl FailSafe {
    pub fn name(self) -> Option<&'static str> {
        match self {
            FailSafe::None => None,
            FailSafe::InvalidMeasurement => Some("invalid_measurement"),
            FailSafe::StaleMeasurement => Some("stale_measurement"),
            FailSafe::EngineInput => Some("engine_input"),
            FailSafe::ContactorFeedback => Some("contactor_feedback"),
            FailSafe::Runtime => Some("runtime"),
        }
    }
}

impl Serialize for FailSafe {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.name().serialize(s)
    }
}

/// What the node commands after one step. Serialized (with [`NodeReport`]) as the one schema
/// of a node's output in every binding: the peer's output (its fields flattened in, one
/// definition of phase, agreed limits, member sets, speaker, messages, events) and what the
/// node adds on top of it.
#[derive(Debug, Clone, Serialize)]
pub struct NodeOutput {
    /// The peer's output of this step, as the peer gave it except `sample_request`, which a
    /// local fault clears (no main close on a faulted pack).
    #[serde(flatten)]
    pub peer: PeerOutput,
    /// What the contactors are commanded to: the peer's `command`, or open on a local fault
    /// (S1: the open does not wait for the peer).
    pub contactors: Contactors,
    pub balance: Vec<bool>,
    pub action: Action,
    pub failsafe: FailSafe,
    /// The pack opened on its own (S1) this step or is held open by a fault.
    pub fault: bool,
    pub local_dcl_a: f64,
    pub local_ccl_a: f64,
    /// Number of engine fault resets requested so far.
    pub resets: u32,
}

impl NodeOutput {
    fn new(n_cells: usize) -> Self {
        Self {
            peer: PeerOutput { phase: Phase::Open, ..PeerOutput::default() },
            contactors: Contactors::OPEN,
            balance: vec![false; n_cells],
            action: Action::None,
            failsafe: FailSafe::None,
            fault: false,
            local_dcl_a: 0.0,
            local_ccl_a: 0.0,
            resets: 0,
        }
    }
}

impl Default for FailSafe {
    fn default() -> Self {
        FailSafe::None
    }
}

pub struct NodeCore {
    cfg: NodeConfig,
    engine: Engine,
    peer: Peer,
    out: NodeOutput,
    latched_since_ms: Option<u64>,
    mismatch_since_ms: Option<u64>,
    contactor_fault: bool,
    last_engine_t_ms: Option<u64>,
    ramp_since_ms: Option<u64>,
    /// The runtime reported a fail-safe open: the next step treats the string as faulted,
    /// so the peer drops any close in progress and re-sequences from precharge.
    runtime_failsafe: bool,
}

impl NodeCore {
    pub fn new(
        cfg: NodeConfig,
        engine_cfg: EngineConfig,
        cell: CellParams,
        peer_cfg: PeerConfig,
        incarnation: u64,
        auth: mbms_consensus::Auth,
    ) -> Result<Self, EngineConfigError> {
        cfg.validate().map_err(|(f, m)| EngineConfigError { field: format!("node.{f}"), message: m })?;
        let engine = Engine::new(engine_cfg, cell)?;
        let peer = Peer::new(peer_cfg, incarnation, auth)
            .map_err(|e| EngineConfigError { field: format!("system.{}", e.field), message: e.message })?;
        let n = engine.n_cells();
        Ok(Self {
            cfg,
            engine,
            peer,
            out: NodeOutput::new(n),
            latched_since_ms: None,
            mismatch_since_ms: None,
            contactor_fault: false,
            last_engine_t_ms: None,
            ramp_since_ms: None,
            runtime_failsafe: false,
        })
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    pub fn engine_mut(&mut self) -> &mut Engine {
        &mut self.engine
    }

    pub fn peer(&self) -> &Peer {
        &self.peer
    }

    /// Restore the receive counters a previous run persisted (brief S7: a restart must not
    /// forget what was accepted); before the first message. Returns how many were taken.
    pub fn restore_receive_counters(&mut self, counters: &[mbms_consensus::ReceiveCounter]) -> usize {
        self.peer.restore_receive_counters(counters)
    }

    pub fn output(&self) -> &NodeOutput {
        &self.out
    }

    /// This step's whole output as one serializable view: what every binding hands out.
    pub fn report(&self) -> NodeReport<'_> {
        let eo = self.engine.output();
        NodeReport {
            out: &self.out,
            soc: eo.soc_mean,
            soc_min: eo.soc_min,
            soc_max: eo.soc_max,
            ocv_string_v: eo.ocv_string_v,
            r_string_ohm: eo.r_string_ohm,
            soh_capacity: eo.soh_capacity,
            soh_resistance: eo.soh_resistance,
            faults: &eo.faults,
        }
    }

    pub fn node_id(&self) -> u16 {
        self.peer.config().node_id
    }

    /// A peer message arrived. Malformed, foreign, duplicate or stale ones are counted by the
    /// peer and dropped; returns whether it was accepted.
    pub fn receive(&mut self, t_ms: u64, data: &[u8]) -> bool {
        self.peer.on_message(t_ms, data).is_ok()
    }

    /// A peer message already decoded (the simulator decodes each broadcast once).
    pub fn receive_decoded(&mut self, t_ms: u64, m: &mbms_consensus::wire::Message) -> bool {
        self.peer.on_decoded(t_ms, m).is_ok()
    }

    /// Explicit reset of latched faults (operator or gateway request).
    pub fn reset_faults(&mut self, t_ms: u64) {
        self.engine.reset_faults(t_ms as f64 / 1000.0);
        self.contactor_fault = false;
        self.mismatch_since_ms = None;
        self.out.resets += 1;
    }

    /// The runtime has forced all contactors open by itself.
    pub fn fail_safe(&mut self) {
        self.runtime_failsafe = true;
    }

    /// One control period.
    pub fn step(&mut self, inp: &NodeInputs<'_>) -> &NodeOutput {
        let t_ms = inp.t_ms;
        let mut failsafe = FailSafe::None;
        if std::mem::take(&mut self.runtime_failsafe) {
            failsafe = FailSafe::Runtime;
        } else if !inp.valid {
            failsafe = FailSafe::InvalidMeasurement;
        } else if t_ms.saturating_sub(inp.meas_t_ms) > self.cfg.stale_ms {
            failsafe = FailSafe::StaleMeasurement;
        }

        // The engine runs on every fresh, valid measurement (it needs strictly increasing time).
        let fresh = self.last_engine_t_ms.map_or(true, |t| inp.meas_t_ms > t);
        if failsafe == FailSafe::None && fresh {
            match self.engine.step(inp.meas_t_ms as f64 / 1000.0, inp.v_cell_v, inp.t_cell_c, inp.i_a) {
                Ok(()) => self.last_engine_t_ms = Some(inp.meas_t_ms),
                Err(_) => failsafe = FailSafe::EngineInput,
            }
        }
        let eo = self.engine.output();
        let action = eo.action;

        // Contactor feedback supervision: commanded vs seen, debounced. Only on a usable, fresh
        // sample: a frozen sensor link repeats an old feedback that says nothing about now
        // (a plant freeze otherwise latched a contactor fault, issue 11).
        let cmd = self.out.contactors;
        if cmd != inp.feedback && inp.valid && failsafe == FailSafe::None {
            let since = *self.mismatch_since_ms.get_or_insert(t_ms);
            if t_ms.saturating_sub(since) >= self.cfg.feedback_mismatch_ms {
                self.contactor_fault = true;
            }
        } else {
            self.mismatch_since_ms = None;
        }
        if self.contactor_fault && failsafe == FailSafe::None {
            failsafe = FailSafe::ContactorFeedback;
        }

        // Auto-reset: while the engine holds a latched open action, ask it every
        // `auto_reset_s` to clear the faults whose conditions are gone; a string that has
        // recovered then rejoins by itself (the peer re-checks the bus match before closing).
        if action == Action::Open && failsafe == FailSafe::None {
            let reset_s = self.cfg.auto_reset_s;
            if reset_s > 0.0 {
                let since = *self.latched_since_ms.get_or_insert(t_ms);
                if t_ms.saturating_sub(since) as f64 >= reset_s * 1000.0 {
                    self.engine.reset_faults(t_ms as f64 / 1000.0);
                    self.out.resets += 1;
                    self.latched_since_ms = Some(t_ms);
                }
            }
        } else {
            self.latched_since_ms = None;
        }
        let eo = self.engine.output();
        let action = eo.action;
        let fault = action == Action::Open || failsafe != FailSafe::None;

        let ramp = action >= Action::RampDown;
        // Ramp-down: report zero limits at once (the system limit falls, the load follows),
        // keep the string closed until its current is low or the ramp time is up, then open.
        let ramp_done = if ramp {
            let since = *self.ramp_since_ms.get_or_insert(t_ms);
            inp.i_a.abs() <= self.cfg.ramp_open_current_a
                || t_ms.saturating_sub(since) as f64 >= self.cfg.ramp_open_timeout_s * 1000.0
        } else {
            self.ramp_since_ms = None;
            false
        };
        // The source voltage the current sharing needs is the string's Thevenin voltage
        // E = OCV − (RC polarisation), i.e. the measured string voltage plus the drop over the
        // cells' ohmic resistance: with E and R0 the brief's §4 split is exact at this instant,
        // whereas the model OCV alone misplaces strings by their polarisation (up to ~1 A per
        // string at 0.7 C here). Falls back on the model OCV when the measurement is unusable.
        // The voltage over the cells is their sum where every cell reads plausibly (the
        // engine's sensor checks: a cell on an open wire would take volts off the sum before
        // its fault latches), the string voltage sensor only where one does not. The sum has
        // the cell monitor's noise, √n of ~1 mV (~10 mV over the example's 96 elements), and
        // its per-cell errors average down; the HV divider carries a gain error of its own
        // (±0.2 % in the example plant, 0.7 V at 360 V, different on every string: far beyond
        // the 20 mV of source-voltage uncertainty the limits count, `share_ocv_uncertainty_v`)
        // and 50 mV of noise that the hold band (`share_ocv_hold_v`) had to clear at 0.2 V.
        let r_cells = (eo.r_string_ohm - self.engine.config().pack.r_extra_ohm).max(0.0);
        let v_cells: f64 = inp.v_cell_v.iter().sum();
        let v_meas = if self.engine.cell_voltages_valid() && v_cells.is_finite() && !inp.v_cell_v.is_empty() {
            v_cells
        } else if inp.v_string_v.is_finite() && inp.v_string_v > 0.0 {
            inp.v_string_v
        } else {
            f64::NAN
        };
        let e_v = v_meas + inp.i_a * r_cells;
        let source_v = if failsafe == FailSafe::None && e_v.is_finite() && (e_v - eo.ocv_string_v).abs() < 0.1 * eo.ocv_string_v {
            e_v
        } else {
            eo.ocv_string_v
        };
        let local = LocalState {
            ocv_v: source_v,
            r_ohm: eo.r_string_ohm,
            soc: eo.soc_mean,
            dcl_a: if ramp { 0.0 } else { eo.dcl_a },
            ccl_a: if ramp { 0.0 } else { eo.ccl_a },
            dcl_peak_a: if ramp { 0.0 } else { eo.dcl_peak_a },
            ccl_peak_a: if ramp { 0.0 } else { eo.ccl_peak_a },
            fault,
            may_close: !fault && !(ramp && (ramp_done || !inp.feedback.main_closed())),
            v_string_v: inp.v_string_v,
            v_bus_v: inp.v_bus_v,
            i_a: inp.i_a,
            feedback: inp.feedback,
            meas_t_ms: Some(inp.meas_t_ms),
        };
        let po: &PeerOutput = self.peer.tick(t_ms, &local);

        let out = &mut self.out;
        out.peer.clone_from(po);
        out.peer.sample_request = po.sample_request && !fault;
        // S1: the open does not wait for the peer (it opens too, but this is the local guard).
        out.contactors = if fault { Contactors::OPEN } else { po.command };
        out.action = action;
        out.failsafe = failsafe;
        out.fault = fault;
        out.local_dcl_a = local.dcl_a;
        out.local_ccl_a = local.ccl_a;
        out.balance.clear();
        if fault {
            out.balance.resize(eo.balance.len(), false);
        } else {
            out.balance.extend_from_slice(&eo.balance);
        }
        &self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PACK: &str = include_str!("../../python/mbms/data/packs/example_pack.toml");
    const CELL: &str = include_str!("../../python/mbms/data/cells/lg_m50_nmc.toml");

    fn node() -> NodeCore {
        let engine = EngineConfig::from_toml_str(PACK).unwrap();
        let cell = CellParams::from_toml_str(CELL).unwrap();
        let peer = PeerConfig { node_id: 1, members: vec![1, 2, 3], ..PeerConfig::default() };
        let auth = mbms_consensus::Auth::new(peer.system_id, &[[0x42; 16]]).unwrap();
        NodeCore::new(NodeConfig::default(), engine, cell, peer, 1, auth).unwrap()
    }

    struct Meas {
        v: Vec<f64>,
        t: Vec<f64>,
    }

    fn meas(n: &NodeCore, v_cell: f64) -> Meas {
        Meas { v: vec![v_cell; n.engine().n_cells()], t: vec![25.0; n.engine().n_temps()] }
    }

    fn step<'a>(n: &'a mut NodeCore, t_ms: u64, m: &Meas, valid: bool, fb: Contactors) -> &'a NodeOutput {
        let inp = NodeInputs {
            t_ms,
            meas_t_ms: t_ms,
            v_cell_v: &m.v,
            t_cell_c: &m.t,
            i_a: 0.0,
            v_string_v: m.v.iter().sum(),
            v_bus_v: 0.0,
            feedback: fb,
            valid,
        };
        n.step(&inp)
    }

    #[test]
    fn confirmed_fault_opens_in_the_same_step_without_any_message() {
        let mut n = node();
        let ok = meas(&n, 3.7);
        for k in 0..10 {
            let o = step(&mut n, 1_000 + 100 * k, &ok, true, Contactors::OPEN);
            assert!(!o.fault && o.action < Action::Open);
        }
        // a cell far above the fault threshold: confirmed after the debounce, open at once
        let mut hot = meas(&n, 3.7);
        hot.v[5] = 4.5;
        let mut opened_at = None;
        for k in 10..40 {
            let o = step(&mut n, 1_000 + 100 * k, &hot, true, Contactors::OPEN);
            if o.action == Action::Open {
                assert!(o.fault);
                assert_eq!(o.contactors, Contactors::OPEN, "S1: open in the step the fault is confirmed");
                opened_at.get_or_insert(k);
            }
        }
        assert!(opened_at.is_some(), "the overvoltage fault was never confirmed");
    }

    #[test]
    fn invalid_or_stale_measurements_fail_safe_open() {
        let mut n = node();
        let ok = meas(&n, 3.7);
        step(&mut n, 1_000, &ok, true, Contactors::OPEN);
        let o = step(&mut n, 1_100, &ok, false, Contactors::OPEN);
        assert!(o.fault && o.failsafe == FailSafe::InvalidMeasurement && o.contactors == Contactors::OPEN);
        // a measurement older than stale_ms
        let inp = NodeInputs {
            t_ms: 2_000,
            meas_t_ms: 2_000 - NodeConfig::default().stale_ms - 1,
            v_cell_v: &ok.v,
            t_cell_c: &ok.t,
            i_a: 0.0,
            v_string_v: 355.0,
            v_bus_v: 0.0,
            feedback: Contactors::OPEN,
            valid: true,
        };
        let o = n.step(&inp);
        assert!(o.fault && o.failsafe == FailSafe::StaleMeasurement && o.contactors == Contactors::OPEN);
        // the runtime's own fail-safe is taken over in the next step
        n.fail_safe();
        let o = step(&mut n, 2_100, &ok, true, Contactors::OPEN);
        assert!(o.fault && o.failsafe == FailSafe::Runtime);
    }

    /// The source voltage a string broadcasts for the current sharing is the sum of its cell
    /// voltages (plus I·R of the cells), not the string voltage sensor, whose gain error (here
    /// +0.7 V, 0.2 % of 355 V) would misplace the string in every peer's split; the sensor is
    /// the fallback only while a cell does not read.
    #[test]
    fn the_shared_source_voltage_is_the_sum_of_the_cells_while_they_read() {
        let mut n = node();
        let ok = meas(&n, 3.7);
        let v_cells: f64 = ok.v.iter().sum();
        let v_sensor = v_cells + 0.7;
        let mut nan = meas(&n, 3.7);
        nan.v[5] = f64::NAN;
        let mut sent = Vec::new();
        for k in 0..60u64 {
            let m = if k < 40 { &ok } else { &nan };
            let inp = NodeInputs {
                t_ms: 1_000 + 100 * k,
                meas_t_ms: 1_000 + 100 * k,
                v_cell_v: &m.v,
                t_cell_c: &m.t,
                i_a: 0.0,
                v_string_v: v_sensor,
                v_bus_v: 0.0,
                feedback: Contactors::OPEN,
                valid: true,
            };
            for msg in &n.step(&inp).peer.messages {
                if let mbms_consensus::wire::Body::Limits(l) = mbms_consensus::wire::Message::decode(msg).unwrap().body {
                    sent.push((k, l.ocv_10mv));
                }
            }
        }
        let cells_10mv = (v_cells * 100.0).round() as u32;
        let before: Vec<u32> = sent.iter().filter(|s| s.0 < 40).map(|s| s.1).collect();
        assert!(before.len() >= 5, "state messages before the sensor fault: {sent:?}");
        assert!(before.iter().all(|&v| v == cells_10mv), "the cell sum {cells_10mv} is sent, not the sensor's {v_sensor:.2} V: {before:?}");
        let after: Vec<u32> = sent.iter().filter(|s| s.0 >= 40).map(|s| s.1).collect();
        let sensor_10mv = (v_sensor * 100.0).round() as u32;
        assert!(after.contains(&sensor_10mv), "a cell that does not read: the string sensor's {sensor_10mv} is sent: {after:?}");
    }

    #[test]
    fn contactor_feedback_that_disagrees_too_long_is_a_fault() {
        let mut n = node();
        let ok = meas(&n, 3.7);
        let welded = Contactors { neg: true, pos: true, pre: false };
        let mut t = 1_000;
        // a running node (a node that starts with closed feedback adopts the closed state: a
        // restart under load), then the main contacts read closed while commanded open
        for _ in 0..5 {
            step(&mut n, t, &ok, true, Contactors::OPEN);
            t += 100;
        }
        let mut faulted = false;
        for _ in 0..20 {
            let o = step(&mut n, t, &ok, true, welded);
            faulted |= o.failsafe == FailSafe::ContactorFeedback;
            t += 100;
        }
        assert!(faulted, "commanded open but the feedback stayed closed for 2 s");
    }
}
