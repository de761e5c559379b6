//! The fast mode of `mbms sim`: one plant, N [`NodeCore`]s and a simulated peer network on a
//! virtual clock, in one loop, deterministic for a seed.
//!
//! Each node has its own drifting clock; peer messages cross a network model with loss,
//! delay (hence reordering), duplication and partitions; nodes can be killed and restarted
//! (the engine state they persisted is restored). The load requested by the profile is
//! clipped to the limits the speaker node reports, as an inverter obeying the BMS would.
//!
//! The brief's safety rules are checked every step by the safety monitor ([`crate::monitor`]),
//! fed with the true plant state and every node's output; [`Invariants`] collects its findings.

use crate::rng::SplitMix64;
use mbms_consensus::wire::Message;
use mbms_consensus::{PeerConfig, Phase};

use mbms_core::cell_model::CellParams;
use mbms_core::engine::EngineConfig;
use mbms_core::node::{NodeConfig, NodeCore, NodeInputs};
use crate::plant::load::Quantity;
use crate::plant::{Measurement, Plant, StringCommand};
use mbms_core::node::FailSafe;
use mbms_core::protection::{Action, ActiveFault, FaultSeen, Level, Rule};

use crate::monitor::{self, Monitor, MonitorConfig, NodeReport, PlantSnapshot};

/// One node's state as the fast simulator's callers poll it (serde record: phase by name,
/// contactor command, local fault, the peer's abort and close counters).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct NodeState {
    pub phase: Phase,
    pub command: mbms_consensus::Contactors,
    pub fault: bool,
    pub aborts: u64,
    pub closes: u64,
}

/// One pack's figures in a simulation report (`FastSim::pack_report`), serialized as is.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PackReport {
    pub time_connected_s: f64,
    pub isolations: u32,
    pub rejoins: u32,
    pub faults_seen: Vec<FaultSeen>,
    /// The node's state at the end of the run; absent if it is dead.
    #[serde(flatten)]
    pub now: Option<PackNow>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct PackNow {
    pub faults_now: Vec<ActiveFault>,
    pub resets: u32,
    pub failsafe: FailSafe,
    /// Peer messages accepted, dropped (malformed, foreign, unknown, duplicate, stale), sent.
    pub rx_ok: u64,
    pub rx_dropped: u64,
    pub tx: u64,
}

/// Everything needed to (re)build one node.
#[derive(Clone)]
pub struct NodeSpec {
    pub node: NodeConfig,
    pub engine: EngineConfig,
    pub cell: CellParams,
    pub peer: PeerConfig,
    /// Clock rate error of this node (ppm, signed) and its offset at t = 0 (ms).
    pub drift_ppm: f64,
    pub clock_offset_ms: u64,
}

pub use crate::network::NetModel;

struct Flight {
    at_ms: u64,
    to: usize,
    msg: usize,
}

struct Slot {
    spec: NodeSpec,
    core: Option<NodeCore>,
    incarnation: u64,
    /// Engine state as persisted at the last period (restored on restart).
    saved_state: Vec<u8>,
    last_cmd: StringCommand,
    /// Main contactor closed at the previous step (isolations and rejoins).
    prev_pos_closed: bool,
    /// Precharge relay closed at the previous step (join-triggered load requests).
    prev_pre: bool,
    /// Runtime-like sampling: the sample the node will use at its next period (taken when
    /// it sent its last command, as the plant link's reply), with its sim time.
    held: Option<(Measurement, u64)>,
    /// Sim time of the node's next period (runtime-like sampling).
    next_period_ms: u64,
    /// The node asked for a fresh sample (two-phase close): step it again at this sim time.
    verify_at_ms: Option<u64>,
}

/// Per-record channels (one row every `record_every` steps).
pub const SYSTEM_CHANNELS: [&str; 8] = [
    "t_s",
    "v_bus_v",
    "i_load_a",
    "i_request_a",
    "system_dcl_a",
    "system_ccl_a",
    "closed_strings",
    "speaker",
];
pub const STRING_CHANNELS: [&str; 13] = [
    "i_a",
    "soc_true",
    "soc_est",
    "state", // 0 open, 1 precharge, 2 closed (true contactor state)
    "phase",
    "local_dcl_a",
    "local_ccl_a",
    "system_dcl_a",
    "t_max_c",
    "action",
    "fault",
    "alive",
    "v_string_v",
];

