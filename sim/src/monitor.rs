//! The safety monitor: one checker of the brief's rules S1–S7 for every simulation mode (the
//! protocol simulator, the fast simulator and, through `mbms._core.SafetyMonitor`, processes
//! mode). Sans-IO: it is fed snapshots of the true plant state, each node's reported state and
//! the time, and returns the violations it found as typed values ([`Violation`]).
//!
//! What each mode can observe differs (processes mode sees the nodes only through their
//! telemetry; only the protocol simulator knows the strings' true ratings), so the inputs a
//! mode cannot observe are `None` and the checks that need them are skipped; the checks that
//! run use the same rule, the same margins ([`S3_DV_MARGIN_V`], [`LIMIT_RESOLUTION_A`],
//! [`S5_BOUND_PERIODS`], [`S1_OPEN_DEADLINE_US`], [`S4_RELATIVE_SLACK`],
//! [`S4_SLACK_PER_STRING_A`]) in every mode.
//!
//! Two entry points per step: [`Monitor::node_step`] when one node has stepped (checks on its
//! own decision: S1 command, S3 dwell, S6, S2 grants, S4 reported limits) and
//! [`Monitor::plant_step`] for the system at one instant (S1 physical, S2 relays, S3 physical
//! match at each close, S5 agreement, over-current figure). Plant-side events:
//! [`Monitor::main_close_event`] (the true |V_bus − V_string| at the instant a main contactor
//! closed) and [`Monitor::state_confirmed`] (what one node learnt of another string's state).

use std::collections::VecDeque;
use std::fmt;

use mbms_consensus::sharing::{n1_limits, set_limits, StringState};
use mbms_consensus::{Contactors, PeerConfig, Phase};

/// S3: allowance (V) on top of ΔV_close when the monitor compares the TRUE |V_bus − V_string|
/// at a main close with the node's threshold. The node decides on its own measurements: two HV
/// voltage channels, each with offset and gain error (the plant's default string/bus voltage
/// sensors: ±0.2 V offset, ±0.1 % gain, i.e. ±0.6 V at 400 V per channel, ~±1 V on the
/// difference in the worst case), and the bus moves during the contactor's closing time
/// (12 ms) under a changing load. A close beyond ΔV_close + 1 V is a real mismatch, not
/// sensor error. (Before: 1.0 V in the fast simulator and processes mode, 0 in the protocol
/// simulator, which checked the dwell on ideal measurements instead; both checks remain.)
pub const S3_DV_MARGIN_V: f64 = 1.0;

/// S3: a change of the other strings' total current (A) after a main close was commanded that
/// counts as an external disturbance during the contactor's closing time. A contactor in motion
/// cannot be stopped: a string dropping out (crash, fault) or a load stepping in the ~12–30 ms
/// between the command and the contact landing moves the bus by ΔI·R_parallel, which no
/// controller can see in advance (TE EVC 135 datasheet: close time up to 25 ms). 5 A moves a
/// 4 × 25 mΩ bus by 0.03 V: far below ΔV_close, so only real steps count.
pub const S3_DISTURB_A: f64 = 5.0;

/// S5: limits are compared at the resolution they cross the network with (the wire format and
/// the telemetry frames carry 0.1 A): two peers agree when their limits round to the same
/// 0.1 A. (Before: exact to 1e-6 A in the fast simulator, 0.1 A in the protocol simulator and
/// processes mode.)
pub const LIMIT_RESOLUTION_A: f64 = 0.1;

/// S5: on a healthy network all live peers agree within this many heartbeat periods; a
/// disagreement lasting longer is a violation (the brief's target is 3 periods at p99, 6 after
/// heals and restarts; 20 leaves room for a restarted peer's listening time).
pub const S5_BOUND_PERIODS: f64 = 20.0;

/// S1 (physical): a string whose node died, or reports itself isolated/fail-safe, must be open
/// within this time (µs): the contactor driver's watchdog (0.5 s, `mbms.plant_link`) plus one
/// telemetry period and poll (processes mode sees a report up to 0.2 s late) plus the opening
/// time of the contactors (~10 ms). Where commands are observable, S1 is also checked exactly:
/// a node holding a fault commands open in that same step.
pub const S1_OPEN_DEADLINE_US: u64 = 1_000_000;

/// S4: quantisation slack on the reported-limit bound: 0.5 % plus 0.2 A per string, from the
/// 10 mV / 0.1 mΩ / 0.1 A resolution of the states carried on the wire.
pub const S4_RELATIVE_SLACK: f64 = 0.005;
pub const S4_SLACK_PER_STRING_A: f64 = 0.2;

/// The rule a violation breaks (brief §3). Serialized as its name ("S1").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
pub enum Rule {
    S1,
    S2,
    S3,
    S4,
    S5,
    S6,
    S7,
}

impl Rule {
    pub fn name(self) -> &'static str {
        match self {
            Rule::S1 => "S1",
            Rule::S2 => "S2",
            Rule::S3 => "S3",
            Rule::S4 => "S4",
            Rule::S5 => "S5",
            Rule::S6 => "S6",
            Rule::S7 => "S7",
        }
    }
}

/// What was seen. Node and string numbers are indices (0-based) into the configured members.
/// Serialized as a record with its `kind` (snake_case) and fields.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum What {
    /// S1: a node holding a fault commands anything but open.
    FaultNotOpened { node: usize, command: Contactors },
    /// S1: a string still conducts this long after its node died or reported itself open.
    NotOpenedAfter { string: usize, since_us: u64, dead: bool },
    /// S2: several strings with the precharge relay closed at once (true relay states).
    SeveralPrecharging { strings: Vec<usize> },
    /// S2: several live nodes in a precharging/closing phase at once.
    SeveralClosing { nodes: Vec<usize> },
    /// S2: a node closing without a request.
    ClosingWithoutRequest { node: usize },
    /// S2: a node closing with fewer unexpired grants than a quorum.
    ClosingWithoutGrants { node: usize, held: usize, quorum: usize },
    /// S3: a main contactor closed at a true |V_bus − V_string| above ΔV_close + margin.
    ClosedOnMismatch { string: usize, dv_v: f64, limit_v: f64 },
    /// S3: a main close commanded without a full dwell of matched measurements after precharge.
    ClosedWithoutDwell { node: usize, dwell_ms: u64 },
    /// S4: a reported limit above the true N−1 limit of the closed strings.
    LimitAboveTrue { node: usize, dcl_a: f64, ccl_a: f64, bound_dcl_a: f64, bound_ccl_a: f64 },
    /// S5: live peers on a healthy network still disagree after the bound.
    NoAgreement { periods: f64 },
    /// S6: a string starts precharge without a quorum of the configured members on its side.
    PrechargeWithoutQuorum { node: usize, side: usize, quorum: usize },
    /// S7: a node accepted a message its sender never sent (`genuine` false), or one not newer
    /// than a message of that sender it had accepted before (a replay).
    Unauthentic { node: usize, sender: usize, genuine: bool },
}

