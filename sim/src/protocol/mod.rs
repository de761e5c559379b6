//! Deterministic simulator: N peers, the electrical model ([`plant`]), a network model
//! ([`net`]), crashes and restarts, string faults, derating, clock drift. Seeded and
//! replayable: the same seed gives the same schedule and the same result. S1–S6 are
//! checked after every peer step; a violation names the rule, the time and the seed.
//!
//! The checks are the safety monitor's ([`crate::monitor`], brief §3), fed after every peer
//! step with everything this simulator knows:
//! - S1: a tick whose input has `fault` returns the all-open command; an isolated or crashed
//!   peer's string stops conducting.
//! - S2: at most one string has its precharge relay closed and at most one live peer is
//!   precharging/closing; a peer that is holds grants for its current ticket from a quorum
//!   of granters whose leases (granted_at + lease_ms on the granter's own, drifting clock,
//!   translated to real time) have not expired — a crashed granter's grant counts until then.
//! - S3: the main contactor is commanded closed only after the string's measurements
//!   matched (|V_bus − V_string| ≤ ΔV_close, |I| ≤ settle) at every step of the dwell, and
//!   the true |V_bus − V_string| when it closes is within ΔV_close + the monitor's margin.
//! - S4: every reported limit ≤ the true N−1 limit of the truly closed strings from the
//!   latest confirmed states (this simulator knows the strings' true ratings and tells the
//!   monitor what each peer learnt from each message).
//! - S5: once the network is healthy again (and every restart is done), or after the last
//!   close of a clean cold start, all live peers report the same limits, closed set, live
//!   set and speaker within the monitor's bound (the time it takes is the "agree" figure).
//! - S6: a string enters precharge only with its own quorum flag and a live set of a quorum.
//! - S7: with the adversary on, an attacker on the bus injects forged messages (grants to a
//!   requester from members that gave none, a fake member announcing CLOSED with huge limits
//!   and a tiny resistance, a 0 A proposal, a boot jump to 65535, zero tags, a captured tag
//!   spliced onto a changed body) and replays captured messages (of live and crashed nodes).
//!   Every message a peer accepts must be one that member's node really sent, newer than any
//!   message of that sender this receiver accepted before, also before a restart (the receive
//!   counters a node persists and restores; the simulator knows what was sent).

pub mod plant;

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use mbms_consensus::config::PeerConfig;
use mbms_consensus::peer::{Contactors, LocalState, Peer, Phase};
use mbms_consensus::sharing::StringState;
use crate::rng::SplitMix64;
use crate::network::{NetKind, NetModel, Partition};
use plant::{Plant, StringTruth};

use crate::monitor::{self, GrantOut, Monitor, MonitorConfig, NodeReport, PlantSnapshot};

/// How fast the simulated inverter raises its current (A/s): 1 kA/s, 100 A in 0.1 s.
pub const LOAD_RAMP_A_PER_S: f64 = 1000.0;

/// Parameters of a simulation campaign.
#[derive(Clone, Debug)]
pub struct SimParams {
    pub peers_min: usize,
    pub peers_max: usize,
    pub duration_ms: u64,
    /// Control period of every peer (its own clock).
    pub tick_ms: u64,
    /// Protocol configuration shared by all peers (node_id and members are set per run).
    pub base: PeerConfig,
    /// Record a trace of events (for replaying one seed).
    pub verbose: bool,
    /// Force the scenario (0 clean, 1 CAN faults, 2 UDP faults, 3 UDP partitions).
    pub force_scenario: Option<u64>,
    /// Count the CAN bits of every message sent (classic segmented and FD).
    pub measure_bus: bool,
    /// Deliberately break the system under test, to show that each check can fail.
    pub sabotage: Sabotage,
    /// The attacker (S7): None = in about half of the faulty schedules, Some(on) = forced.
    pub adversary: Option<bool>,
}

/// Ways to break the system under test (checker self-test).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sabotage {
    None,
    /// The node glue ignores the open command on a fault (S1).
    IgnoreFaultOpen,
    /// Every peer believes it is alone (members = itself, quorum 1) (S2, S6).
    Solo,
    /// Peers run with no dwell time (S3).
    NoDwell,
    /// The reported limits are doubled on their way out (S4).
    DoubleLimits,
    /// Peer 1 reports 1 A less than it agreed (safe, but not agreed: S5).
    Disagree,
    /// Peers skip tag verification (authentication off) while the attacker injects (S7).
    NoAuth,
    /// A restarted peer does not restore the receive counters it had persisted, while the
    /// attacker replays captured messages (S7: the monitor remembers across the restart).
    NoRxMemory,
}

impl Sabotage {
    /// Every mode with its name, as a campaign spec or `mbms sim --protocol --sabotage` names it.
    pub const ALL: [(&'static str, Sabotage); 8] = [
        ("none", Sabotage::None),
        ("ignore_fault_open", Sabotage::IgnoreFaultOpen),
        ("solo", Sabotage::Solo),
        ("no_dwell", Sabotage::NoDwell),
        ("double_limits", Sabotage::DoubleLimits),
        ("disagree", Sabotage::Disagree),
        ("no_auth", Sabotage::NoAuth),
        ("no_rx_memory", Sabotage::NoRxMemory),
    ];
}

impl std::str::FromStr for Sabotage {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL.iter().find(|(n, _)| *n == s).map(|(_, v)| *v).ok_or_else(|| {
            let names: Vec<&str> = Self::ALL.iter().map(|(n, _)| *n).collect();
            format!("unknown sabotage mode {s:?}; expected one of {names:?}")
        })
    }
}