/// Safety and agreement figures over the run (the safety monitor's findings, in ms, plus the
/// checks of this simulator's own: messages that do not decode).
#[derive(Debug, Clone, Default)]
pub struct Invariants {
    pub violations: Vec<String>,
    /// The rule of each of the monitor's violations.
    pub rules: Vec<monitor::Rule>,
    pub max_string_overcurrent_a: f64,
    /// Times (ms) from a disagreement appearing to all live connected peers agreeing again.
    pub agree_latencies_ms: Vec<u64>,
    /// Every main close: (t ms, string, true |V_bus − V_string| just before it).
    pub closes: Vec<(u64, usize, f64)>,
    /// Times (ms) from a node's death to every live peer having dropped it from its live set.
    pub detect_latencies_ms: Vec<u64>,
    killed_at_ms: Vec<Option<u64>>,
}

impl Invariants {
    fn violate(&mut self, t_ms: u64, rule: &str, what: String) {
        if self.violations.len() < 100 {
            self.violations.push(format!("t={:.1}s {rule}: {what}", t_ms as f64 / 1000.0));
        }
    }
}

pub struct FastSim {
    plant: Plant,
    slots: Vec<Slot>,
    pub net: NetModel,
    rng: SplitMix64,
    t_ms: u64,
    dt_ms: u64,
    flights: Vec<Flight>,
    /// Scratch of one broadcast's deliveries (µs, receiver).
    deliveries: Vec<crate::network::Delivery>,
    /// Messages in flight, decoded once per broadcast (every receiver gets the same bytes).
    pool: Vec<Message>,
    pub inv: Invariants,
    record_every: u64,
    steps: u64,
    pub system_rows: Vec<f64>,
    pub string_rows: Vec<f64>,
    /// Current the load asks for (before clipping to the agreed limits), last step.
    request_a: f64,
    /// Whether the load obeys the BMS limits (an inverter does); `false` = raw profile.
    pub clip_load: bool,
    ready: bool,
    quiet_since_ms: Option<u64>,
    /// The safety monitor, its buffer of the true string states and how many of its
    /// findings are already copied into `inv`.
    pub monitor: Monitor,
    truth_buf: Vec<monitor::StringTruth>,
    synced: (usize, usize, usize),
    pub energy_discharged_j: f64,
    pub energy_charged_j: f64,
    time_connected_ms: Vec<u64>,
    isolations: Vec<u32>,
    rejoins: Vec<u32>,
    was_isolated: Vec<bool>,
    ever_closed: Vec<bool>,
    /// Per node: bit (rule·3 + level) of every protection condition seen during the run.
    faults_seen: Vec<u64>,
    // ---- issue 11: joins under load steps, stale samples and plant freezes ----
    /// Nodes step every this many ms (a multiple of dt_ms) and use the sample taken at their
    /// previous period (the runtime's plant link: a reply to the last command), instead of a
    /// sample taken at the step itself. None: every step with a sample of that instant.
    pub node_period_ms: Option<u64>,
    /// The inverter holds its current while a join is in progress (a speaker's
    /// join_in_progress), as an inverter honouring the BMS's hold request would. On by default:
    /// the simulated inverter is the one a battery with our gateway talks to (HoldCurrent,
    /// mbms.gateways.inverter_can; processes mode's mbms.sim.inverter obeys it too); the S3
    /// campaign turns it off for its raw load, which listens to nobody.
    pub hold_load_during_join: bool,
    /// How long after the speaker raised join_in_progress the inverter starts holding (ms):
    /// the hold travels in the inverter frames (Pylon LV: sent at once on the rise, one speaker
    /// period; Pylon HV: at the inverter's next poll, up to its poll period). 0: at once.
    pub hold_latency_ms: u64,
    /// When the speaker's join_in_progress last rose (sim ms), while it stays up.
    join_flag_since_ms: Option<u64>,
    /// The plant is frozen (its process stopped) until this sim time: no physics, no
    /// samples, commands queue.
    frozen_until_ms: u64,
    /// Total time the plant was frozen (plant time lags sim time by this).
    plant_lag_ms: u64,
    /// Main-close records of the plant already checked.
    s3_seen: usize,
    /// The inverter's current before the join hold began.
    held_load_a: Option<f64>,
    /// Load requests tied to joins (through the inverter, unlike the plant's join load
    /// steps): (string or any, delay after its precharge relay closed, ΔA, due sim time).
    request_steps: Vec<(Option<usize>, u64, f64, Option<u64>)>,
    /// Sum of the fired request steps (A), added to the profile's request.
    pub request_offset_a: f64,
}