/// One violation: rule, time (µs of the monitor's clock) and what.
#[derive(Clone, Debug, PartialEq)]
pub struct Violation {
    pub rule: Rule,
    pub t_us: u64,
    pub what: What,
}

/// The one output schema of a violation (bindings, reports): `{rule, t_s, detail, what}`, with
/// `detail` the sentence [`What`] displays as and `what` the typed record.
impl serde::Serialize for Violation {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("Violation", 4)?;
        st.serialize_field("rule", &self.rule)?;
        st.serialize_field("t_s", &(self.t_us as f64 * 1e-6))?;
        st.serialize_field("detail", &self.what.to_string())?;
        st.serialize_field("what", &self.what)?;
        st.end()
    }
}

impl fmt::Display for What {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ids = |v: &[usize]| v.iter().map(|k| k + 1).collect::<Vec<_>>();
        match self {
            What::FaultNotOpened { node, command } => write!(f, "node {} has a fault but commands {command:?}", node + 1),
            What::NotOpenedAfter { string, since_us, dead } => write!(
                f,
                "string {} still not open {:.2} s after its node {}",
                string + 1,
                *since_us as f64 * 1e-6,
                if *dead { "died" } else { "reported itself open" }
            ),
            What::SeveralPrecharging { strings } => write!(f, "strings {:?} precharging at once", ids(strings)),
            What::SeveralClosing { nodes } => write!(f, "nodes {:?} precharging/closing at once", ids(nodes)),
            What::ClosingWithoutRequest { node } => write!(f, "node {} closing without a request", node + 1),
            What::ClosingWithoutGrants { node, held, quorum } => {
                write!(f, "node {} closing with {held} unexpired grants < quorum {quorum}", node + 1)
            }
            What::ClosedOnMismatch { string, dv_v, limit_v } => {
                write!(f, "string {} closed its main contactor at |dV| = {dv_v:.2} V > {limit_v:.2} V", string + 1)
            }
            What::ClosedWithoutDwell { node, dwell_ms } => {
                write!(f, "node {} closes main without a {dwell_ms} ms dwell match after precharge", node + 1)
            }
            What::LimitAboveTrue { node, dcl_a, ccl_a, bound_dcl_a, bound_ccl_a } => write!(
                f,
                "node {} reports dcl {dcl_a:.1}/ccl {ccl_a:.1} A > true N−1 {bound_dcl_a:.1}/{bound_ccl_a:.1} A",
                node + 1
            ),
            What::NoAgreement { periods } => write!(f, "no agreement within {periods:.1} heartbeat periods"),
            What::PrechargeWithoutQuorum { node, side, quorum } => {
                write!(f, "node {} starts precharge on a side of {side} < quorum {quorum}", node + 1)
            }
            What::Unauthentic { node, sender, genuine } => write!(
                f,
                "node {} accepted {} message of member {}",
                node + 1,
                if *genuine { "a replayed (not fresh)" } else { "a forged" },
                sender + 1
            ),
        }
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "t={:.3} s {}: {}", self.t_us as f64 * 1e-6, self.rule.name(), self.what)
    }
}

/// The settings the rules are checked against (from the peers' configuration).
#[derive(Clone, Debug)]
pub struct MonitorConfig {
    /// Configured members N (node k is member k + 1).
    pub members: usize,
    /// floor(N/2) + 1.
    pub quorum: usize,
    pub dv_close_v: f64,
    pub precharge_settle_a: f64,
    pub dwell_ms: u64,
    pub heartbeat_ms: u64,
    /// S4: how long a reported limit may lag the truth (fail timeout + two heartbeats +
    /// network delay: "from the latest confirmed states").
    pub s4_window_us: u64,
    /// How long a peer stays live to a node without a message from it (the protocol's
    /// fail timeout + network delay): a node reports at most the least proposal of its *live*
    /// peers, so what a proposal carried binds it only that long.
    pub live_us: u64,
}

impl MonitorConfig {
    pub fn from_peer(cfg: &PeerConfig, members: usize, max_net_delay_us: u64) -> Self {
        Self {
            members,
            quorum: members / 2 + 1,
            dv_close_v: cfg.dv_close_v,
            precharge_settle_a: cfg.precharge_settle_a,
            dwell_ms: cfg.dwell_ms as u64,
            heartbeat_ms: cfg.heartbeat_ms as u64,
            s4_window_us: (cfg.fail_timeout_ms as u64 + 2 * cfg.heartbeat_ms as u64) * 1000 + max_net_delay_us + 2000,
            live_us: cfg.fail_timeout_ms as u64 * 1000 + max_net_delay_us,
        }
    }
}

/// A grant a node has out: to whom, for which ticket, until when (µs of the monitor's clock).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GrantOut {
    pub to: u16,
    pub ticket: u8,
    pub expires_us: u64,
}

/// One node's reported state. `None`: not observable in this mode (the check is skipped).
#[derive(Clone, Debug, Default)]
pub struct NodeReport {
    pub alive: bool,
    /// The node holds a confirmed fault (its input said so this step).
    pub fault: Option<bool>,
    /// The contactor command the node gave this step.
    pub command: Option<Contactors>,
    pub phase: Option<Phase>,
    /// The node's own quorum flag.
    pub quorum: Option<bool>,
    pub live_set: Option<u64>,
    pub closed_set: Option<u64>,
    /// Number of strings the node reports closed (used when `closed_set` is not observable).
    pub closed_count: Option<u32>,
    pub speaker: Option<Option<u16>>,
    pub system_dcl_a: Option<f64>,
    pub system_ccl_a: Option<f64>,
    /// The node's own (local) limits, and whether they bind its string's current now (closed,
    /// no fault, no ramp-down or open in progress): the over-current figure counts only then.
    pub local_dcl_a: Option<f64>,
    pub local_ccl_a: Option<f64>,
    pub limits_binding: bool,
    /// S3 dwell: the node's own clock (ms) and what it measured (|V_bus − V_string|, |I|).
    pub local_ms: Option<u64>,
    pub measured_dv_v: Option<f64>,
    pub measured_i_a: Option<f64>,
    /// The contactor feedback the node read (a main already closed is no new close).
    pub feedback: Option<Contactors>,
    /// S2 grants (outer `None`: not observable): the grant this node has out and its own
    /// request's ticket. `instance` changes at every (re)start: a crashed instance's grant
    /// counts until it expires.
    pub grant: Option<Option<GrantOut>>,
    pub request_ticket: Option<Option<u8>>,
    pub instance: u64,
    /// Which side of a network partition the node is on, where the simulator knows it.
    pub side: Option<u8>,
    /// The node reports itself open (isolated, fail-safe): its string must stop conducting.
    pub reports_open: bool,
}