impl Default for SimParams {
    fn default() -> Self {
        Self {
            peers_min: 3,
            peers_max: 5,
            duration_ms: 6000,
            tick_ms: 10,
            base: PeerConfig::default(),
            verbose: false,
            force_scenario: None,
            measure_bus: false,
            sabotage: Sabotage::None,
            adversary: None,
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct ScheduleResult {
    pub seed: u64,
    pub peers: usize,
    pub scenario: &'static str,
    pub violations: Vec<String>,
    /// The rule of each violation the monitor found.
    pub rules: Vec<monitor::Rule>,
    /// Per (crash, observer): time to drop the crashed peer from the live set, periods.
    pub detect_periods: Vec<f64>,
    /// Time from the network healing to all peers agreeing, periods.
    pub agree_periods: Option<f64>,
    /// Clean schedules: time from cold start until every string is closed, periods.
    pub cold_close_periods: Option<f64>,
    /// Successful requests: time from the request to precharge start (a quorum of grants).
    pub grant_periods: Vec<f64>,
    pub closes: u64,
    pub aborts: u64,
    pub messages: u64,
    pub message_bytes: u64,
    pub max_message_len: usize,
    /// With `measure_bus`: classic CAN bits (worst-case and exact stuffing) and CAN FD
    /// time (µs, worst case, 500 k / 2 M) of all messages, per 1-second bucket.
    pub bus_bits_worst: Vec<u64>,
    pub bus_bits_exact: Vec<u64>,
    /// The same messages in the previous 24-byte layout (exact stuffing).
    pub bus_bits_exact_24byte: Vec<u64>,
    /// The same messages without their tag (frames of 8, 8 and 3 bytes), exact stuffing: what
    /// authentication costs on the bus, side by side.
    pub bus_bits_exact_untagged: Vec<u64>,
    pub fd_us_worst: Vec<f64>,
    pub trace: Vec<String>,
    /// S7: the attacker was on in this schedule; messages it injected (deliveries to peers);
    /// its deliveries dropped, by the peer's reason; its deliveries accepted (only replays of
    /// genuine messages the receiver had not yet had: a late delivery, checked fresh).
    pub adversary: bool,
    pub attack_deliveries: u64,
    pub attack_dropped: std::collections::BTreeMap<&'static str, u64>,
    pub attack_accepted: u64,
}

/// What the simulator knows of every genuine message (the S7 ground truth).
#[derive(Clone, Copy, Debug)]
struct Genuine {
    sender: usize,
    /// Emission order of the sender's node over the whole schedule (all its boots).
    index: u64,
    /// Its entry in [`World::sent`].
    sent_idx: usize,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Ev {
    Tick(usize),
    /// To whom, the bytes, the index of what the monitor knows of the message ([`World::sent`]),
    /// and `true` if the attacker injected them.
    Deliver(usize, Vec<u8>, usize, bool),
    Attack,
    Crash(usize),
    Restart(usize),
    FaultOn(usize),
    FaultOff(usize),
    Derate(usize),
}

#[derive(Clone, Debug, PartialEq)]
struct Snapshot {
    closed_set: u64,
    live_set: u64,
    dcl_da: i64,
    ccl_da: i64,
    speaker: Option<u16>,
    phase: Phase,
}

struct Node {
    peer: Option<Peer>,
    id: u16,
    rate: f64,
    off_us: f64,
    next_local_ms: u64,
    fault: bool,
    last_cmd: Contactors,
    last_phase: Phase,
    snapshot: Option<Snapshot>,
    detect_pending: Vec<(usize, u64)>, // (crashed node, crash time)
    instance: u64,
    msg_counter: u32,
    request_at: Option<u64>,
    /// The boot counter of the node's current start (incarnations grow across restarts).
    boot: u64,
    /// Messages sent over the whole schedule (emission order, for S7).
    sent: u64,
    /// Per sender: emission index of the newest message this node accepted (S7), kept across
    /// a restart as the node keeps its receive counters (`saved_rx`).
    accepted: Vec<Option<u64>>,
    /// The receive counters the node persisted (the runtime saves them with the state; here at
    /// the crash, as a save just before it), restored into the peer at the restart.
    saved_rx: Vec<mbms_consensus::ReceiveCounter>,
}

impl Node {
    fn local_ms(&self, t_us: u64) -> u64 {
        ((t_us as f64 * self.rate + self.off_us) / 1000.0).floor().max(0.0) as u64
    }
    fn real_us(&self, local_ms: u64) -> u64 {
        ((local_ms as f64 * 1000.0 - self.off_us) / self.rate).ceil().max(0.0) as u64
    }
}

struct World {
    params: SimParams,
    cfg: PeerConfig,
    rng: SplitMix64,
    net_rng: SplitMix64,
    nodes: Vec<Node>,
    plant: Plant,
    net: NetModel,
    queue: BinaryHeap<Reverse<(u64, u64, Ev)>>,
    qseq: u64,
    /// The safety monitor (S1–S6) and its buffer of the true string states.
    monitor: Monitor,
    truth_buf: Vec<monitor::StringTruth>,
    heal_us: u64,
    agree_from_us: u64,
    result: ScheduleResult,
    clean: bool,
    load_demand: f64,
    load_on_us: u64,
    /// Time of the last load update (for the ramp).
    load_t_us: u64,
    /// S7 ground truth: every genuine message sent, and the attacker's recording of them.
    genuine: std::collections::HashMap<Vec<u8>, Genuine>,
    captured: Vec<Vec<u8>>,
    adversary: bool,
    /// The attacker's own random stream: the rest of a schedule is the same with it or without.
    arng: SplitMix64,
    /// Per message sent: what it states, for the S4 bound of the node that receives it.
    sent: Vec<Sent>,
}

/// What a sent message tells its receiver, as the monitor's S4 bound needs it: a Limits message
/// the sender's string state when it was built; a Detail message (a proposal) the states the
/// sender had heard directly then.
enum Sent {
    Limits { from: usize, t_us: u64, state: StringState },
    Proposal { from: usize, heard: Vec<Option<(u64, StringState)>> },
    Other,
}

fn pct_chance(rng: &mut SplitMix64, p: f64) -> bool {
    rng.chance(p)
}

impl World {
    fn push(&mut self, t: u64, ev: Ev) {
        self.qseq += 1;
        self.queue.push(Reverse((t, self.qseq, ev)));
    }

    fn trace(&mut self, t: u64, s: String) {
        if self.params.verbose {
            self.result.trace.push(format!("{:>9.3} ms  {s}", t as f64 / 1000.0));
        }
    }

    fn violation(&mut self, t: u64, s: String) {
        if self.result.violations.len() < 20 {
            self.result.violations.push(format!("t={:.3} ms: {s}", t as f64 / 1000.0));
        }
    }

    fn new_peer(&self, k: usize, inc: u64, seed: u64) -> Peer {
        let mut cfg = PeerConfig { node_id: self.nodes[k].id, seed, ..self.cfg.clone() };
        match self.params.sabotage {
            Sabotage::Solo => cfg.members = vec![cfg.node_id],
            Sabotage::NoDwell => cfg.dwell_ms = 0,
            _ => {}
        }
        let auth = if self.params.sabotage == Sabotage::NoAuth {
            mbms_consensus::Auth::off(cfg.system_id)
        } else {
            crate::simulation_auth(cfg.system_id)
        };
        Peer::new(cfg, inc, auth).expect("simulator configuration is valid")
    }

    fn local_state(&self, k: usize) -> LocalState {
        let s = &self.plant.strings[k];
        let fault = self.nodes[k].fault;
        LocalState {
            ocv_v: s.ocv_v(),
            r_ohm: s.r_ohm,
            soc: s.soc,
            dcl_a: s.dcl_a,
            ccl_a: s.ccl_a,
            dcl_peak_a: s.dcl_peak_a,
            ccl_peak_a: s.ccl_peak_a,
            fault,
            may_close: !fault,
            v_string_v: s.v_string_v(),
            v_bus_v: self.plant.v_bus_v,
            i_a: s.i_a,
            feedback: s.actual,
            meas_t_ms: None,
        }
    }

    /// The true plant as the monitor reads it (contacts, voltages, currents, ratings).
    fn fill_truth(&mut self) {
        self.truth_buf.clear();
        for st in &self.plant.strings {
            self.truth_buf.push(monitor::StringTruth {
                contactors: st.actual,
                v_string_v: st.v_string_v(),
                i_a: st.i_a,
                state: Some(st.state()),
            });
        }
    }

    fn on_tick(&mut self, t: u64, k: usize) {
        if self.nodes[k].peer.is_none() {
            return;
        }
        self.plant.advance(t);
        // The load follows the speaker's reported limits (an inverter obeying the BMS): it
        // drops at once when a limit drops, and rises at most at LOAD_RAMP_A_PER_S (an
        // inverter ramps its current; a step of ~100 A during a string's 12 ms contactor
        // actuation would move the bus by a few volts under the closing string, after its
        // dwell check: the safety monitor's S3 check of the true |dV| at the close found this).
        let dt_s = t.saturating_sub(self.load_t_us) as f64 * 1e-6;
        self.load_t_us = t;
        let mut target = 0.0;
        if t >= self.load_on_us && t < self.heal_us && !self.clean {
            let lim = self.nodes.iter().filter_map(|n| n.snapshot.as_ref()).next();
            match lim {
                Some(s) => {
                    target = if self.load_demand >= 0.0 {
                        self.load_demand * s.dcl_da as f64 / 10.0
                    } else {
                        self.load_demand * s.ccl_da as f64 / 10.0
                    };
                }
                None => target = self.plant.load_a,
            }
        }
        let cur = self.plant.load_a;
        self.plant.load_a = if target.abs() <= cur.abs() && target * cur >= 0.0 {
            target
        } else {
            let up = LOAD_RAMP_A_PER_S * dt_s;
            cur + (target - cur).clamp(-up, up)
        };
        let local = self.local_state(k);
        let lms = self.nodes[k].local_ms(t);
        let prev_cmd = self.nodes[k].last_cmd;
        let n = self.nodes.len();
        let (out_cmd, out_phase, snap, msgs, events, grant, request, quorum, closes, aborts) = {
            let peer = self.nodes[k].peer.as_mut().expect("checked");
            let mut out = peer.tick(lms, &local).clone();
            match self.params.sabotage {
                Sabotage::IgnoreFaultOpen if local.fault => out.command = prev_cmd,
                Sabotage::DoubleLimits => {
                    out.system_dcl_a *= 2.0;
                    out.system_ccl_a *= 2.0;
                }
                Sabotage::Disagree if k == 0 => out.system_dcl_a = (out.system_dcl_a - 1.0).max(0.0),
                _ => {}
            }
            let snap = Snapshot {
                closed_set: out.closed_set,
                live_set: out.live_set,
                dcl_da: (out.system_dcl_a * 10.0).round() as i64,
                ccl_da: (out.system_ccl_a * 10.0).round() as i64,
                speaker: out.speaker,
                phase: out.phase,
            };
            let dcl = out.system_dcl_a;
            let ccl = out.system_ccl_a;
            (
                out.command,
                out.phase,
                (snap, dcl, ccl),
                out.messages.clone(),
                out.events.clone(),
                peer.grant(),
                peer.request(),
                out.quorum,
                peer.counters().closes,
                peer.counters().aborts,
            )
        };
        let _ = (closes, aborts);
        if self.params.verbose {
            for e in &events {
                let id = self.nodes[k].id;
                self.trace(t, format!("peer {id}: {e:?}"));
            }
        }
        for e in &events {
            match e {
                mbms_consensus::Event::RequestSent { .. } => self.nodes[k].request_at = Some(t),
                mbms_consensus::Event::PrechargeStarted { .. } => {
                    if let Some(t0) = self.nodes[k].request_at.take() {
                        let hb_us = self.cfg.heartbeat_ms as f64 * 1000.0;
                        self.result.grant_periods.push((t - t0) as f64 / hb_us);
                    }
                }
                mbms_consensus::Event::Closed => self.result.closes += 1,
                mbms_consensus::Event::Aborted { .. } => self.result.aborts += 1,
                _ => {}
            }
        }
        self.nodes[k].last_cmd = out_cmd;
        self.nodes[k].last_phase = out_phase;
        self.nodes[k].snapshot = Some(snap.0.clone());
        // The safety monitor: S1–S6 on this peer's decision and on the true plant.
        let report = NodeReport {
            alive: true,
            fault: Some(local.fault),
            command: Some(out_cmd),
            phase: Some(out_phase),
            quorum: Some(quorum),
            live_set: Some(snap.0.live_set),
            closed_set: Some(snap.0.closed_set),
            closed_count: None,
            speaker: Some(snap.0.speaker),
            system_dcl_a: Some(snap.1),
            system_ccl_a: Some(snap.2),
            local_dcl_a: None,
            local_ccl_a: None,
            limits_binding: false,
            local_ms: Some(lms),
            measured_dv_v: Some((local.v_bus_v - local.v_string_v).abs()),
            measured_i_a: Some(local.i_a),
            feedback: Some(local.feedback),
            grant: Some(grant.map(|(to, ticket, at_ms)| GrantOut {
                to,
                ticket,
                expires_us: self.nodes[k].real_us(at_ms + self.cfg.lease_ms as u64),
            })),
            request_ticket: Some(request.map(|(ticket, _)| ticket)),
            instance: self.nodes[k].instance,
            side: None,
            reports_open: out_phase == Phase::Isolated,
        };
        self.fill_truth();
        let plant = PlantSnapshot { v_bus_v: self.plant.v_bus_v, strings: &self.truth_buf };
        self.monitor.node_step(t, k, &report, &plant);
        let healthy = t >= self.agree_from_us && (!self.clean || self.result.cold_close_periods.is_some());
        self.monitor.plant_step(t, &plant, healthy);
        // Failure detection latency.
        let hb_us = self.cfg.heartbeat_ms as f64 * 1000.0;
        let mut detected = Vec::new();
        for (c, tc) in self.nodes[k].detect_pending.iter().copied() {
            if snap.0.live_set & (1u64 << (self.nodes[c].id - 1)) == 0 {
                detected.push((c, tc));
            }
        }
        for (c, tc) in detected {
            self.nodes[k].detect_pending.retain(|x| x.0 != c);
            self.result.detect_periods.push((t - tc) as f64 / hb_us);
        }
        // S5 / agreement latency: the first instant all live peers agree (monitor's view).
        if t >= self.agree_from_us && self.result.agree_periods.is_none() && self.monitor.agrees_now() {
            self.result.agree_periods = Some((t - self.agree_from_us) as f64 / hb_us);
        }
        // Cold start: every string closed.
        if self.clean
            && self.result.cold_close_periods.is_none()
            && self.plant.strings.iter().all(|s| s.main_closed())
        {
            self.result.cold_close_periods = Some(t as f64 / hb_us);
            // Agreement is measured from the last close (the last change of the closed set).
            self.agree_from_us = t;
            self.result.agree_periods = None;
        }
        // Act.
        self.plant.command(k, out_cmd, t);
        let frame_us = 1000; // ~4 classic frames at 500 kbit/s
        for m in msgs {
            self.result.messages += 1;
            self.result.message_bytes += m.len() as u64;
            self.result.max_message_len = self.result.max_message_len.max(m.len());
            if self.params.measure_bus {
                let b = (t / 1_000_000) as usize;
                let r = &mut self.result;
                if r.bus_bits_worst.len() <= b {
                    r.bus_bits_worst.resize(b + 1, 0);
                    r.bus_bits_exact.resize(b + 1, 0);
                    r.bus_bits_exact_24byte.resize(b + 1, 0);
                    r.bus_bits_exact_untagged.resize(b + 1, 0);
                    r.fd_us_worst.resize(b + 1, 0.0);
                }
                self.nodes[k].msg_counter += 1;
                r.bus_bits_worst[b] += mbms_consensus::busload::classic_message_bits(&m, true) as u64;
                r.bus_bits_exact[b] += mbms_consensus::busload::classic_message_bits(&m, false) as u64;
                r.bus_bits_exact_24byte[b] += mbms_consensus::busload::classic_message_bits_24byte(&m) as u64;
                r.bus_bits_exact_untagged[b] += mbms_consensus::busload::classic_message_bits_untagged(&m) as u64;
                r.fd_us_worst[b] += mbms_consensus::busload::fd_frame_us_worst(m.len() - 1, 500_000.0, 2_000_000.0);
            }
            let sent = match mbms_consensus::wire::Message::decode(&m).map(|x| x.kind()) {
                Ok(0) => Sent::Limits { from: k, t_us: t, state: self.plant.strings[k].state() },
                Ok(_) => Sent::Proposal { from: k, heard: self.monitor.heard_by(k, t, self.plant.strings[k].state()) },
                Err(_) => Sent::Other,
            };
            self.sent.push(sent);
            let idx = self.sent.len() - 1;
            if self.adversary || self.params.sabotage == Sabotage::NoAuth {
                let index = self.nodes[k].sent;
                self.nodes[k].sent += 1;
                self.genuine.insert(m.clone(), Genuine { sender: k, index, sent_idx: idx });
                if self.captured.len() < 4096 {
                    self.captured.push(m.clone());
                }
            }
            let dels = self.net.broadcast(&mut self.net_rng, t, k, n, frame_us);
            for (at, to) in dels {
                self.push(at, Ev::Deliver(to, m.clone(), idx, false));
            }
        }
        let next = self.nodes[k].next_local_ms + self.params.tick_ms;
        self.nodes[k].next_local_ms = next;
        let at = self.nodes[k].real_us(next).max(t + 1);
        self.push(at, Ev::Tick(k));
    }

    fn on_deliver(&mut self, t: u64, k: usize, data: &[u8], idx: usize, attack: bool) {
        let lms = self.nodes[k].local_ms(t);
        let Some(p) = self.nodes[k].peer.as_mut() else { return };
        let r = p.on_message(lms, data);
        if attack {
            self.result.attack_deliveries += 1;
            match &r {
                Ok(()) => self.result.attack_accepted += 1,
                Err(e) => *self.result.attack_dropped.entry(e.kind()).or_insert(0) += 1,
            }
        }
        if r.is_err() {
            return;
        }
        // S7: what a peer accepts was really sent by that member, and is newer than anything of
        // that sender this peer instance accepted before.
        if self.adversary || self.params.sabotage == Sabotage::NoAuth {
            let sender = data.first().map_or(0, |h| (h & 0x3F) as usize);
            let genuine = self.genuine.get(data).copied();
            let fresh = match genuine {
                Some(g) => {
                    let last = self.nodes[k].accepted[g.sender];
                    self.nodes[k].accepted[g.sender] = Some(g.index);
                    last.is_none_or(|l| g.index > l) && g.sender == sender
                }
                None => false,
            };
            self.monitor.message_accepted(t, k, sender, genuine.is_some(), fresh);
        }
        // What k now knows ("latest confirmed", for S4): the sender's state as the message
        // stated it, or the states the sender's proposal was built from (a replay: as then).
        match &self.sent[idx] {
            Sent::Limits { from, t_us, state } => {
                self.monitor.state_confirmed(k, *from, *t_us, *state);
                self.monitor.message_heard(k, *from, t, None);
            }
            Sent::Proposal { from, heard } => self.monitor.message_heard(k, *from, t, Some(heard.clone())),
            Sent::Other => {}
        }
    }

    /// The attacker: one injection, delivered to every running peer (it is on the bus).
    fn on_attack(&mut self, t: u64) {
        use mbms_consensus::wire::{Body, Coord, DetailBody, Flags, LimitsBody, Message};
        let n = self.nodes.len();
        let what = self.arng.below(8);
        let pick = |rng: &mut SplitMix64, v: &Vec<Vec<u8>>| -> Option<Vec<u8>> {
            (!v.is_empty()).then(|| v[rng.below(v.len() as u64) as usize].clone())
        };
        // The newest captured message of a random member: its boot and counter to forge on.
        let victim = self.arng.below(n as u64) as usize;
        let newest = self
            .captured
            .iter()
            .rev()
            .filter_map(|b| Message::decode(b).ok())
            .find(|m| m.sender as usize == victim + 1);
        let (inc, counter) = newest.as_ref().map_or((1, 0), |m| (m.incarnation, m.counter));
        let mut tag = [0u8; 4];
        tag.copy_from_slice(&self.arng.next_u64().to_le_bytes()[..4]);
        let base = Message {
            sender: victim as u16 + 1,
            incarnation: inc,
            counter: counter + 1 + self.arng.below(3) as u32,
            flags: Flags { phase: Phase::Open as u8, may_close: true, ..Default::default() },
            coord: Coord::default(),
            body: Body::Detail(DetailBody::default()),
            tag,
        };
        let bytes: Vec<u8> = match what {
            // a grant to whoever is requesting, from a member that gave none
            0 => {
                let req = (0..n).find_map(|j| self.nodes[j].peer.as_ref().and_then(|p| p.request()).map(|(tk, _)| (j, tk)));
                let (j, tk) = req.unwrap_or((0, 1));
                Message { coord: Coord { req_ticket: 0, grant_to: j as u16 + 1, grant_ticket: tk }, ..base }.encode().to_vec()
            }
            // a fake member announcing CLOSED with huge limits and a tiny resistance
            1 => Message {
                flags: Flags { phase: Phase::Closed as u8, main_closed: true, ..Default::default() },
                body: Body::Limits(LimitsBody { ocv_10mv: 40_000, r_100uohm: 1, dcl_da: 60_000, ccl_da: 60_000, dcl_peak_da: 60_000, ccl_peak_da: 60_000 }),
                ..base
            }
            .encode()
            .to_vec(),
            // a 0 A proposal
            2 => Message { body: Body::Detail(DetailBody { soc_permille: 500, ..Default::default() }), ..base }.encode().to_vec(),
            // a boot jump: locks the real node out if it were believed
            3 => Message { incarnation: u16::MAX, counter: 0, ..base }.encode().to_vec(),
            // unauthenticated (zero tag)
            4 => Message { tag: [0; 4], ..base }.encode().to_vec(),
            // a captured tag spliced onto a changed body
            5 => match pick(&mut self.arng, &self.captured) {
                Some(mut b) => {
                    let i = 9 + self.arng.below(12) as usize;
                    b[i] ^= 1 << self.arng.below(8);
                    b
                }
                None => return,
            },
            // replays of captured messages (any sender, live or crashed)
            _ => match pick(&mut self.arng, &self.captured) {
                Some(b) => b,
                None => return,
            },
        };
        self.trace(t, format!("attack {what} as member {}", bytes[0] as usize % 64 + 1));
        // a replay states what the original stated; a forgery nothing a monitor would credit
        let idx = match self.genuine.get(&bytes) {
            Some(g) => g.sent_idx,
            None => {
                self.sent.push(Sent::Other);
                self.sent.len() - 1
            }
        };
        for to in 0..n {
            if self.nodes[to].peer.is_some() {
                let at = t + 1 + self.arng.below(2000);
                self.push(at, Ev::Deliver(to, bytes.clone(), idx, true));
            }
        }
    }

    fn start_node(&mut self, t: u64, k: usize, seed: u64) {
        // Boot counters grow from one start to the next (the runtime persists them); a start
        // may skip some (a boot that crashed before it sent anything).
        self.nodes[k].boot += 1 + seed % 3;
        let mut p = self.new_peer(k, self.nodes[k].boot, seed);
        // The runtime restores the receive counters it persisted, so what this node had accepted
        // before the crash stays old to it (the monitor's `accepted` is kept accordingly).
        if self.params.sabotage != Sabotage::NoRxMemory {
            p.restore_receive_counters(&self.nodes[k].saved_rx);
        }
        self.nodes[k].peer = Some(p);
        self.nodes[k].instance += 1;
        self.nodes[k].snapshot = None;
        self.nodes[k].last_phase = Phase::Listening;
        self.nodes[k].last_cmd = Contactors::OPEN;
        self.monitor.node_restarted(k);
        let l = self.nodes[k].local_ms(t);
        self.nodes[k].next_local_ms = l;
        self.push(t, Ev::Tick(k));
    }
}

fn uniform(rng: &mut SplitMix64, a: f64, b: f64) -> f64 {
    a + (b - a) * rng.unit()
}

/// Run one seeded schedule.
pub fn run_schedule(seed: u64, params: &SimParams) -> ScheduleResult {
    let mut rng = SplitMix64::new(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0x5EED);
    let span = params.peers_max.saturating_sub(params.peers_min) as u64;
    let n = (params.peers_min + rng.below(span + 1) as usize).clamp(1, 64);
    let scenario_k = rng.below(4);
    let scenario_k = params.force_scenario.unwrap_or(scenario_k) % 4;
    let (scenario, clean) = match scenario_k {
        0 => ("clean", true),
        1 => ("can", false),
        2 => ("udp", false),
        _ => ("udp-partition", false),
    };
    let members: Vec<u16> = (1..=n as u16).collect();
    let cfg = PeerConfig { members: members.clone(), ..params.base.clone() };
    let dur_us = params.duration_ms * 1000;
    let heal_us = if clean { 0 } else { dur_us.saturating_sub(3000 * 1000).max(dur_us / 2) };
    let rho = cfg.max_drift_ppm as f64 * 1e-6;

    // Strings: most matched (within ±0.64 V), some 4.8 V higher.
    let mut strings = Vec::with_capacity(n);
    for _ in 0..n {
        let mut soc = 0.5 + uniform(&mut rng, -0.008, 0.008);
        if !clean && pct_chance(&mut rng, 0.2) {
            soc += 0.06;
        }
        let dcl = uniform(&mut rng, 100.0, 150.0);
        let ccl = uniform(&mut rng, 50.0, 100.0);
        strings.push(StringTruth {
            soc,
            r_ohm: uniform(&mut rng, 0.04, 0.06),
            dcl_a: dcl,
            ccl_a: ccl,
            dcl_peak_a: dcl * uniform(&mut rng, 1.5, 2.0),
            ccl_peak_a: ccl * uniform(&mut rng, 1.5, 2.0),
            command: Contactors::OPEN,
            command_at_us: 0,
            actual: Contactors::OPEN,
            i_a: 0.0,
        });
    }
    let nodes: Vec<Node> = (0..n)
        .map(|k| {
            // Rates at the drift bound half of the time, inside it otherwise.
            let r = if rng.chance(0.5) { if rng.chance(0.5) { rho } else { -rho } } else { uniform(&mut rng, -rho, rho) };
            Node {
                peer: None,
                id: members[k],
                rate: 1.0 + r,
                off_us: uniform(&mut rng, 0.0, 1e6).floor(),
                next_local_ms: 0,
                fault: false,
                last_cmd: Contactors::OPEN,
                last_phase: Phase::Listening,
                snapshot: None,
                detect_pending: Vec::new(),
                instance: 0,
                msg_counter: 0,
                request_at: None,
                boot: 0,
                sent: 0,
                accepted: vec![None; n],
                saved_rx: Vec::new(),
            }
        })
        .collect();

    // Network.
    let mut partitions = Vec::new();
    let kind = if scenario_k == 1 { NetKind::Can } else { NetKind::Udp };
    let (loss, dup, delay) = match scenario_k {
        0 => (0.0, 0.0, (200, 200)),
        1 => (uniform(&mut rng, 0.0, 0.2), uniform(&mut rng, 0.0, 0.05), (0, 0)),
        _ => (uniform(&mut rng, 0.0, 0.3), uniform(&mut rng, 0.0, 0.1), (200, 200 + rng.below(30_000))),
    };
    if !clean {
        let parts = if scenario_k == 3 { 1 + rng.below(3) } else { rng.below(2) };
        for _ in 0..parts {
            let start = 300_000 + rng.below(heal_us.saturating_sub(800_000).max(1));
            let end = (start + 300_000 + rng.below(1_500_000)).min(heal_us);
            let mut minority: Vec<usize> = Vec::new();
            let msize = 1 + rng.below((n / 2).max(1) as u64) as usize;
            while minority.len() < msize {
                let x = rng.below(n as u64) as usize;
                if !minority.contains(&x) {
                    minority.push(x);
                }
            }
            let way = if kind == NetKind::Can { 0 } else { rng.below(3) };
            let mut blocked = Vec::new();
            for a in 0..n {
                for b in 0..n {
                    if a == b || minority.contains(&a) == minority.contains(&b) {
                        continue;
                    }
                    let from_min = minority.contains(&a);
                    if way == 0 || (way == 1 && from_min) || (way == 2 && !from_min) {
                        blocked.push((a, b));
                    }
                }
            }
            partitions.push(Partition { start_us: start, end_us: end, blocked });
        }
    }
    let net = NetModel::new(kind, loss, dup, delay, partitions, heal_us);
    let load_demand = uniform(&mut rng, -0.5, 0.8);

    let mut w = World {
        params: params.clone(),
        cfg: cfg.clone(),
        net_rng: SplitMix64::new(rng.next_u64()),
        rng,
        nodes,
        plant: Plant::new(strings),
        net,
        queue: BinaryHeap::new(),
        qseq: 0,
        monitor: Monitor::new(MonitorConfig::from_peer(&cfg, n, delay.1)),
        truth_buf: Vec::with_capacity(n),
        heal_us,
        agree_from_us: heal_us,
        result: ScheduleResult { seed, peers: n, scenario, ..Default::default() },
        clean,
        load_demand,
        load_on_us: 800_000,
        load_t_us: 0,
        genuine: std::collections::HashMap::new(),
        captured: Vec::new(),
        adversary: false,
        arng: SplitMix64::new(seed ^ 0xA77A_C4E2_5EED_0007),
        sent: Vec::new(),
    };
    // The attacker (S7): about half of the faulty schedules, 10–60 injections before the heal.
    let adversary = params.adversary.unwrap_or(!clean && w.arng.chance(0.5)) || params.sabotage == Sabotage::NoAuth
        || params.sabotage == Sabotage::NoRxMemory;
    w.adversary = adversary;
    w.result.adversary = adversary;
    if adversary {
        let attacks = 10 + w.arng.below(51);
        let end = if clean { dur_us } else { heal_us };
        for _ in 0..attacks {
            let ta = 200_000 + w.arng.below(end.saturating_sub(200_000).max(1));
            w.push(ta, Ev::Attack);
        }
    }

    // Disturbances (all before the network heals).
    if !clean {
        let crashes = w.rng.below(3);
        for _ in 0..crashes {
            let k = w.rng.below(n as u64) as usize;
            let tc = 400_000 + w.rng.below(heal_us.saturating_sub(1_200_000).max(1));
            let tr = (tc + 200_000 + w.rng.below(1_300_000)).min(heal_us.saturating_sub(1));
            w.push(tc, Ev::Crash(k));
            w.push(tr.max(tc + 1), Ev::Restart(k));
            w.agree_from_us = w.agree_from_us.max(tr);
        }
        if w.rng.chance(0.4) {
            let k = w.rng.below(n as u64) as usize;
            let t1 = 500_000 + w.rng.below(heal_us.saturating_sub(1_500_000).max(1));
            let t2 = (t1 + 300_000 + w.rng.below(700_000)).min(heal_us.saturating_sub(1));
            w.push(t1, Ev::FaultOn(k));
            w.push(t2.max(t1 + 1), Ev::FaultOff(k));
        }
        if w.rng.chance(0.3) {
            let k = w.rng.below(n as u64) as usize;
            let t1 = 500_000 + w.rng.below(heal_us.saturating_sub(600_000).max(1));
            w.push(t1, Ev::Derate(k));
        }
    }
    // The agreement clock starts once the network is healthy and the last restart is done
    // (a restarted peer's listening time counts); the electrical inputs are static from
    // then on (no load).
    for k in 0..n {
        let inc = w.rng.next_u64();
        w.start_node(0, k, inc);
    }

    while let Some(Reverse((t, _, ev))) = w.queue.pop() {
        if t > dur_us {
            break;
        }
        match ev {
            Ev::Tick(k) => w.on_tick(t, k),
            Ev::Deliver(k, data, idx, attack) => w.on_deliver(t, k, &data, idx, attack),
            Ev::Attack => w.on_attack(t),
            Ev::Crash(k) => {
                if w.nodes[k].peer.is_some() {
                    w.trace(t, format!("crash peer {}", w.nodes[k].id));
                    w.plant.advance(t);
                    if let Some(p) = w.nodes[k].peer.as_ref() {
                        w.nodes[k].saved_rx = p.receive_counters();
                    }
                    w.nodes[k].peer = None;
                    w.nodes[k].snapshot = None;
                    w.nodes[k].last_phase = Phase::Open;
                    w.plant.drop_coils(k, t);
                    w.monitor.set_report(k, NodeReport::default());
                    // A crashed observer measures nothing.
                    w.nodes[k].detect_pending.clear();
                    for j in 0..n {
                        if j != k && w.nodes[j].peer.is_some() {
                            w.nodes[j].detect_pending.push((k, t));
                        }
                    }
                }
            }
            Ev::Restart(k) => {
                if w.nodes[k].peer.is_none() {
                    w.trace(t, format!("restart peer {}", w.nodes[k].id));
                    let inc = w.rng.next_u64();
                    w.start_node(t, k, inc);
                    for j in 0..n {
                        w.nodes[j].detect_pending.retain(|x| x.0 != k);
                    }
                }
            }
            Ev::FaultOn(k) => {
                w.trace(t, format!("fault on peer {}", w.nodes[k].id));
                w.nodes[k].fault = true;
            }
            Ev::FaultOff(k) => {
                w.trace(t, format!("fault off peer {}", w.nodes[k].id));
                w.nodes[k].fault = false;
            }
            Ev::Derate(k) => {
                w.trace(t, format!("derate peer {}", w.nodes[k].id));
                w.plant.advance(t);
                let s = &mut w.plant.strings[k];
                s.dcl_a *= 0.5;
                s.dcl_peak_a *= 0.5;
            }
        }
    }
    // S1–S6 as the monitor found them (S5: agreement within its bound once healthy).
    w.monitor.finish(dur_us);
    for v in w.monitor.violations().to_vec() {
        w.violation(v.t_us, format!("{}: {}", v.rule.name(), v.what));
        w.result.rules.push(v.rule);
    }
    if clean && w.result.cold_close_periods.is_none() {
        w.violation(dur_us, "liveness: not all (matching) strings closed from cold".to_string());
    }
    w.result
}

#[derive(Clone, Debug, Default)]
pub struct SimSummary {
    pub schedules: u64,
    pub violations: u64,
    pub failing: Vec<(u64, Vec<String>)>,
    pub agree_periods: Vec<f64>,
    /// The clean cold starts alone: agreement after the last close (a healthy network).
    pub agree_clean_periods: Vec<f64>,
    pub detect_periods: Vec<f64>,
    pub cold_close_periods: Vec<f64>,
    pub grant_periods: Vec<f64>,
    pub closes: u64,
    pub aborts: u64,
    pub messages: u64,
    pub message_bytes: u64,
    /// S7: schedules with the attacker, its deliveries, those accepted (late genuine
    /// messages) and those dropped by reason.
    pub adversarial: u64,
    pub attack_deliveries: u64,
    pub attack_accepted: u64,
    pub attack_dropped: std::collections::BTreeMap<&'static str, u64>,
}

/// The p-th percentile (0..=100) by nearest rank; NaN when empty.
pub fn percentile(v: &[f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let rank = ((p / 100.0) * s.len() as f64).ceil().max(1.0) as usize;
    s[rank.min(s.len()) - 1]
}

impl SimSummary {
    pub fn add(&mut self, r: ScheduleResult) {
        self.schedules += 1;
        if !r.violations.is_empty() {
            self.violations += r.violations.len() as u64;
            if self.failing.len() < 20 {
                self.failing.push((r.seed, r.violations.clone()));
            }
        }
        self.agree_periods.extend(r.agree_periods);
        if r.scenario == "clean" {
            self.agree_clean_periods.extend(r.agree_periods);
        }
        self.detect_periods.extend(r.detect_periods);
        self.cold_close_periods.extend(r.cold_close_periods);
        self.grant_periods.extend(r.grant_periods);
        self.adversarial += r.adversary as u64;
        self.attack_deliveries += r.attack_deliveries;
        self.attack_accepted += r.attack_accepted;
        for (k, v) in &r.attack_dropped {
            *self.attack_dropped.entry(k).or_insert(0) += v;
        }
        self.closes += r.closes;
        self.aborts += r.aborts;
        self.messages += r.messages;
        self.message_bytes += r.message_bytes;
    }
    pub fn merge(&mut self, o: SimSummary) {
        self.schedules += o.schedules;
        self.violations += o.violations;
        for f in o.failing {
            if self.failing.len() < 20 {
                self.failing.push(f);
            }
        }
        self.agree_periods.extend(o.agree_periods);
        self.agree_clean_periods.extend(o.agree_clean_periods);
        self.detect_periods.extend(o.detect_periods);
        self.cold_close_periods.extend(o.cold_close_periods);
        self.grant_periods.extend(o.grant_periods);
        self.closes += o.closes;
        self.aborts += o.aborts;
        self.messages += o.messages;
        self.message_bytes += o.message_bytes;
        self.adversarial += o.adversarial;
        self.attack_deliveries += o.attack_deliveries;
        self.attack_accepted += o.attack_accepted;
        for (k, v) in o.attack_dropped {
            *self.attack_dropped.entry(k).or_insert(0) += v;
        }
    }
}

/// Run seeds first_seed .. first_seed+count on `threads` threads (deterministic result:
/// each seed's schedule is independent of the others and of the thread it runs on).
pub fn run_many(first_seed: u64, count: u64, params: &SimParams, threads: usize) -> SimSummary {
    let threads = threads.max(1) as u64;
    let mut parts: Vec<SimSummary> = Vec::new();
    std::thread::scope(|sc| {
        let handles: Vec<_> = (0..threads)
            .map(|tix| {
                let params = params.clone();
                sc.spawn(move || {
                    let mut s = SimSummary::default();
                    let mut seed = first_seed + tix;
                    while seed < first_seed + count {
                        s.add(run_schedule(seed, &params));
                        seed += threads;
                    }
                    s
                })
            })
            .collect();
        for h in handles {
            parts.push(h.join().expect("simulator thread"));
        }
    });
    let mut total = SimSummary::default();
    for p in parts {
        total.merge(p);
    }
    total.failing.sort_by_key(|f| f.0);
    total
}

/// Bus load of the peer protocol measured on simulated traffic: `peers` strings, a clean
/// cold start (all close one at a time) then steady heartbeats, every message counted.
#[derive(Clone, Debug)]
pub struct BusLoadReport {
    pub peers: usize,
    pub heartbeat_ms: u32,
    pub bitrate: f64,
    /// Classic CAN, worst-case stuffing: mean over the run and the busiest second.
    pub classic_worst_mean: f64,
    pub classic_worst_peak: f64,
    /// Mean over the last 3 whole seconds (all strings closed: heartbeats only).
    pub classic_worst_steady: f64,
    /// Classic CAN, exact stuffing of the real frames.
    pub classic_exact_mean: f64,
    pub classic_exact_peak: f64,
    /// The same traffic in the previous 24-byte layout (frames 8 + 8 + 7), exact stuffing.
    pub classic_24byte_mean: f64,
    pub classic_24byte_peak: f64,
    /// The same traffic without tags (exact stuffing): the cost of authentication.
    pub classic_untagged_mean: f64,
    pub classic_untagged_peak: f64,
    /// CAN FD (500 kbit/s arbitration, 2 Mbit/s data), worst case.
    pub fd_worst_mean: f64,
    pub fd_worst_peak: f64,
    pub mean_message_len: f64,
    pub max_message_len: usize,
    pub messages_per_s: f64,
}

pub fn measure_bus_load(peers: usize, duration_ms: u64, seed: u64, bitrate: f64, base: &PeerConfig) -> BusLoadReport {
    let params = SimParams {
        peers_min: peers,
        peers_max: peers,
        duration_ms,
        base: base.clone(),
        force_scenario: Some(0),
        measure_bus: true,
        ..SimParams::default()
    };
    let r = run_schedule(seed, &params);
    let secs = r.bus_bits_worst.len().max(1) as f64;
    let full = (duration_ms / 1000).max(1) as usize;
    // Only whole seconds count for the peak.
    let peak = |v: &[u64]| v.iter().take(full).copied().max().unwrap_or(0) as f64 / bitrate;
    let mean = |v: &[u64]| v.iter().sum::<u64>() as f64 / secs / bitrate;
    BusLoadReport {
        peers,
        heartbeat_ms: base.heartbeat_ms,
        bitrate,
        classic_worst_mean: mean(&r.bus_bits_worst),
        classic_worst_peak: peak(&r.bus_bits_worst),
        classic_worst_steady: {
            let v: Vec<u64> = r.bus_bits_worst.iter().take(full).copied().collect();
            let tail = &v[v.len().saturating_sub(3)..];
            tail.iter().sum::<u64>() as f64 / tail.len().max(1) as f64 / bitrate
        },
        classic_exact_mean: mean(&r.bus_bits_exact),
        classic_exact_peak: peak(&r.bus_bits_exact),
        classic_24byte_mean: mean(&r.bus_bits_exact_24byte),
        classic_24byte_peak: peak(&r.bus_bits_exact_24byte),
        classic_untagged_mean: mean(&r.bus_bits_exact_untagged),
        classic_untagged_peak: peak(&r.bus_bits_exact_untagged),
        fd_worst_mean: r.fd_us_worst.iter().sum::<f64>() / secs * 1e-6,
        fd_worst_peak: r.fd_us_worst.iter().take(full).copied().fold(0.0, f64::max) * 1e-6,
        mean_message_len: r.message_bytes as f64 / r.messages.max(1) as f64,
        max_message_len: r.max_message_len,
        messages_per_s: r.messages as f64 / secs,
    }
}