impl FastSim {
    pub fn new(plant: Plant, specs: Vec<NodeSpec>, seed: u64, dt_ms: u64, record_every: u64) -> Result<Self, String> {
        let n = plant.n_strings();
        if specs.len() != n {
            return Err(format!("{} node specs for {} strings", specs.len(), n));
        }
        if dt_ms == 0 || record_every == 0 {
            return Err("dt_ms and record_every must be > 0".into());
        }
        let monitor = Monitor::new(MonitorConfig::from_peer(&specs[0].peer, n, 0));
        let mut slots = Vec::with_capacity(n);
        for spec in specs {
            let core = NodeCore::new(spec.node.clone(), spec.engine.clone(), spec.cell.clone(), spec.peer.clone(), 1, crate::simulation_auth(spec.peer.system_id))
                .map_err(|e| e.to_string())?;
            slots.push(Slot {
                spec,
                core: Some(core),
                incarnation: 1,
                saved_state: Vec::new(),
                last_cmd: StringCommand::default(),
                prev_pos_closed: false,
                prev_pre: false,
                held: None,
                next_period_ms: 0,
                verify_at_ms: None,
            });
        }
        Ok(Self {
            plant,
            slots,
            net: NetModel::healthy(n),
            rng: SplitMix64::new(seed ^ 0x6d62_6d73_5f73_696d),
            t_ms: 0,
            dt_ms,
            flights: Vec::new(),
            deliveries: Vec::new(),
            pool: Vec::new(),
            inv: Invariants::default(),
            record_every,
            steps: 0,
            system_rows: Vec::new(),
            string_rows: Vec::new(),
            request_a: 0.0,
            clip_load: true,
            ready: false,
            quiet_since_ms: None,
            monitor,
            truth_buf: Vec::with_capacity(n),
            synced: (0, 0, 0),
            energy_discharged_j: 0.0,
            energy_charged_j: 0.0,
            time_connected_ms: vec![0; n],
            isolations: vec![0; n],
            rejoins: vec![0; n],
            was_isolated: vec![false; n],
            ever_closed: vec![false; n],
            faults_seen: vec![0; n],
            node_period_ms: None,
            hold_load_during_join: true,
            hold_latency_ms: 0,
            join_flag_since_ms: None,
            frozen_until_ms: 0,
            plant_lag_ms: 0,
            s3_seen: 0,
            held_load_a: None,
            request_steps: Vec::new(),
            request_offset_a: 0.0,
        })
    }

    /// Freeze the plant for `ms` from now (a stopped plant process: nodes keep running on
    /// their last sample, which goes stale; their commands queue and apply when it resumes).
    pub fn freeze_plant(&mut self, ms: u64) {
        self.frozen_until_ms = self.frozen_until_ms.max(self.t_ms + ms);
    }

    /// Arm a step of the load REQUEST (what the inverter is asked for; it obeys the limits and,
    /// with `hold_load_during_join`, the hold): when string `k` (any if None) closes its
    /// precharge relay, the request changes by `delta_a` `after_ms` later (and stays).
    pub fn arm_join_request_step(&mut self, k: Option<usize>, after_ms: u64, delta_a: f64) {
        self.request_steps.push((k, after_ms, delta_a, None));
    }

    /// Drop armed and fired request steps.
    pub fn clear_request_steps(&mut self) {
        self.request_steps.clear();
        self.request_offset_a = 0.0;
    }

    /// Is a join in progress, as the speaker (the node the inverter listens to) reports?
    fn speaker_join_in_progress(&self) -> bool {
        let Some(first) = self.slots.iter().filter_map(|s| s.core.as_ref()).next() else { return false };
        let Some(sp) = first.output().peer.speaker else { return false };
        self.slots
            .iter()
            .filter_map(|s| s.core.as_ref())
            .find(|c| c.node_id() == sp)
            .is_some_and(|c| c.output().peer.join_in_progress)
    }