/// One string's true state.
#[derive(Clone, Copy, Debug, Default)]
pub struct StringTruth {
    /// True contactor states (not commands).
    pub contactors: Contactors,
    pub v_string_v: f64,
    pub i_a: f64,
    /// True OCV, resistance and ratings, where the simulator knows them (S4 bound).
    pub state: Option<StringState>,
}

/// The true plant at one instant.
#[derive(Clone, Copy, Debug)]
pub struct PlantSnapshot<'a> {
    pub v_bus_v: f64,
    pub strings: &'a [StringTruth],
}

/// Figures the monitor measures besides the violations.
#[derive(Clone, Debug, Default)]
pub struct Figures {
    /// Largest |I| − own limit of a closed string whose limits bind (A; ≤ 0 is the target).
    pub max_string_overcurrent_a: f64,
    /// Times (µs) from a disagreement appearing on a healthy network to agreement.
    pub agree_latencies_us: Vec<u64>,
    /// Every main close: (t µs, string, true |V_bus − V_string| used for S3).
    pub closes: Vec<(u64, usize, f64)>,
    /// Closes that landed above ΔV_close + margin although the true |ΔV| was within it when
    /// the close was commanded, because an external event (another string's contactors moved,
    /// or the other strings' current stepped by more than [`S3_DISTURB_A`]) happened while the
    /// contact was in motion: (t µs, string, |ΔV| at command, |ΔV| at landing). Counted and
    /// reported, not S3 violations: the rule is about the close decision, and that decision
    /// was taken on a matched bus (checked on the true plant state at the command instant).
    pub disturbed_closes: Vec<(u64, usize, f64, f64)>,
}

#[derive(Clone, Debug, Default)]
struct NodeTrack {
    report: NodeReport,
    prev_command: Contactors,
    prev_phase: Option<Phase>,
    s3_hist: VecDeque<(u64, bool)>,
    grant: Option<(u64, GrantOut)>,
    /// Since when (µs) the node is dead or reports itself open while its string conducts.
    open_due_since: Option<(u64, bool)>,
    /// What this node heard directly of each string: (µs the sender stated it, state).
    confirmed: Vec<Option<(u64, StringState)>>,
    /// Per peer p: when its latest proposal arrived here and the states it was built from. A
    /// peer proposes from the states it heard directly (and its own), and a node reports at
    /// most the least proposal of its live peers, so a state p heard binds this node from
    /// the arrival of p's proposal for as long as p stays live here.
    carried: Vec<Option<(u64, Vec<Option<(u64, StringState)>>)>>,
    /// Per peer: when a message of it last arrived here (its liveness as this node sees it).
    heard_at: Vec<Option<u64>>,
    conf_hist: VecDeque<(u64, f64, f64)>,
}

#[derive(Clone, Debug, Default)]
struct StringTrack {
    main_closed: bool,
    pre: bool,
    dv_v: f64,
    close_event_dv_v: Option<f64>,
    /// A main close is commanded and the contact has not landed yet: the true |ΔV| at the
    /// command, the other strings' contactors and total current then, and whether an external
    /// disturbance happened since.
    pending: Option<PendingClose>,
}

#[derive(Clone, Debug)]
struct PendingClose {
    dv_at_command_v: f64,
    others: Vec<Contactors>,
    others_i_a: f64,
    disturbed: bool,
}

/// The monitor. Time is µs of one clock (the simulator's true time, or the plant's).
#[derive(Clone, Debug)]
pub struct Monitor {
    cfg: MonitorConfig,
    nodes: Vec<NodeTrack>,
    strings: Vec<StringTrack>,
    latest_confirmed: Vec<Option<(u64, StringState)>>,
    truth_hist: VecDeque<(u64, f64, f64)>,
    closed_mask: u64,
    last_drop_us: Option<u64>,
    disagree_since_us: Option<u64>,
    no_agreement_reported: bool,
    agreed: bool,
    violations: Vec<Violation>,
    max_violations: usize,
    figures: Figures,
}

fn da(x: f64) -> i64 {
    (x / LIMIT_RESOLUTION_A).round() as i64
}

impl Monitor {
    pub fn new(cfg: MonitorConfig) -> Self {
        let n = cfg.members;
        let node = NodeTrack { confirmed: vec![None; n], carried: vec![None; n], heard_at: vec![None; n], ..NodeTrack::default() };
        Self {
            nodes: vec![node; n],
            strings: vec![StringTrack::default(); n],
            latest_confirmed: vec![None; n],
            truth_hist: VecDeque::new(),
            closed_mask: 0,
            last_drop_us: None,
            disagree_since_us: None,
            no_agreement_reported: false,
            agreed: false,
            violations: Vec::new(),
            max_violations: 100,
            figures: Figures::default(),
            cfg,
        }
    }

    pub fn config(&self) -> &MonitorConfig {
        &self.cfg
    }
    /// Every violation found so far (at most 100 are kept).
    pub fn violations(&self) -> &[Violation] {
        &self.violations
    }
    pub fn figures(&self) -> &Figures {
        &self.figures
    }

    fn violate(&mut self, t_us: u64, rule: Rule, what: What) {
        if self.violations.len() < self.max_violations {
            self.violations.push(Violation { rule, t_us, what });
        }
    }

    /// Plant event: string `k`'s main contactor closed with the TRUE |V_bus − V_string| = `dv_v`
    /// at that instant. Used by S3 at the next [`Monitor::plant_step`] instead of the
    /// previous snapshot's value.
    pub fn main_close_event(&mut self, k: usize, dv_v: f64) {
        if let Some(s) = self.strings.get_mut(k) {
            s.close_event_dv_v = Some(dv_v);
        }
    }

