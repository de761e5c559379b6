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

use crate::cell_model::CellParams;
use crate::engine::{Engine, EngineConfig, EngineConfigError};
use crate::protection::Action;

/// Node-level settings (the `[node]` table of a pack file, as far as the logic needs it).
#[derive(Debug, Clone, PartialEq)]
pub struct NodeConfig {
    /// Measurements older than this are stale: fail-safe open.
    pub stale_ms: u64,
    /// After a fault, ask the engine to reset latched faults this long after the last open
    /// action, repeatedly, so that a string whose conditions cleared rejoins by itself.
    /// `None`: latched faults wait for an explicit reset (operator or gateway).
    pub auto_reset_s: Option<f64>,
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
        // 3 heartbeat periods of 100 ms: the brief's failure-detection bound (§5).
        Self {
            stale_ms: 300,
            auto_reset_s: Some(60.0),
            feedback_mismatch_ms: 500,
            ramp_open_current_a: 2.0,
            ramp_open_timeout_s: 10.0,
        }
    }
}

/// Why the node opened on its own (besides an engine protection fault).
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

/// What the node commands after one step.
#[derive(Debug, Clone)]
pub struct NodeOutput {
    pub contactors: Contactors,
    pub balance: Vec<bool>,
    pub messages: Vec<Vec<u8>>,
    pub action: Action,
    pub failsafe: FailSafe,
    /// The pack opened on its own (S1) this step or is held open by a fault.
    pub fault: bool,
    pub phase: Phase,
    pub local_dcl_a: f64,
    pub local_ccl_a: f64,
    pub system_dcl_a: f64,
    pub system_ccl_a: f64,
    pub closed_set: u64,
    pub live_set: u64,
    pub quorum: bool,
    pub speaker: Option<u16>,
    pub dcdc_setpoint_a: Option<f64>,
    /// Number of engine fault resets requested so far.
    pub resets: u32,
    // ---- two-phase main close (S3, issue 11) ----
    /// The precharge dwell is over: take a sample NOW and step again; the main contactor is
    /// commanded only on a sample taken after this step (see `Peer::precharge_step`).
    pub sample_request: bool,
    /// A string is joining (precharging/closing): the load should be held steady.
    pub join_in_progress: bool,
}

impl NodeOutput {
    fn new(n_cells: usize) -> Self {
        Self {
            contactors: Contactors::OPEN,
            balance: vec![false; n_cells],
            messages: Vec::new(),
            action: Action::None,
            failsafe: FailSafe::None,
            fault: false,
            phase: Phase::Open,
            local_dcl_a: 0.0,
            local_ccl_a: 0.0,
            system_dcl_a: 0.0,
            system_ccl_a: 0.0,
            closed_set: 0,
            live_set: 0,
            quorum: false,
            speaker: None,
            dcdc_setpoint_a: None,
            resets: 0,
            sample_request: false,
            join_in_progress: false,
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
    ) -> Result<Self, EngineConfigError> {
        let engine = Engine::new(engine_cfg, cell)?;
        let peer = Peer::new(peer_cfg, incarnation)
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

    pub fn output(&self) -> &NodeOutput {
        &self.out
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
            if let Some(reset_s) = self.cfg.auto_reset_s {
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
        let r_cells = (eo.r_string_ohm - self.engine.config().pack.r_extra_ohm).max(0.0);
        let v_meas = if inp.v_string_v.is_finite() && inp.v_string_v > 0.0 {
            inp.v_string_v
        } else {
            inp.v_cell_v.iter().sum::<f64>()
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
        // S1: the open does not wait for the peer (it opens too, but this is the local guard).
        out.contactors = if fault { Contactors::OPEN } else { po.command };
        out.messages.clear();
        out.messages.extend(po.messages.iter().cloned());
        out.action = action;
        out.failsafe = failsafe;
        out.fault = fault;
        out.phase = po.phase;
        out.local_dcl_a = local.dcl_a;
        out.local_ccl_a = local.ccl_a;
        out.system_dcl_a = po.system_dcl_a;
        out.system_ccl_a = po.system_ccl_a;
        out.closed_set = po.closed_set;
        out.live_set = po.live_set;
        out.quorum = po.quorum;
        out.speaker = po.speaker;
        out.dcdc_setpoint_a = po.dcdc_setpoint_a;
        out.sample_request = po.sample_request && !fault;
        out.join_in_progress = po.join_in_progress;
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
        NodeCore::new(NodeConfig::default(), engine, cell, peer, 1).unwrap()
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