    pub fn plant(&self) -> &Plant {
        &self.plant
    }
    pub fn plant_mut(&mut self) -> &mut Plant {
        &mut self.plant
    }
    pub fn t_ms(&self) -> u64 {
        self.t_ms
    }
    pub fn dt_ms(&self) -> u64 {
        self.dt_ms
    }
    pub fn n(&self) -> usize {
        self.slots.len()
    }
    pub fn node(&self, k: usize) -> Option<&NodeCore> {
        self.slots[k].core.as_ref()
    }
    /// Node `k`'s state as a caller polls it between runs (None while it is dead).
    pub fn node_state(&self, k: usize) -> Option<NodeState> {
        self.node(k).map(|c| {
            let o = c.output();
            let n = c.peer().counters();
            NodeState { phase: o.peer.phase, command: o.contactors, fault: o.fault, aborts: n.aborts, closes: n.closes }
        })
    }
    pub fn time_connected_s(&self, k: usize) -> f64 {
        self.time_connected_ms[k] as f64 / 1000.0
    }
    pub fn isolations(&self, k: usize) -> u32 {
        self.isolations[k]
    }
    pub fn rejoins(&self, k: usize) -> u32 {
        self.rejoins[k]
    }
    /// Protection conditions node `k` saw during the run (rule and level, the one fault form).
    pub fn faults_seen(&self, k: usize) -> Vec<FaultSeen> {
        let mut v = Vec::new();
        for rule in Rule::ALL {
            for level in Level::ALL {
                if self.faults_seen[k] & (1u64 << (rule as u32 * 3 + level as u32)) != 0 {
                    v.push(FaultSeen { rule, level });
                }
            }
        }
        v
    }

    /// Node `k`'s part of the run report, in the one schema processes mode also fills.
    pub fn pack_report(&self, k: usize) -> PackReport {
        let now = self.node(k).map(|core| {
            let c = core.peer().counters();
            PackNow {
                faults_now: core.engine().output().faults.clone(),
                resets: core.output().resets,
                failsafe: core.output().failsafe,
                rx_ok: c.rx_ok,
                rx_dropped: c.rx_malformed
                    + c.rx_unauthenticated
                    + c.rx_forged
                    + c.rx_old_boot
                    + c.rx_unknown_sender
                    + c.rx_duplicate
                    + c.rx_stale,
                tx: c.tx,
            }
        });
        PackReport {
            time_connected_s: self.time_connected_s(k),
            isolations: self.isolations(k),
            rejoins: self.rejoins(k),
            faults_seen: self.faults_seen(k),
            now,
        }
    }

    /// Kill node `k`: its process dies, its messages stop, and its contactors drop open (the
    /// coils are powered by the BMU's drivers: normally-open contactors fail open).
    pub fn kill(&mut self, k: usize) {
        if let Some(core) = self.slots[k].core.take() {
            self.slots[k].saved_state = core.engine().export_state();
        }
        self.slots[k].last_cmd = StringCommand::default();
        self.plant.set_command(k, &StringCommand::default());
        self.inv.killed_at_ms.resize(self.slots.len(), None);
        self.inv.killed_at_ms[k] = Some(self.t_ms);
        self.monitor.set_report(k, NodeReport::default());
    }

    /// Restart node `k` with a new incarnation, restoring its persisted engine state.
    pub fn restart(&mut self, k: usize) -> Result<(), String> {
        let slot = &mut self.slots[k];
        if slot.core.is_some() {
            return Ok(());
        }
        slot.incarnation += 1;
        let s = &slot.spec;
        let mut core = NodeCore::new(s.node.clone(), s.engine.clone(), s.cell.clone(), s.peer.clone(), slot.incarnation, crate::simulation_auth(s.peer.system_id))
            .map_err(|e| e.to_string())?;
        if !slot.saved_state.is_empty() {
            core.engine_mut().import_state(&slot.saved_state).map_err(|e| e.to_string())?;
        }
        slot.core = Some(core);
        slot.held = None;
        slot.verify_at_ms = None;
        self.monitor.node_restarted(k);
        Ok(())
    }

    fn node_clock(&self, k: usize, t_ms: u64) -> u64 {
        let s = &self.slots[k].spec;
        let t = t_ms as f64 * (1.0 + s.drift_ppm * 1e-6);
        s.clock_offset_ms + t.max(0.0) as u64
    }