    /// Node `observer` has just learnt string `j`'s state (a message carrying it arrived):
    /// S4 bounds each node's limits by the states it could know ("latest confirmed").
    ///
    /// `state` is the string's state when the sender stated it (`t_us`), not when it
    /// arrived: a message built before a derate and delivered after it carries the old state.
    pub fn state_confirmed(&mut self, observer: usize, j: usize, t_us: u64, state: StringState) {
        let c = &mut self.nodes[observer].confirmed[j];
        if c.is_none_or(|(t, _)| t <= t_us) {
            *c = Some((t_us, state));
        }
        let l = &mut self.latest_confirmed[j];
        if l.is_none_or(|(t, _)| t <= t_us) {
            *l = Some((t_us, state));
        }
    }

    /// The states a proposal of node `from` is built from: what it had heard directly, and its
    /// own string's state `own` at `t_us` (take it when `from` sends the proposal; give it to
    /// [`Monitor::proposal_heard`] on delivery).
    pub fn heard_by(&self, from: usize, t_us: u64, own: StringState) -> Vec<Option<(u64, StringState)>> {
        let mut v = self.nodes[from].confirmed.clone();
        v[from] = Some((t_us, own));
        v
    }

    /// Node `to` received, at `t_us`, a message of `from`; `heard` is set when it carried a
    /// proposal built from those states (see [`Monitor::heard_by`]).
    pub fn message_heard(&mut self, to: usize, from: usize, t_us: u64, heard: Option<Vec<Option<(u64, StringState)>>>) {
        let node = &mut self.nodes[to];
        node.heard_at[from] = Some(t_us);
        if let Some(h) = heard {
            node.carried[from] = Some((t_us, h));
        }
    }

    /// S7: node `k` accepted a message that names member `sender`; `genuine`: that member's node
    /// really sent it (the simulator knows); `fresh`: it is newer than every message of that
    /// sender `k` accepted before. Anything else changing a node's state is a violation.
    pub fn message_accepted(&mut self, t_us: u64, k: usize, sender: usize, genuine: bool, fresh: bool) {
        if !genuine || !fresh {
            self.violate(t_us, Rule::S7, What::Unauthentic { node: k, sender, genuine });
        }
    }

    /// Node `k` (re)started: its dwell history and what it learnt are gone.
    pub fn node_restarted(&mut self, k: usize) {
        let t = &mut self.nodes[k];
        t.s3_hist.clear();
        t.prev_command = Contactors::OPEN;
        t.prev_phase = None;
        t.confirmed.iter_mut().for_each(|c| *c = None);
        t.carried.iter_mut().for_each(|c| *c = None);
        t.heard_at.iter_mut().for_each(|c| *c = None);
    }

    /// Node `k` stepped at `t_us` and reports `r`; `plant` is the truth at that instant.
    /// Checks the node's own decision: S1 (command), S3 (dwell), S6, S2 (grants), S4.
    pub fn node_step(&mut self, t_us: u64, k: usize, r: &NodeReport, plant: &PlantSnapshot<'_>) {
        let n = self.cfg.members;
        let prev_cmd = self.nodes[k].prev_command;
        let prev_phase = self.nodes[k].prev_phase;
        // S1: a node holding a fault commands open in the same step.
        if let (Some(true), Some(cmd)) = (r.fault, r.command) {
            if cmd != Contactors::OPEN {
                self.violate(t_us, Rule::S1, What::FaultNotOpened { node: k, command: cmd });
            }
        }
        // S3 (physical, command instant): remember the true |ΔV| when the main close is
        // commanded, and what the other strings were doing, to tell a disturbance during the
        // contactor's motion from a close decided on a mismatched bus.
        if let Some(cmd) = r.command {
            let fb_pos = r.feedback.is_some_and(|f| f.pos);
            if cmd.pos && !prev_cmd.pos && !fb_pos && k < plant.strings.len() && !plant.strings[k].contactors.main_closed() {
                let others: Vec<Contactors> = plant.strings.iter().map(|s| s.contactors).collect();
                let others_i_a = plant.strings.iter().enumerate().filter(|&(j, _)| j != k).map(|(_, s)| s.i_a).sum();
                self.strings[k].pending = Some(PendingClose {
                    dv_at_command_v: (plant.v_bus_v - plant.strings[k].v_string_v).abs(),
                    others,
                    others_i_a,
                    disturbed: false,
                });
            } else if !cmd.pos {
                self.strings[k].pending = None;
            }
        }
        // S3 (procedure): the main close is commanded only after the measurements matched at
        // every step of the dwell, with the precharge path closed before.
        if let (Some(lms), Some(dv), Some(i), Some(cmd)) = (r.local_ms, r.measured_dv_v, r.measured_i_a, r.command) {
            let matched = dv <= self.cfg.dv_close_v && i.abs() <= self.cfg.precharge_settle_a;
            let dwell = self.cfg.dwell_ms;
            let keep = dwell + 50;
            let h = &mut self.nodes[k].s3_hist;
            h.push_back((lms, matched));
            while h.front().is_some_and(|(l, _)| lms.saturating_sub(*l) > keep) {
                h.pop_front();
            }
            let fb_pos = r.feedback.is_some_and(|f| f.pos);
            if cmd.pos && !prev_cmd.pos && !fb_pos {
                let window_ok = h.iter().filter(|(l, _)| lms - l <= dwell).all(|(_, m)| *m);
                let covered = h.front().is_some_and(|(l, _)| lms - l >= dwell);
                let pre_ok = prev_cmd.pre && prev_cmd.neg;
                if !(window_ok && covered && pre_ok) {
                    self.violate(t_us, Rule::S3, What::ClosedWithoutDwell { node: k, dwell_ms: dwell });
                }
            }
        }
        // S6: precharge starts only with a quorum of the configured members: the node's own
        // flag and live set, and (where sides are observed) the live nodes on its side of the
        // network.
        if r.phase == Some(Phase::Precharging) && prev_phase != Some(Phase::Precharging) {
            let mut side = usize::MAX;
            if let Some(ls) = r.live_set {
                side = side.min(ls.count_ones() as usize);
            }
            if let Some(g) = r.side {
                let on_side = self
                    .nodes
                    .iter()
                    .enumerate()
                    .filter(|(j, t)| *j == k || (t.report.alive && t.report.side == Some(g)))
                    .count();
                side = side.min(on_side);
            }
            let short = side != usize::MAX && side < self.cfg.quorum;
            if r.quorum == Some(false) || short {
                let side = if side == usize::MAX { 0 } else { side };
                self.violate(t_us, Rule::S6, What::PrechargeWithoutQuorum { node: k, side, quorum: self.cfg.quorum });
            }
        }
        // S2 grants: the record of what k has out (a released grant is gone; a crashed
        // instance's grant counts until it expires).
        match r.grant {
            Some(Some(g)) => {
                let same = self.nodes[k].grant.is_some_and(|(inst, h)| inst == r.instance && h.to == g.to && h.ticket == g.ticket);
                if !same {
                    self.nodes[k].grant = Some((r.instance, g));
                }
            }
            Some(None) => {
                if self.nodes[k].grant.is_some_and(|(inst, _)| inst == r.instance) {
                    self.nodes[k].grant = None;
                }
            }
            None => {}
        }
        self.nodes[k].report = r.clone();
        if let Some(c) = r.command {
            self.nodes[k].prev_command = c;
        }
        self.nodes[k].prev_phase = r.phase;
        // S2: at most one live node precharging/closing, and that one holds a quorum of
        // unexpired grants for its ticket.
        let closing: Vec<usize> = (0..n)
            .filter(|&j| self.nodes[j].report.alive && self.nodes[j].report.phase.is_some_and(|p| p.is_closing()))
            .collect();
        if closing.len() > 1 {
            self.violate(t_us, Rule::S2, What::SeveralClosing { nodes: closing });
        }
        if r.phase.is_some_and(|p| p.is_closing()) {
            if let Some(ticket) = r.request_ticket {
                self.check_grants(t_us, k, ticket);
            }
        }
        // S4: the reported limits against the true N−1 limit of the closed strings.
        self.check_reported_limits(t_us, k, r, plant);
    }