    /// The speaker's view of the agreed system limits (the one the inverter hears).
    fn inverter_limits(&self) -> Option<(f64, f64)> {
        // The speaker is the node that every live node names; take the first live node's
        // choice and read that node's limits. No live speaker: the inverter sees nothing.
        let first = self.slots.iter().filter_map(|s| s.core.as_ref()).next()?;
        let sp = first.output().peer.speaker?;
        let spk = self.slots.iter().filter_map(|s| s.core.as_ref()).find(|c| c.node_id() == sp)?;
        let o = spk.output();
        Some((o.peer.system_dcl_a, o.peer.system_ccl_a))
    }

    /// Advance one step of `dt_ms`.
    pub fn step(&mut self) {
        let dt_ms = self.dt_ms;
        let n = self.slots.len();

        // 1. load request from the profile, clipped to the agreed limits.
        let t_s = self.t_ms as f64 / 1000.0;
        let load = &self.plant.config().load;
        let raw = load.value_at(t_s);
        let v_bus = self.plant.v_bus_v().max(1.0);
        let t_now = self.t_ms;
        let mut fired = 0.0;
        self.request_steps.retain(|r| match r.3 {
            Some(at) if at <= t_now => {
                fired += r.2;
                false
            }
            _ => true,
        });
        self.request_offset_a += fired;
        let request_a = self.request_offset_a
            + match load.quantity() {
                Quantity::CurrentA => raw,
                Quantity::PowerW => raw / v_bus,
            };

        self.request_a = request_a;
        let any_closed = (0..n).any(|k| self.plant.contactor_state(k).pos && self.plant.contactor_state(k).neg);
        // "BMS ready": the inverter draws current only once the start-up closing sequence is
        // over (no live node requesting, precharging, closing or backing off), so that every
        // matching string is on the bus before the load pulls the bus away from them. Once
        // ready, later joins happen under load. All strings open: not ready again.
        // "Over" = quiet for READY_QUIET_MS (a peer requests only after it has seen the previous
        // close in a heartbeat, so there are short gaps inside the sequence).
        const READY_QUIET_MS: u64 = 2_000;
        if !any_closed {
            self.ready = false;
            self.quiet_since_ms = None;
        } else if !self.ready {
            let joining = self.slots.iter().filter_map(|s| s.core.as_ref()).any(|c| {
                matches!(c.output().peer.phase, Phase::Requesting | Phase::Precharging | Phase::Closing | Phase::Waiting | Phase::Listening)
            });
            if joining {
                self.quiet_since_ms = None;
            } else {
                let since = *self.quiet_since_ms.get_or_insert(self.t_ms);
                self.ready = self.t_ms - since >= READY_QUIET_MS;
            }
        }
        // An inverter honouring the hold keeps its current while a string joins (a limit
        // that drops is still obeyed at once below).
        let flag = self.speaker_join_in_progress();
        self.join_flag_since_ms = if flag { Some(self.join_flag_since_ms.unwrap_or(self.t_ms)) } else { None };
        let hold = self.hold_load_during_join
            && self.join_flag_since_ms.is_some_and(|t| self.t_ms.saturating_sub(t) >= self.hold_latency_ms);
        let wanted_a = match (hold, self.held_load_a) {
            (true, Some(h)) => h,
            _ => request_a,
        };
        let i_load = if !self.clip_load {
            wanted_a
        } else if !any_closed || !self.ready {
            0.0
        } else {
            match self.inverter_limits() {
                Some((dcl, ccl)) => wanted_a.clamp(-ccl, dcl),
                None => 0.0,
            }
        };
        self.held_load_a = if hold { Some(self.held_load_a.unwrap_or(i_load)) } else { None };
        let frozen = self.t_ms < self.frozen_until_ms;
        if !frozen {
            self.plant.set_load_a(i_load);
        }

        // 2. plant physics (none while the plant is frozen: its time stops).
        if frozen {
            self.plant_lag_ms += dt_ms;
        } else {
            self.plant.step(dt_ms as f64 / 1000.0);
        }
        self.t_ms += dt_ms;
        let t_ms = self.t_ms;


        // 3. deliver due messages.
        let mut k = 0;
        while k < self.flights.len() {
            if self.flights[k].at_ms <= t_ms {
                let f = self.flights.swap_remove(k);
                let tn = self.node_clock(f.to, t_ms);
                if let Some(core) = self.slots[f.to].core.as_mut() {
                    core.receive_decoded(tn, &self.pool[f.msg]);
                }
            } else {
                k += 1;
            }
        }
        if self.flights.is_empty() {
            self.pool.clear();
        }

        // 4. every live node: measure, step, command.
        self.fill_truth();
        for k in 0..n {
            if self.slots[k].core.is_none() {
                continue;
            }
            match self.node_period_ms {
                None => {
                    if frozen {
                        // no reply from a frozen plant: the node steps on its last sample
                        let (m, at) = self.slots[k].held.clone().unwrap_or_default();
                        self.step_node(k, t_ms, &m, at);
                    } else {
                        let m = self.plant.measure(k).clone();
                        self.step_node(k, t_ms, &m, t_ms);
                        self.slots[k].held = Some((m, t_ms));
                    }
                }
                Some(period) => {
                    let verify = self.slots[k].verify_at_ms.is_some_and(|t| t <= t_ms);
                    let periodic = t_ms >= self.slots[k].next_period_ms;
                    if !(verify || periodic) {
                        continue;
                    }
                    if periodic {
                        // stagger the nodes' periods by their index (independent loops)
                        let phase = (k as u64 * dt_ms) % period;
                        self.slots[k].next_period_ms = (t_ms / period + 1) * period + phase;
                    }
                    // The periodic step uses the sample of the previous period (the reply to
                    // the last command); a verification step asks the plant for a fresh one.
                    let (m, at) = if verify && !frozen {
                        (self.plant.measure_fresh(k).clone(), t_ms)
                    } else {
                        self.slots[k].held.clone().unwrap_or_default()
                    };
                    self.slots[k].verify_at_ms = None;
                    self.step_node(k, t_ms, &m, at);
                    if !frozen {
                        // the command goes out now; the plant replies with the next sample
                        let cmd = self.slots[k].last_cmd.clone();
                        self.plant.set_command(k, &cmd);
                        self.slots[k].held = Some((self.plant.measure(k).clone(), t_ms));
                    }
                }
            }
        }
        if !frozen {
            for k in 0..n {
                let cmd = self.slots[k].last_cmd.clone();
                self.plant.set_command(k, &cmd);
            }
        }

        self.check_invariants();
        self.steps += 1;
        if self.steps % self.record_every == 0 {
            self.record();
        }
    }