    fn check_grants(&mut self, t_us: u64, k: usize, ticket: Option<u8>) {
        let id = (k + 1) as u16;
        match ticket {
            None => self.violate(t_us, Rule::S2, What::ClosingWithoutRequest { node: k }),
            Some(ticket) => {
                let held = self
                    .nodes
                    .iter()
                    .filter(|t| t.grant.is_some_and(|(_, g)| g.to == id && g.ticket == ticket && g.expires_us > t_us))
                    .count();
                if held < self.cfg.quorum {
                    self.violate(t_us, Rule::S2, What::ClosingWithoutGrants { node: k, held, quorum: self.cfg.quorum });
                }
            }
        }
    }

    fn check_reported_limits(&mut self, t_us: u64, k: usize, r: &NodeReport, plant: &PlantSnapshot<'_>) {
        let (Some(dcl), Some(ccl)) = (r.system_dcl_a, r.system_ccl_a) else { return };
        if plant.strings.iter().any(|s| s.state.is_none()) {
            return; // true ratings not known in this mode
        }
        let n = plant.strings.len();
        let closed: Vec<StringState> =
            plant.strings.iter().filter(|s| s.contactors.main_closed()).filter_map(|s| s.state).collect();
        let mask = plant.strings.iter().enumerate().fold(0u64, |m, (j, s)| m | ((s.contactors.main_closed() as u64) << j));
        if self.closed_mask & !mask != 0 {
            self.last_drop_us = Some(t_us);
        }
        self.closed_mask = mask;
        let w = self.cfg.s4_window_us;
        let (td, tc) = n1_limits(&closed);
        self.truth_hist.push_back((t_us, td, tc));
        while self.truth_hist.front().is_some_and(|(tt, _, _)| t_us - tt > w) {
            self.truth_hist.pop_front();
        }
        let (mut md, mut mc) = self.truth_hist.iter().fold((0.0f64, 0.0f64), |a, x| (a.0.max(x.1), a.1.max(x.2)));
        // "From the latest confirmed states": a string's state that changed while it could
        // not reach this peer is taken as this peer last heard it.
        //
        // A string this peer has never heard is taken at its latest state confirmed to any
        // peer (and only if no peer ever heard it, at its true state). Why this is the
        // spec's bound: a peer reports min(own proposal, the latest proposals of its live
        // peers) (S5), and another peer's proposal is computed from the states confirmed to
        // *that* peer — so the latest confirmed state of a string this peer never heard is
        // the one carried to it inside those proposals. Taking the string's true current
        // state instead demands knowledge that no message has carried yet: seed 50058842
        // (udp-partition, 3 peers) had string 1 closed, cut off from the quorum side, and
        // derated to half its DCL while cut off; peer 2 had never heard peer 1 and reported
        // peer 3's proposal (141 A = the §4 N−1 limit of {1, 2, 3} with string 1 at its
        // last confirmed, pre-derate state), which the old bound compared with the derated
        // truth (0 A). The derated Limits first reached any peer 100 ms after the last
        // flagged step, and every peer's limit dropped at once when it learnt of string 1.
        // The string's own peer enforces the derate locally meanwhile (S6: closed strings
        // stay within their local limits), as it must for a change no one else can know.
        let conf: Vec<StringState> = (0..n)
            .filter(|&j| plant.strings[j].contactors.main_closed())
            .filter_map(|j| {
                let truth = plant.strings[j].state?;
                if j == k {
                    return Some(truth);
                }
                // the newest of what k heard directly and what reached it in the proposals of
                // the peers still live to it
                let node = &self.nodes[k];
                let live_us = self.cfg.live_us;
                let carried = node
                    .carried
                    .iter()
                    .enumerate()
                    .filter(|(p, _)| node.heard_at[*p].is_some_and(|h| t_us.saturating_sub(h) <= live_us))
                    .filter_map(|(_, c)| c.as_ref().and_then(|(_, v)| v[j]));
                let known = node.confirmed[j].into_iter().chain(carried).max_by_key(|x| x.0).map(|x| x.1);
                Some(known.or(self.latest_confirmed[j].map(|x| x.1)).unwrap_or(truth))
            })
            .collect();
        let (cd, cc) = n1_limits(&conf);
        let h = &mut self.nodes[k].conf_hist;
        h.push_back((t_us, cd, cc));
        while h.front().is_some_and(|(tt, _, _)| t_us - tt > w) {
            h.pop_front();
        }
        for &(_, d, c) in h.iter() {
            md = md.max(d);
            mc = mc.max(c);
        }
        // A string dropped out and the others may not know yet: the N−1 case (the remaining
        // strings on their short-term peak ratings) bounds it until the detection window passed.
        if self.last_drop_us.is_some_and(|d| t_us - d <= w) {
            let (pd, pc) = set_limits(&closed, true);
            md = md.max(pd);
            mc = mc.max(pc);
        }
        let slack = |x: f64| x * (1.0 + S4_RELATIVE_SLACK) + S4_SLACK_PER_STRING_A * n as f64;
        if dcl > slack(md) || ccl > slack(mc) {
            self.violate(
                t_us,
                Rule::S4,
                What::LimitAboveTrue { node: k, dcl_a: dcl, ccl_a: ccl, bound_dcl_a: md, bound_ccl_a: mc },
            );
        }
    }

    /// Node `k`'s report changed without a step (e.g. it died: `alive = false`).
    pub fn set_report(&mut self, k: usize, r: NodeReport) {
        self.nodes[k].report = r;
    }

    /// The system at `t_us`: true plant state and every node's latest report (from
    /// [`Monitor::node_step`] or [`Monitor::set_report`]). `healthy`: the network is connected
    /// and lossless and no restart is pending (S5 is checked only then).
    pub fn plant_step(&mut self, t_us: u64, plant: &PlantSnapshot<'_>, healthy: bool) {
        let n = self.cfg.members.min(plant.strings.len());
        // S2: at most one string with its precharge relay closed (true relay states).
        let pre: Vec<usize> = (0..n).filter(|&k| plant.strings[k].contactors.pre).collect();
        if pre.len() > 1 {
            self.violate(t_us, Rule::S2, What::SeveralPrecharging { strings: pre });
        }
        for k in 0..n {
            let s = plant.strings[k];
            let closed = s.contactors.main_closed();
            // S3 (physical): a main contactor closes only onto a matched bus.
            let landing = closed && !self.strings[k].main_closed;
            if let Some(p) = self.strings[k].pending.as_mut() {
                // Between command and landing: did anything external move the bus? Another
                // string's contactors moving counts up to and including the landing step; a
                // current change of the others only before it (at the landing the closing
                // string's own inrush shifts their currents).
                let moved = plant
                    .strings
                    .iter()
                    .enumerate()
                    .any(|(j, s)| j != k && p.others.get(j).is_some_and(|c| *c != s.contactors));
                let others_i_a: f64 =
                    plant.strings.iter().enumerate().filter(|&(j, _)| j != k).map(|(_, s)| s.i_a).sum();
                if moved || (!landing && (others_i_a - p.others_i_a).abs() > S3_DISTURB_A) {
                    p.disturbed = true;
                }
            }
            if landing {
                let dv = self.strings[k].close_event_dv_v.take().unwrap_or(self.strings[k].dv_v);
                self.figures.closes.push((t_us, k, dv));
                let limit_v = self.cfg.dv_close_v + S3_DV_MARGIN_V;
                if dv > limit_v {
                    match self.strings[k].pending.take() {
                        // Decided on a matched bus (true state at the command), then moved by an
                        // external event while the contact was in motion: reported, not an S3
                        // violation. Without a recorded command, or matched neither time: S3.
                        Some(p) if p.disturbed && p.dv_at_command_v <= limit_v => {
                            self.figures.disturbed_closes.push((t_us, k, p.dv_at_command_v, dv));
                        }
                        _ => self.violate(t_us, Rule::S3, What::ClosedOnMismatch { string: k, dv_v: dv, limit_v }),
                    }
                }
                self.strings[k].pending = None;
            }
            self.strings[k].close_event_dv_v = None;
            self.strings[k].main_closed = closed;
            self.strings[k].pre = s.contactors.pre;
            self.strings[k].dv_v = (plant.v_bus_v - s.v_string_v).abs();
            // S1 (physical): a dead node's string, or one whose node reports itself open
            // (isolated), stops conducting within the deadline.
            let r = self.nodes[k].report.clone();
            let conducting = s.contactors.pos || s.contactors.pre;
            let dead = !r.alive;
            let reports_open = r.alive && r.reports_open;
            if conducting && (dead || reports_open) {
                match self.nodes[k].open_due_since {
                    None => self.nodes[k].open_due_since = Some((t_us, dead)),
                    Some((since, d)) if t_us - since > S1_OPEN_DEADLINE_US => {
                        self.violate(t_us, Rule::S1, What::NotOpenedAfter { string: k, since_us: t_us - since, dead: d });
                        self.nodes[k].open_due_since = Some((t_us, d)); // once per deadline
                    }
                    _ => {}
                }
            } else {
                self.nodes[k].open_due_since = None;
            }
            // Over-current figure: a closed string's current above its own limit.
            if closed && r.alive && r.limits_binding {
                let own = if s.i_a >= 0.0 { r.local_dcl_a } else { r.local_ccl_a };
                if let Some(own) = own {
                    let over = s.i_a.abs() - own;
                    if over > self.figures.max_string_overcurrent_a {
                        self.figures.max_string_overcurrent_a = over;
                    }
                }
            }
        }
        self.check_agreement(t_us, healthy);
    }

    fn check_agreement(&mut self, t_us: u64, healthy: bool) {
        let live: Vec<&NodeReport> = self
            .nodes
            .iter()
            .map(|t| &t.report)
            .filter(|r| r.alive && r.system_dcl_a.is_some() && r.phase != Some(Phase::Listening))
            .collect();
        // Every live node that reports limits takes part (a node not heard, e.g. in processes
        // mode before its first telemetry frame, reports none); a listening one disagrees.
        let all_alive = self.nodes.iter().filter(|t| t.report.alive && t.report.system_dcl_a.is_some()).count();
        self.agreed = false;
        if !healthy || live.len() < 2 {
            self.disagree_since_us = None;
            self.no_agreement_reported = false;
            return;
        }
        let key = |r: &NodeReport| {
            (
                r.closed_set.map(|s| s.count_ones()).or(r.closed_count),
                r.closed_set,
                r.live_set,
                r.speaker,
                da(r.system_dcl_a.unwrap_or(0.0)),
                da(r.system_ccl_a.unwrap_or(0.0)),
            )
        };
        let a = key(live[0]);
        let agree = live.len() == all_alive && live.iter().all(|r| key(r) == a);
        self.agreed = agree;
        match (agree, self.disagree_since_us) {
            (true, Some(since)) => {
                self.figures.agree_latencies_us.push(t_us - since);
                self.disagree_since_us = None;
                self.no_agreement_reported = false;
            }
            (false, None) => self.disagree_since_us = Some(t_us),
            (false, Some(since)) => {
                let periods = (t_us - since) as f64 / (self.cfg.heartbeat_ms as f64 * 1000.0);
                if periods > S5_BOUND_PERIODS && !self.no_agreement_reported {
                    self.no_agreement_reported = true;
                    self.violate(t_us, Rule::S5, What::NoAgreement { periods });
                }
            }
            _ => {}
        }
    }