    /// `m_sim_ms`: the simulation time the sample was taken (a sample held over a plant
    /// freeze keeps its time and goes stale).
    fn step_node(&mut self, k: usize, t_ms: u64, m: &Measurement, m_sim_ms: u64) {
        let n = self.slots.len();
        let dt_ms = self.dt_ms;
        let tn = self.node_clock(k, t_ms);
        let meas_t_ms = self.node_clock(k, m_sim_ms).min(tn);
        let Some(core) = self.slots[k].core.as_mut() else { return };
        let inp = NodeInputs {
            t_ms: tn,
            meas_t_ms,
            v_cell_v: &m.v_cell_v,
            t_cell_c: &m.t_cell_c,
            i_a: m.i_a,
            v_string_v: m.v_string_v,
            v_bus_v: m.v_bus_v,
            feedback: m.feedback,
            valid: m.valid && !m.v_cell_v.is_empty(),
        };
        let out = core.step(&inp);
        let cmd = StringCommand {
            neg: out.contactors.neg,
            pos: out.contactors.pos,
            pre: out.contactors.pre,
            balance: out.balance.clone(),
            dcdc_setpoint_a: out.peer.dcdc_setpoint_a,
        };
        let wants_sample = out.peer.sample_request;
        // The safety monitor on this node's decision (S1: a node holding a fault commands
        // open in that same step; S2, S6 on its phase).
        let report = NodeReport {
            alive: true,
            fault: Some(out.fault),
            command: Some(out.contactors),
            phase: Some(out.peer.phase),
            quorum: Some(out.peer.quorum),
            live_set: Some(out.peer.live_set),
            closed_set: Some(out.peer.closed_set),
            speaker: Some(out.peer.speaker),
            system_dcl_a: Some(out.peer.system_dcl_a),
            system_ccl_a: Some(out.peer.system_ccl_a),
            local_dcl_a: Some(out.local_dcl_a),
            local_ccl_a: Some(out.local_ccl_a),
            limits_binding: out.action < Action::RampDown,
            side: Some(self.net.group_of(k)),
            reports_open: out.peer.phase == Phase::Isolated,
            ..NodeReport::default()
        };
        let plant = PlantSnapshot { v_bus_v: self.plant.v_bus_v(), strings: &self.truth_buf };
        self.monitor.node_step(t_ms * 1000, k, &report, &plant);
        // Messages: one send, each receiver on its own fate.
        for msg in &out.peer.messages {
            let Ok(decoded) = Message::decode(msg) else {
                self.inv.violate(t_ms, "wire", format!("node {} sent a message that does not decode", k + 1));
                continue;
            };
            let idx = self.pool.len();
            self.pool.push(decoded);
            // the one network model (loss, delay, duplicates, partition groups), on this
            // simulator's one PRNG; the fast simulator's clock is in ms
            self.deliveries.clear();
            self.net.broadcast_into(&mut self.rng, t_ms * 1000, k, n, 0, &mut self.deliveries);
            for &(at_us, to) in &self.deliveries {
                self.flights.push(Flight { at_ms: at_us / 1000, to, msg: idx });
            }
        }
        self.slots[k].last_cmd = cmd;
        if wants_sample && self.node_period_ms.is_some() {
            // the runtime takes a fresh sample at once: here, at the next plant step
            self.slots[k].verify_at_ms = Some(t_ms + dt_ms);
        }
    }