    /// Whether all live nodes agreed (limits, closed set, live set, speaker) on a healthy
    /// network at the last [`Monitor::plant_step`].
    pub fn agrees_now(&self) -> bool {
        self.agreed
    }

    /// End of the run: a disagreement still open counts as a latency so far.
    pub fn finish(&mut self, t_us: u64) {
        if let Some(since) = self.disagree_since_us.take() {
            self.figures.agree_latencies_us.push(t_us - since);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(n: usize) -> MonitorConfig {
        MonitorConfig::from_peer(&PeerConfig::default(), n, 0)
    }

    fn st(dcl_a: f64) -> StringState {
        StringState { ocv_v: 400.0, r_ohm: 0.05, dcl_a, ccl_a: 80.0, dcl_peak_a: 1.5 * dcl_a, ccl_peak_a: 120.0 }
    }

    fn closed(state: StringState) -> StringTruth {
        StringTruth { contactors: Contactors::CLOSED, v_string_v: 400.0, i_a: 0.0, state: Some(state) }
    }

    fn limits_report(dcl_a: f64, ccl_a: f64) -> NodeReport {
        NodeReport { alive: true, system_dcl_a: Some(dcl_a), system_ccl_a: Some(ccl_a), ..NodeReport::default() }
    }

    /// S4 "from the latest confirmed states" (the situation of protocol-simulator seed
    /// 50058842 before the load ramp changed that schedule): string 1 was derated while cut
    /// off; peer 2 never heard string 1 and reports the limit agreed with peer 3, computed
    /// with string 1's last confirmed (pre-derate) state. That is within the bound; the
    /// derated truth alone would not be, and a limit above the confirmed bound is caught.
    #[test]
    fn s4_bound_is_the_latest_confirmed_state_and_above_it_is_caught() {
        let before = st(120.0);
        let derated = st(60.0);
        let open = StringTruth { state: Some(st(120.0)), ..StringTruth::default() };
        let truth = [closed(derated), closed(st(120.0)), open];
        let plant = PlantSnapshot { v_bus_v: 400.0, strings: &truth };
        let (agreed_dcl, agreed_ccl) = n1_limits(&[before, st(120.0)]);
        let (true_dcl, _) = n1_limits(&[derated, st(120.0)]);
        assert!(agreed_dcl > true_dcl * 1.01 + 1.0, "the situation needs the stale state to matter");

        let mut m = Monitor::new(cfg(3));
        m.state_confirmed(2, 0, 500, before); // peer 3 heard string 1 before the derate
        m.node_step(1_000, 1, &limits_report(agreed_dcl, agreed_ccl), &plant);
        assert!(m.violations().is_empty(), "{:?}", m.violations());
        // Without the confirmed state (the truth alone) the same report is flagged.
        let mut m = Monitor::new(cfg(3));
        m.node_step(1_000, 1, &limits_report(agreed_dcl, agreed_ccl), &plant);
        assert_eq!(m.violations().len(), 1);

        let mut m = Monitor::new(cfg(3));
        m.state_confirmed(2, 0, 500, before);
        m.node_step(1_000, 1, &limits_report(agreed_dcl * 1.1, agreed_ccl), &plant);
        assert_eq!(m.violations().len(), 1);
        assert_eq!(m.violations()[0].rule, Rule::S4);
    }

    /// S4 bounds a node by what could reach it (seeds 50000, 7963 and five more of the first
    /// 100 000-schedule campaign): node 1 restarted, hears only peer 3, which last heard string
    /// 1 before its derate; peer 2 heard the derate, but nothing of peer 2 reaches node 1. The
    /// old bound took "the latest state confirmed to any peer" (peer 2's) and flagged node 1 for
    /// a limit no message could have corrected. A proposal of peer 2 reaching node 1 carries the
    /// derate: from then on the same limit is flagged. And a state is what the sender stated:
    /// a Limits message built before a derate and delivered after it carries the old state.
    #[test]
    fn s4_bound_is_what_could_reach_the_node() {
        let before = st(120.0);
        let derated = st(60.0);
        // node 1 (index 0) reports; string 4 (index 3) is derated at t = 700
        let truth = [closed(st(120.0)), closed(st(120.0)), closed(st(120.0)), closed(derated)];
        let plant = PlantSnapshot { v_bus_v: 400.0, strings: &truth };
        let (stale_dcl, stale_ccl) = n1_limits(&[st(120.0), st(120.0), st(120.0), before]);
        let (true_dcl, _) = n1_limits(&[st(120.0), st(120.0), st(120.0), derated]);
        assert!(stale_dcl > true_dcl * 1.01 + 1.0, "the situation needs the stale state to matter");
        let report = limits_report(stale_dcl, stale_ccl);

        let mut m = Monitor::new(cfg(4));
        m.state_confirmed(2, 3, 500, before); // peer 3 heard string 4 before the derate
        m.state_confirmed(1, 3, 900, derated); // peer 2 after it
        let from3 = m.heard_by(2, 950, st(120.0));
        m.message_heard(0, 2, 960, Some(from3)); // node 1 hears peer 3's proposal only
        m.node_step(1_000, 0, &report, &plant);
        assert!(m.violations().is_empty(), "{:?}", m.violations());
        // now peer 2's proposal arrives: the derate is known (a limit may lag what the node
        // knows by the S4 window: step once it has passed, with peer 2 still live)
        let later = 1_000 + m.cfg.s4_window_us + 1;
        let from2 = m.heard_by(1, later - 20, st(120.0));
        m.message_heard(0, 1, later - 10, Some(from2));
        m.node_step(later, 0, &report, &plant);
        assert_eq!(m.violations().len(), 1);
        assert_eq!(m.violations()[0].rule, Rule::S4);
        // peer 2 falls silent: its proposal no longer bounds node 1, which is left with what it
        // heard itself (S6: the derated string keeps its own limit locally)
        // while peer 3 (which still knows only the old state) goes on proposing
        let much_later = later + m.cfg.live_us + m.cfg.s4_window_us + 10;
        let from3 = m.heard_by(2, much_later - 20, st(120.0));
        m.message_heard(0, 2, much_later - 10, Some(from3));
        m.node_step(much_later, 0, &report, &plant);
        assert_eq!(m.violations().len(), 1, "{:?}", m.violations());

        // the string's own node proposes from its own state: its proposal carries the derate
        let mut m = Monitor::new(cfg(4));
        m.state_confirmed(0, 3, 500, before);
        let from4 = m.heard_by(3, 900, derated);
        m.message_heard(0, 3, 950, Some(from4));
        m.node_step(1_000, 0, &report, &plant);
        assert_eq!(m.violations().len(), 1, "the derate reached node 1 inside string 4's proposal");

        // a Limits message built before the derate (t = 500) arrives after one built after it
        // (t = 900): the node knows the newer state, the late one does not overwrite it
        let mut m = Monitor::new(cfg(4));
        m.state_confirmed(0, 3, 900, derated);
        m.state_confirmed(0, 3, 500, before);
        m.node_step(1_000, 0, &report, &plant);
        assert_eq!(m.violations().len(), 1, "the stale state must not raise the bound");
    }

    /// S3 (physical, disturbance): a close commanded on a matched bus (true state at the
    /// command) that lands mismatched because another string dropped out while the contact was
    /// in motion is counted as a disturbed close, not a violation; the same landing without a
    /// disturbance, or a close commanded on a mismatched bus, is a violation.
    #[test]
    fn s3_disturbance_during_contact_motion_is_told_from_a_bad_decision() {
        let c = cfg(3);
        let limit = c.dv_close_v + S3_DV_MARGIN_V;
        let precharged = |dv: f64| StringTruth {
            contactors: Contactors { neg: true, pos: false, pre: true },
            v_string_v: 400.0 - dv,
            ..StringTruth::default()
        };
        let other = closed(st(100.0));
        // (dv at command, another string drops during motion, expect violation, expect disturbed)
        for (dv_cmd, drop, bad, disturbed) in
            [(0.5, true, false, true), (0.5, false, true, false), (limit + 0.5, true, true, false)]
        {
            let mut m = Monitor::new(c.clone());
            let before = [precharged(dv_cmd), other, other];
            let snap = PlantSnapshot { v_bus_v: 400.0, strings: &before };
            m.plant_step(0, &snap, false);
            let r = NodeReport {
                alive: true,
                command: Some(Contactors { neg: true, pos: true, pre: true }),
                ..NodeReport::default()
            };
            m.node_step(0, 0, &r, &snap);
            let third = if drop { StringTruth::default() } else { other };
            let moving = [precharged(dv_cmd), other, third];
            m.plant_step(5_000, &PlantSnapshot { v_bus_v: 400.0, strings: &moving }, false);
            m.main_close_event(0, limit + 2.0); // the bus moved under the moving contact
            let landed = [closed(st(100.0)), other, third];
            m.plant_step(12_000, &PlantSnapshot { v_bus_v: 400.0, strings: &landed }, false);
            assert_eq!(m.violations().iter().any(|v| v.rule == Rule::S3), bad, "dv {dv_cmd} drop {drop}");
            assert_eq!(m.figures().disturbed_closes.len() == 1, disturbed, "dv {dv_cmd} drop {drop}");
        }
    }

    /// S3 (physical): the true |dV| at a close, from the plant's close event when there is
    /// one, else from the previous snapshot; within ΔV_close + margin passes, above fails.
    #[test]
    fn s3_true_dv_at_the_close_is_checked_against_one_margin() {
        let c = cfg(2);
        let limit = c.dv_close_v + S3_DV_MARGIN_V;
        for (dv, event, bad) in [(limit - 0.1, false, false), (limit + 0.1, false, true), (0.5, true, true)] {
            let mut m = Monitor::new(c.clone());
            let open = [StringTruth { v_string_v: 400.0 - dv, ..StringTruth::default() }, StringTruth::default()];
            m.plant_step(0, &PlantSnapshot { v_bus_v: 400.0, strings: &open }, false);
            if event {
                m.main_close_event(0, limit + 2.0); // the plant saw more at the instant of contact
            }
            let shut = [closed(st(100.0)), StringTruth::default()];
            m.plant_step(10_000, &PlantSnapshot { v_bus_v: 400.0, strings: &shut }, false);
            assert_eq!(m.violations().iter().any(|v| v.rule == Rule::S3), bad, "dv {dv} event {event}");
            assert_eq!(m.figures().closes.len(), 1);
        }
    }

    /// S1 (physical): a dead node's string still conducting after the deadline is caught;
    /// one that opens in time is not.
    #[test]
    fn s1_dead_node_string_must_open_within_the_deadline() {
        let mut m = Monitor::new(cfg(2));
        let shut = [closed(st(100.0)), StringTruth::default()];
        let plant = PlantSnapshot { v_bus_v: 400.0, strings: &shut };
        m.set_report(1, NodeReport { alive: true, ..NodeReport::default() });
        m.set_report(0, NodeReport::default()); // node 1 dead
        m.plant_step(0, &plant, false);
        m.plant_step(S1_OPEN_DEADLINE_US, &plant, false);
        assert!(m.violations().is_empty());
        m.plant_step(S1_OPEN_DEADLINE_US + 1, &plant, false);
        assert_eq!(m.violations()[0].rule, Rule::S1);
    }

    /// S5: limits that differ by less than the 0.1 A resolution agree; 0.2 A apart for longer
    /// than the bound on a healthy network is a violation, and not while unhealthy.
    #[test]
    fn s5_agreement_at_the_wire_resolution_within_the_bound() {
        let c = cfg(2);
        let hb_us = c.heartbeat_ms * 1000;
        let none = [StringTruth::default(), StringTruth::default()];
        let plant = PlantSnapshot { v_bus_v: 0.0, strings: &none };
        for (second, healthy, bad) in [(100.02, true, false), (100.2, true, true), (100.2, false, false)] {
            let mut m = Monitor::new(c.clone());
            m.set_report(0, limits_report(100.0, 50.0));
            m.set_report(1, limits_report(second, 50.0));
            let end = (S5_BOUND_PERIODS as u64 + 2) * hb_us;
            let mut t = 0;
            while t <= end {
                m.plant_step(t, &plant, healthy);
                t += hb_us / 2;
            }
            assert_eq!(m.violations().iter().any(|v| v.rule == Rule::S5), bad, "{second} healthy {healthy}");
        }
    }
}