    /// Run until the virtual clock reaches `t_ms`.
    pub fn run_until(&mut self, t_ms: u64) {
        while self.t_ms + self.dt_ms <= t_ms {
            self.step();
        }
    }

    /// The true plant as the safety monitor reads it.
    fn fill_truth(&mut self) {
        self.truth_buf.clear();
        for k in 0..self.slots.len() {
            let c = self.plant.contactor_state(k);
            self.truth_buf.push(monitor::StringTruth {
                contactors: c,
                v_string_v: self.plant.string_voltage_v(k),
                i_a: self.plant.string_current_a(k),
                state: None,
            });
        }
    }

    fn check_invariants(&mut self) {
        let t_ms = self.t_ms;
        let n = self.slots.len();
        let dt_ms = self.dt_ms;
        // S1–S6 on the true plant after the commands (S2 relays, S3 match at each close, S1
        // open deadlines, S5 agreement while the network is healthy, over-current figure).
        // S3 on the truth at the instant of each close: the plant records every main close
        // with the true |V_bus − V_string| just before the contact landed (issue 11).
        let evs = self.plant.main_close_events();
        let new: Vec<(usize, f64)> = evs[self.s3_seen..].iter().map(|e| (e.string, e.dv_true_v)).collect();
        self.s3_seen = evs.len();
        for (k, dv) in new {
            self.monitor.main_close_event(k, dv);
        }
        self.fill_truth();
        let plant = PlantSnapshot { v_bus_v: self.plant.v_bus_v(), strings: &self.truth_buf };
        // Plant time: while the plant is frozen its physics and contactors stand still, so its
        // deadlines (S1 open within a second) run on its own clock, not on the nodes'.
        let t_plant_us = (t_ms - self.plant_lag_ms) * 1000;
        self.monitor.plant_step(t_plant_us, &plant, self.net.is_healthy());
        self.sync_monitor();
        for k in 0..n {
            let c = self.plant.contactor_state(k);
            let closed = c.pos && c.neg;
            if closed && !self.slots[k].prev_pos_closed {
                if self.was_isolated[k] {
                    self.rejoins[k] += 1;
                }
                self.ever_closed[k] = true;
                self.was_isolated[k] = false;
            }
            // An isolation: a closed string opens (for whatever reason: fault, alarm, lost
            // quorum, a dead node's contactors dropping out).
            if !closed && self.slots[k].prev_pos_closed {
                self.isolations[k] += 1;
                self.was_isolated[k] = true;
            }
            self.slots[k].prev_pos_closed = closed;
            if closed {
                self.time_connected_ms[k] += dt_ms;
            }
            // join-triggered load requests start counting when the precharge relay closes
            let pre_start = c.pre && c.neg && !self.slots[k].prev_pre;
            self.slots[k].prev_pre = c.pre && c.neg;
            if pre_start {
                for r in &mut self.request_steps {
                    if r.3.is_none() && r.0.is_none_or(|s| s == k) {
                        r.3 = Some(t_ms + r.1);
                    }
                }
            }
            if let Some(core) = self.slots[k].core.as_ref() {
                for f in &core.engine().output().faults {
                    self.faults_seen[k] |= 1u64 << (f.rule as u32 * 3 + f.level as u32);
                }
            }
        }
        // Failure detection: every live peer has dropped a dead node from its live set.
        for d in 0..self.inv.killed_at_ms.len() {
            if let Some(at) = self.inv.killed_at_ms[d] {
                if self.slots[d].core.is_some() {
                    self.inv.killed_at_ms[d] = None; // restarted before it was detected
                    continue;
                }
                let bit = 1u64 << d;
                let all_dropped = self.slots.iter().filter_map(|s| s.core.as_ref()).all(|c| c.output().peer.live_set & bit == 0);
                if all_dropped {
                    self.inv.detect_latencies_ms.push(t_ms - at);
                    self.inv.killed_at_ms[d] = None;
                }
            }
        }
        let i_load = self.plant.load_a();
        let e = i_load * self.plant.v_bus_v() * dt_ms as f64 / 1000.0;
        if e >= 0.0 {
            self.energy_discharged_j += e;
        } else {
            self.energy_charged_j -= e;
        }
    }

    /// Copy the monitor's new findings into `inv` (times in ms).
    fn sync_monitor(&mut self) {
        let (nv, nc, na) = self.synced;
        let v = self.monitor.violations();
        for x in &v[nv..] {
            if self.inv.violations.len() < 100 {
                self.inv.violations.push(format!("t={:.1}s {}: {}", x.t_us as f64 * 1e-6, x.rule.name(), x.what));
            }
            self.inv.rules.push(x.rule);
        }
        let f = self.monitor.figures();
        self.inv.closes.extend(f.closes[nc..].iter().map(|&(t, k, dv)| (t / 1000, k, dv)));
        self.inv.agree_latencies_ms.extend(f.agree_latencies_us[na..].iter().map(|&t| t / 1000));
        self.inv.max_string_overcurrent_a = f.max_string_overcurrent_a;
        self.synced = (v.len(), f.closes.len(), f.agree_latencies_us.len());
    }

    /// Close the run: a disagreement still open at the end counts as a latency so far.
    pub fn finish(&mut self) {
        self.monitor.finish((self.t_ms - self.plant_lag_ms) * 1000);
        self.sync_monitor();
    }

    fn record(&mut self) {
        let n = self.slots.len();
        let (dcl, ccl) = self.inverter_limits().unwrap_or((0.0, 0.0));
        let closed = (0..n).filter(|&k| { let c = self.plant.contactor_state(k); c.pos && c.neg }).count();
        let speaker = self
            .slots
            .iter()
            .filter_map(|s| s.core.as_ref())
            .next()
            .and_then(|c| c.output().peer.speaker)
            .map_or(0.0, f64::from);
        self.system_rows.extend_from_slice(&[
            self.t_ms as f64 / 1000.0,
            self.plant.v_bus_v(),
            self.plant.load_a(),
            self.request_a,
            dcl,
            ccl,
            closed as f64,
            speaker,
        ]);
        for k in 0..n {
            let c = self.plant.contactor_state(k);
            let state = if c.pos && c.neg { 2.0 } else if c.pre { 1.0 } else { 0.0 };
            let soc = self.plant.cell_soc(k);
            let soc_true = soc.iter().sum::<f64>() / soc.len() as f64;
            let t_max = self.plant.cell_temp_c(k).iter().copied().fold(f64::MIN, f64::max);
            let v_string = self.plant.string_voltage_v(k);
            let row = match self.slots[k].core.as_ref() {
                Some(core) => {
                    let o = core.output();
                    [
                        self.plant.string_current_a(k),
                        soc_true,
                        core.engine().output().soc_mean,
                        state,
                        o.peer.phase as u8 as f64,
                        o.local_dcl_a,
                        o.local_ccl_a,
                        o.peer.system_dcl_a,
                        t_max,
                        o.action as u8 as f64,
                        o.fault as u8 as f64,
                        1.0,
                        v_string,
                    ]
                }
                None => [
                    self.plant.string_current_a(k),
                    soc_true,
                    f64::NAN,
                    state,
                    f64::NAN,
                    f64::NAN,
                    f64::NAN,
                    f64::NAN,
                    t_max,
                    f64::NAN,
                    f64::NAN,
                    0.0,
                    v_string,
                ],
            };
            self.string_rows.extend_from_slice(&row);
        }
    }
}
