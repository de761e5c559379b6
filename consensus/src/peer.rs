//! The peer protocol state machine: membership and failure detection, close arbitration
//! with quorum grants under leases (S2), the physical close check (S3), local open (S1),
//! agreed N−1 limits (S4, S5), partitions (S6), restarts, duplicate ids, the speaker.
//!
//! Sans-IO: [`Peer::on_message`] takes received bytes, [`Peer::tick`] takes the time and the
//! local measurements and returns the contactor command and the messages to broadcast.
//!
//! Close arbitration (S2):
//! - A string that wants to close picks a new 4-bit ticket and broadcasts a request at
//!   once; it notes the request time t_req on its own clock.
//! - Every peer (the requester too) holds at most one grant (to, ticket, granted_at). With
//!   its slot free, no string known to be precharging/closing, and past its grant inhibit
//!   after a start, it grants the lowest-id pending request. It keeps the grant until the
//!   grantee shows a different ticket (release) or lease_ms passed on its own clock.
//! - The requester precharges only with grants from a quorum (counting its own slot),
//!   all heard after t_req, and must be closed before t_req + lease·(1−2ρ) on its clock;
//!   since every grant was given after t_req, each grant outlives that by the drift bound.
//! - A requester without a quorum after grant_wait_ms, or seeing a lower-id request,
//!   withdraws and backs off (half a period plus seeded jitter).
//! - After a start a peer grants nothing for lease·(1+2ρ)+one period: it may have granted
//!   before a crash and forgotten. It ends this early once every other member has been
//!   heard since the start neither requesting/closing nor granting to it (cold start).
//! - Tickets are not reused within that same guard time (nor, after a start, before the
//!   same early end), so a grant left for an old request never counts for a new one.
//!
//! Ordering: on a dead bus the largest group of strings whose OCVs lie within dv_close
//! (ties: the higher-voltage group, since a system typically starts by discharging) closes
//! first, lowest id first; on a live bus any string whose |V_bus − V_string| ≤ 0.8·dv_close
//! may close, lowest id first. Strings that match neither wait until the bus comes to them.

use crate::config::{PeerConfig, MAX_MEMBER_ID};
use crate::prng::SplitMix64;
use crate::sharing::{n1_limits, StringState};
use crate::wire::{
    amps_to_da_floor, amps_to_da_signed, ohm_to_100uohm, seq_newer, soc_to_permille,
    volts_to_10mv, Body, Coord, DetailBody, Flags, LimitsBody, Message, WireError, MAX_TICKET,
    SEQ_MOD,
};

/// Eligibility on a live bus uses a tighter window than the physical check, so that a
/// string that asks for a grant is likely to pass the check.
const LIVE_MATCH_MARGIN: f64 = 0.8;
/// A peer that detects another node using its own id stays passive this many periods.
const DUP_HOLD_PERIODS: u64 = 10;
/// Back-off after an aborted close, in heartbeat periods (plus jitter).
const ABORT_BACKOFF_PERIODS: u64 = 10;
/// Up to this many lost members are enumerated open/closed (2^8 cases); with more, the
/// state of the bus is too uncertain and the peer reports zero limits.
const MAX_GHOSTS: usize = 8;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Contactors {
    pub neg: bool,
    pub pos: bool,
    pub pre: bool,
}

impl Contactors {
    pub const OPEN: Contactors = Contactors { neg: false, pos: false, pre: false };
    pub const PRECHARGE: Contactors = Contactors { neg: true, pos: false, pre: true };
    pub const CLOSING: Contactors = Contactors { neg: true, pos: true, pre: true };
    pub const CLOSED: Contactors = Contactors { neg: true, pos: true, pre: false };
    pub fn main_closed(&self) -> bool {
        self.neg && self.pos
    }
}

#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Phase {
    Open = 0,
    Requesting = 1,
    Precharging = 2,
    Closing = 3,
    Closed = 4,
    /// Opened on a local fault (S1); rejoins when healthy.
    Isolated = 5,
    /// After a start: listening to learn the state before acting.
    Listening = 6,
    /// Backing off after a withdrawn request or an aborted close.
    Waiting = 7,
}

impl Phase {
    pub fn from_u8(v: u8) -> Phase {
        match v & 7 {
            0 => Phase::Open,
            1 => Phase::Requesting,
            2 => Phase::Precharging,
            3 => Phase::Closing,
            4 => Phase::Closed,
            5 => Phase::Isolated,
            6 => Phase::Listening,
            _ => Phase::Waiting,
        }
    }
    pub fn name(&self) -> &'static str {
        match self {
            Phase::Open => "open",
            Phase::Requesting => "requesting",
            Phase::Precharging => "precharging",
            Phase::Closing => "closing",
            Phase::Closed => "closed",
            Phase::Isolated => "isolated",
            Phase::Listening => "listening",
            Phase::Waiting => "waiting",
        }
    }
    /// Precharging or closing: the phases S2 allows one string at a time.
    pub fn is_closing(&self) -> bool {
        matches!(self, Phase::Precharging | Phase::Closing)
    }
}

/// This string's own measurements and estimates, given to every tick.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LocalState {
    pub ocv_v: f64,
    pub r_ohm: f64,
    pub soc: f64,
    pub dcl_a: f64,
    pub ccl_a: f64,
    pub dcl_peak_a: f64,
    pub ccl_peak_a: f64,
    /// Confirmed local fault: open now (S1).
    pub fault: bool,
    /// Healthy and wants to be connected.
    pub may_close: bool,
    pub v_string_v: f64,
    pub v_bus_v: f64,
    /// Measured string current, discharge positive.
    pub i_a: f64,
    /// Measured contactor aux feedback.
    pub feedback: Contactors,
    /// When the measurements above were taken (ms, this peer's clock); None = at the tick's
    /// own time (callers that sample at every tick). The S3 dwell runs in sample time, and a
    /// close is verified only on a sample taken after the close decision.
    pub meas_t_ms: Option<u64>,
}

impl Default for LocalState {
    fn default() -> Self {
        Self {
            ocv_v: 0.0,
            r_ohm: 0.05,
            soc: 0.5,
            dcl_a: 0.0,
            ccl_a: 0.0,
            dcl_peak_a: 0.0,
            ccl_peak_a: 0.0,
            fault: false,
            may_close: false,
            v_string_v: 0.0,
            v_bus_v: 0.0,
            i_a: 0.0,
            feedback: Contactors::OPEN,
            meas_t_ms: None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AbortReason {
    PrechargeTimeout,
    LeaseExpired,
    QuorumLost,
    /// may_close went false.
    Withdrawn,
    /// Main contactor feedback did not confirm in time.
    FeedbackTimeout,
    Fault,
    /// The sample taken after the close decision no longer showed a steady match (S3).
    VerifyFailed,
    /// No sample taken after the close decision arrived within verify_timeout_ms (S3).
    VerifyTimeout,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    PeerJoined { id: u16 },
    PeerLost { id: u16 },
    PeerRestarted { id: u16, incarnation: u16 },
    /// Two nodes use the same id (different incarnations at once).
    DuplicateId { id: u16, incarnations: (u16, u16) },
    QuorumGained,
    QuorumLost,
    RequestSent { ticket: u8 },
    RequestWithdrawn { ticket: u8 },
    Granted { to: u16, ticket: u8 },
    GrantReleased { to: u16, expired: bool },
    PrechargeStarted { grants: u32 },
    MainClosing,
    Closed,
    Aborted { reason: AbortReason },
    /// Opened because may_close went false or the contactor dropped.
    Opened,
    /// Opened on a local fault (S1).
    Isolated,
    Rejoining,
    SpeakerChanged { speaker: Option<u16> },
}

/// Why a received message was dropped (it is also counted).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RxError {
    Wire(WireError),
    ForeignSystem(u32),
    UnknownSender(u16),
    /// Our own message echoed back (e.g. a multicast loopback).
    OwnEcho,
    Duplicate,
    Stale,
    /// Another node uses this id (with a different incarnation).
    DuplicateId(u16),
}

impl std::fmt::Display for RxError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RxError::Wire(e) => write!(f, "{e}"),
            RxError::ForeignSystem(s) => write!(f, "message of system {s}"),
            RxError::UnknownSender(s) => write!(f, "sender {s} is not a configured member"),
            RxError::OwnEcho => write!(f, "own message echoed"),
            RxError::Duplicate => write!(f, "duplicate message"),
            RxError::Stale => write!(f, "stale message"),
            RxError::DuplicateId(id) => write!(f, "duplicate member id {id}"),
        }
    }
}

impl RxError {
    /// Stable short name (used by the Python binding).
    pub fn kind(&self) -> &'static str {
        match self {
            RxError::Wire(_) => "malformed",
            RxError::ForeignSystem(_) => "foreign_system",
            RxError::UnknownSender(_) => "unknown_sender",
            RxError::OwnEcho => "own_echo",
            RxError::Duplicate => "duplicate",
            RxError::Stale => "stale",
            RxError::DuplicateId(_) => "duplicate_id",
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub rx_ok: u64,
    pub rx_malformed: u64,
    pub rx_foreign_system: u64,
    pub rx_unknown_sender: u64,
    pub rx_own_echo: u64,
    pub rx_duplicate: u64,
    pub rx_stale: u64,
    pub duplicate_id: u64,
    pub tx: u64,
    pub peers_lost: u64,
    pub requests: u64,
    pub grants: u64,
    pub closes: u64,
    pub aborts: u64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct PeerOutput {
    /// What this string's contactors should be.
    pub command: Contactors,
    pub phase: Phase,
    /// Agreed system limits (A, ≥ 0).
    pub system_dcl_a: f64,
    pub system_ccl_a: f64,
    /// Bit (id−1) per member confirmed closed.
    pub closed_set: u64,
    pub live_set: u64,
    pub quorum: bool,
    pub speaker: Option<u16>,
    pub dcdc_setpoint_a: Option<f64>,
    /// Encoded messages to broadcast now.
    pub messages: Vec<Vec<u8>>,
    pub events: Vec<Event>,
    /// The dwell is over and the main contactor waits for a sample taken from now on: the
    /// runtime should take one at once and tick again (two-phase close, S3).
    pub sample_request: bool,
    /// Some live string (this one included) is precharging or closing: the load should be
    /// held steady (an inverter honouring it keeps the bus from stepping under the join).
    pub join_in_progress: bool,
}

impl Default for PeerOutput {
    fn default() -> Self {
        Self {
            command: Contactors::OPEN,
            phase: Phase::Listening,
            system_dcl_a: 0.0,
            system_ccl_a: 0.0,
            closed_set: 0,
            live_set: 0,
            quorum: false,
            speaker: None,
            dcdc_setpoint_a: None,
            messages: Vec::new(),
            events: Vec::new(),
            sample_request: false,
            join_in_progress: false,
        }
    }
}

/// What a peer knows of another member.
#[derive(Clone, Debug, Default)]
struct Remote {
    heard: bool,
    inc: u16,
    last_seq: u8,
    last_heard: u64,
    prev_inc: Option<u16>,
    prev_last_seq: u8,
    prev_heard: u64,
    dup_until: u64,
    flags: Flags,
    coord: Coord,
    limits: Option<LimitsBody>,
    detail: Option<DetailBody>,
    alive: bool,
    /// Heard since our start, neither requesting/closing nor granting to us: anything it
    /// does from then on concerns our new incarnation, not a forgotten one.
    clean_since_start: bool,
    /// When the last Detail (with its proposal) arrived.
    detail_at: u64,
}

impl Remote {
    fn phase(&self) -> Phase {
        Phase::from_u8(self.flags.phase)
    }
}

/// The S3 dwell, in sample time: since when the match has held and how far the bus moved.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Dwell {
    since_meas_ms: u64,
    v_bus_min: f64,
    v_bus_max: f64,
    /// Signed V_bus − V_string of the first sample of the dwell.
    dv_first_v: f64,
}

impl Dwell {
    fn start(meas_t_ms: u64, v_bus_v: f64, dv_signed_v: f64) -> Self {
        Dwell { since_meas_ms: meas_t_ms, v_bus_min: v_bus_v, v_bus_max: v_bus_v, dv_first_v: dv_signed_v }
    }
    fn add(&mut self, v_bus_v: f64) {
        self.v_bus_min = self.v_bus_min.min(v_bus_v);
        self.v_bus_max = self.v_bus_max.max(v_bus_v);
    }
    fn spread_v(&self) -> f64 {
        self.v_bus_max - self.v_bus_min
    }
}

/// Grant slot: at most one grant at a time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Grant {
    to: u16,
    ticket: u8,
    at_ms: u64,
}

pub struct Peer {
    cfg: PeerConfig,
    inc: u16,
    member_mask: u64,
    remotes: Vec<Remote>, // index = id (0 unused)
    started_at: Option<u64>,
    phase: Phase,
    command: Contactors,
    seq: u8,
    next_hb: u64,
    next_kind: u8,
    ticket: u8,
    last_ticket: u8,
    /// When each ticket (1..=15) was last used: a ticket is not reused within the grant
    /// guard, so a grant left over for an old request can never count for a new one.
    ticket_used_at: [Option<u64>; 16],
    t_req: u64,
    t_pre: u64,
    t_close: u64,
    t_open_fb: Option<u64>,
    /// S3 dwell of the current precharge (None: no match yet or it broke).
    dwell: Option<Dwell>,
    /// The dwell was complete at this tick (own clock): the close waits for a sample taken
    /// at or after it (two-phase close).
    verify_since: Option<u64>,
    /// Time of the newest sample seen (a repeated sample does not advance the dwell).
    last_meas_t: Option<u64>,
    /// The bus was live when this precharge started (a closed string or a voltage above
    /// bus_live_v held it): its movement is then not ours.
    pre_live_bus: bool,
    backoff_until: u64,
    grant: Option<Grant>,
    dup_self_until: u64,
    /// Every other member was heard clean since our start (see `Remote::clean_since_start`):
    /// no grant we may have given before a restart can be in use, and no grant to our old
    /// incarnation can be alive, so the start inhibit and the ticket guard end early.
    start_clear: bool,
    last_sent_limits: Option<LimitsBody>,
    last_sent_fc: Option<(Flags, Coord)>,
    last_tx_ms: Option<u64>,
    prop_da: (u32, u32),
    prop_changed_at: u64,
    rise_since: Option<u64>,
    /// The closed set of the previous limits update (a string leaving it restarts the
    /// rise gate).
    prev_closed_set: u64,
    reported_da: (u32, u32),
    rng: SplitMix64,
    had_quorum: bool,
    pending: Vec<Event>,
    out: PeerOutput,
    counters: Counters,
}

fn bit(id: u16) -> u64 {
    1u64 << (id - 1)
}

fn state_of(l: &LimitsBody) -> StringState {
    StringState {
        ocv_v: l.ocv_10mv as f64 / 100.0,
        r_ohm: l.r_100uohm as f64 / 1e4,
        dcl_a: l.dcl_da as f64 / 10.0,
        ccl_a: l.ccl_da as f64 / 10.0,
        dcl_peak_a: l.dcl_peak_da as f64 / 10.0,
        ccl_peak_a: l.ccl_peak_da as f64 / 10.0,
    }
}

fn limits_of(local: &LocalState) -> LimitsBody {
    LimitsBody {
        ocv_10mv: volts_to_10mv(local.ocv_v),
        r_100uohm: ohm_to_100uohm(local.r_ohm),
        dcl_da: amps_to_da_floor(local.dcl_a),
        ccl_da: amps_to_da_floor(local.ccl_a),
        dcl_peak_da: amps_to_da_floor(local.dcl_peak_a),
        ccl_peak_da: amps_to_da_floor(local.ccl_peak_a),
    }
}

/// Fold the 64-bit incarnation into the 16 bits on the wire.
pub fn wire_incarnation(inc: u64) -> u16 {
    (inc ^ (inc >> 16) ^ (inc >> 32) ^ (inc >> 48)) as u16
}

impl Peer {
    pub fn new(cfg: PeerConfig, incarnation: u64) -> Result<Peer, crate::ConsensusConfigError> {
        cfg.validate()?;
        let member_mask = cfg.members.iter().fold(0u64, |m, &id| m | bit(id));
        let rng = SplitMix64::new(cfg.seed ^ incarnation.rotate_left(17) ^ cfg.node_id as u64);
        Ok(Peer {
            inc: wire_incarnation(incarnation),
            member_mask,
            remotes: vec![Remote::default(); MAX_MEMBER_ID as usize + 1],
            started_at: None,
            phase: Phase::Listening,
            command: Contactors::OPEN,
            seq: 0,
            next_hb: 0,
            next_kind: 0,
            ticket: 0,
            last_ticket: (incarnation % MAX_TICKET as u64) as u8,
            ticket_used_at: [None; 16],
            t_req: 0,
            t_pre: 0,
            t_close: 0,
            t_open_fb: None,
            dwell: None,
            verify_since: None,
            last_meas_t: None,
            pre_live_bus: false,
            backoff_until: 0,
            grant: None,
            dup_self_until: 0,
            start_clear: false,
            last_sent_limits: None,
            last_sent_fc: None,
            last_tx_ms: None,
            prop_da: (0, 0),
            prop_changed_at: 0,
            rise_since: None,
            prev_closed_set: 0,
            reported_da: (0, 0),
            rng,
            had_quorum: false,
            pending: Vec::new(),
            out: PeerOutput::default(),
            counters: Counters::default(),
            cfg,
        })
    }

    pub fn config(&self) -> &PeerConfig {
        &self.cfg
    }
    pub fn counters(&self) -> &Counters {
        &self.counters
    }
    pub fn output(&self) -> &PeerOutput {
        &self.out
    }
    pub fn phase(&self) -> Phase {
        self.phase
    }
    pub fn incarnation_wire(&self) -> u16 {
        self.inc
    }
    /// The current grant (grantee id, ticket, granted at local ms), for checkers and tools.
    pub fn grant(&self) -> Option<(u16, u8, u64)> {
        self.grant.map(|g| (g.to, g.ticket, g.at_ms))
    }
    /// The current request (ticket, request time local ms), if any.
    pub fn request(&self) -> Option<(u8, u64)> {
        (self.ticket != 0).then_some((self.ticket, self.t_req))
    }
    /// The grants this peer currently counts for its own request (bit per granter id).
    pub fn grants_held(&self) -> u64 {
        self.grant_mask()
    }

    // ------------------------------------------------------------------ receive

    pub fn on_message(&mut self, now_ms: u64, data: &[u8]) -> Result<(), RxError> {
        let r = Message::decode(data).map_err(RxError::Wire).and_then(|m| self.receive(now_ms, &m));
        self.count(&r);
        r
    }

    /// The same as [`Peer::on_message`] for a message already decoded (a simulator delivering
    /// one broadcast to many receivers decodes it once).
    pub fn on_decoded(&mut self, now_ms: u64, m: &Message) -> Result<(), RxError> {
        let r = self.receive(now_ms, m);
        self.count(&r);
        r
    }

    fn count(&mut self, r: &Result<(), RxError>) {
        match r {
            Ok(()) => self.counters.rx_ok += 1,
            Err(RxError::Wire(_)) => self.counters.rx_malformed += 1,
            Err(RxError::ForeignSystem(_)) => self.counters.rx_foreign_system += 1,
            Err(RxError::UnknownSender(_)) => self.counters.rx_unknown_sender += 1,
            Err(RxError::OwnEcho) => self.counters.rx_own_echo += 1,
            Err(RxError::Duplicate) => self.counters.rx_duplicate += 1,
            Err(RxError::Stale) => self.counters.rx_stale += 1,
            Err(RxError::DuplicateId(_)) => self.counters.duplicate_id += 1,
        }
    }

    fn receive(&mut self, now: u64, m: &Message) -> Result<(), RxError> {
        if m.system_id != self.cfg.system_id {
            return Err(RxError::ForeignSystem(m.system_id));
        }
        if self.member_mask & bit(m.sender) == 0 {
            return Err(RxError::UnknownSender(m.sender));
        }
        let hold = DUP_HOLD_PERIODS * self.cfg.heartbeat_ms as u64;
        if m.sender == self.cfg.node_id {
            if m.incarnation == self.inc {
                return Err(RxError::OwnEcho);
            }
            self.dup_self_until = now + hold;
            self.pending.push(Event::DuplicateId {
                id: m.sender,
                incarnations: (self.inc, m.incarnation),
            });
            return Err(RxError::DuplicateId(m.sender));
        }
        let fail = self.cfg.fail_timeout_ms as u64;
        let r = &mut self.remotes[m.sender as usize];
        if !r.heard {
            r.heard = true;
            r.inc = m.incarnation;
        } else if m.incarnation != r.inc {
            if r.prev_inc == Some(m.incarnation)
                && now.saturating_sub(r.prev_heard) <= 4 * fail
            {
                if !seq_newer(m.seq, r.prev_last_seq) {
                    return Err(RxError::Stale);
                }
                // The old incarnation speaks again after a new one appeared: two nodes.
                r.dup_until = now + hold;
                r.prev_last_seq = m.seq;
                r.prev_heard = now;
                self.pending.push(Event::DuplicateId {
                    id: m.sender,
                    incarnations: (r.inc, m.incarnation),
                });
                return Err(RxError::DuplicateId(m.sender));
            }
            // A restart: forget what the old incarnation said.
            r.prev_inc = Some(r.inc);
            r.prev_last_seq = r.last_seq;
            r.prev_heard = r.last_heard;
            r.inc = m.incarnation;
            r.limits = None;
            r.detail = None;
            r.coord = Coord::default();
            self.pending.push(Event::PeerRestarted { id: m.sender, incarnation: m.incarnation });
        } else if now.saturating_sub(r.last_heard) <= fail {
            if m.seq == r.last_seq {
                return Err(RxError::Duplicate);
            }
            if !seq_newer(m.seq, r.last_seq) {
                return Err(RxError::Stale);
            }
        }
        r.last_seq = m.seq % SEQ_MOD;
        r.last_heard = now;
        r.flags = m.flags;
        r.coord = m.coord;
        let ph = Phase::from_u8(m.flags.phase);
        if !(ph.is_closing() || ph == Phase::Requesting) && m.coord.grant_to != self.cfg.node_id {
            r.clean_since_start = true;
        }
        match m.body {
            Body::Limits(l) => r.limits = Some(l),
            Body::Detail(d) => {
                r.detail = Some(d);
                r.detail_at = now;
            }
        }
        Ok(())
    }

    // ------------------------------------------------------------------ tick

    pub fn tick(&mut self, now_ms: u64, local: &LocalState) -> &PeerOutput {
        let now = now_ms;
        self.out.messages.clear();
        self.out.events.clear();
        self.out.events.append(&mut self.pending);
        self.out.sample_request = false;
        let started = *self.started_at.get_or_insert_with(|| {
            // A restart with the main contactors still closed adopts them (opening under
            // load is not safer); otherwise listen first.
            // We do not know which tickets we used before a restart: treat all as just used.
            self.ticket_used_at = [Some(now); 16];
            if local.feedback.main_closed() && !local.fault {
                self.phase = Phase::Closed;
                self.command = Contactors::CLOSED;
            }
            self.next_hb = now;
            now
        });

        self.update_membership(now);
        if !self.start_clear {
            let me = self.cfg.node_id;
            if self.cfg.members.iter().all(|&id| id == me || self.remotes[id as usize].clean_since_start) {
                self.start_clear = true;
                self.ticket_used_at = [None; 16];
            }
        }

        // S1: a confirmed local fault opens in this very tick, whatever else is going on.
        let listened = now.saturating_sub(started) >= self.cfg.listen_periods as u64 * self.cfg.heartbeat_ms as u64;
        if local.fault && self.phase == Phase::Listening && !listened {
            // Still learning the state after a start: open, and stay Listening (a listening
            // peer reports no limits and is never the speaker).
            self.command = Contactors::OPEN;
        } else if local.fault {
            if self.phase != Phase::Isolated {
                if self.phase.is_closing() || self.phase == Phase::Requesting {
                    self.counters.aborts += 1;
                    self.out.events.push(Event::Aborted { reason: AbortReason::Fault });
                }
                self.ticket = 0;
                self.dwell = None;
                self.verify_since = None;
                self.phase = Phase::Isolated;
                self.out.events.push(Event::Isolated);
            }
            self.command = Contactors::OPEN;
        } else {
            self.step_phase(now, started, local);
        }
        self.update_grant(now, started);
        self.update_limits(now, local);
        self.update_speaker();
        self.emit(now, local);

        self.out.command = self.command;
        self.out.phase = self.phase;
        self.out.join_in_progress = self.phase.is_closing() || self.someone_else_closing();
        if let Some(t) = local.meas_t_ms {
            self.last_meas_t = Some(self.last_meas_t.map_or(t, |l| l.max(t)));
        }
        &self.out
    }

    fn live_set(&self) -> u64 {
        let mut s = bit(self.cfg.node_id);
        for &id in &self.cfg.members {
            if id != self.cfg.node_id && self.remotes[id as usize].alive {
                s |= bit(id);
            }
        }
        s
    }

    fn update_membership(&mut self, now: u64) {
        let fail = self.cfg.fail_timeout_ms as u64;
        for &id in &self.cfg.members {
            if id == self.cfg.node_id {
                continue;
            }
            let r = &mut self.remotes[id as usize];
            let alive = r.heard && now.saturating_sub(r.last_heard) <= fail;
            if alive != r.alive {
                r.alive = alive;
                if alive {
                    self.out.events.push(Event::PeerJoined { id });
                } else {
                    self.counters.peers_lost += 1;
                    self.out.events.push(Event::PeerLost { id });
                }
            }
        }
        let live = self.live_set();
        let quorum = live.count_ones() as usize >= self.cfg.quorum();
        if quorum != self.had_quorum {
            self.had_quorum = quorum;
            self.out.events.push(if quorum { Event::QuorumGained } else { Event::QuorumLost });
        }
        self.out.live_set = live;
        self.out.quorum = quorum;
    }

    fn alive_remotes(&self) -> impl Iterator<Item = (u16, &Remote)> + '_ {
        self.cfg
            .members
            .iter()
            .copied()
            .filter(move |&id| id != self.cfg.node_id)
            .map(move |id| (id, &self.remotes[id as usize]))
            .filter(|(_, r)| r.alive)
    }

    fn someone_else_closing(&self) -> bool {
        self.alive_remotes().any(|(_, r)| r.phase().is_closing())
    }

    /// Members whose grant for our current request we hold (bit per id).
    fn grant_mask(&self) -> u64 {
        if self.ticket == 0 {
            return 0;
        }
        let me = self.cfg.node_id;
        let mut m = 0u64;
        if let Some(g) = self.grant {
            if g.to == me && g.ticket == self.ticket {
                m |= bit(me);
            }
        }
        for (id, r) in self.alive_remotes() {
            if r.coord.grant_to == me
                && r.coord.grant_ticket == self.ticket
                && r.last_heard >= self.t_req
                && r.dup_until <= r.last_heard
            {
                m |= bit(id);
            }
        }
        m
    }

    fn backoff(&mut self, now: u64, periods: u64) {
        let hb = self.cfg.heartbeat_ms as u64;
        let jitter = self.rng.below(hb);
        self.backoff_until = now + periods * hb + hb / 2 + jitter;
        self.phase = Phase::Waiting;
    }

    fn abort(&mut self, now: u64, reason: AbortReason) {
        self.command = Contactors::OPEN;
        self.ticket = 0;
        self.dwell = None;
        self.verify_since = None;
        self.counters.aborts += 1;
        self.out.events.push(Event::Aborted { reason });
        self.backoff(now, ABORT_BACKOFF_PERIODS);
    }

    fn withdraw(&mut self, now: u64) {
        self.out.events.push(Event::RequestWithdrawn { ticket: self.ticket });
        self.ticket = 0;
        self.backoff(now, 0);
    }

    /// May this string ask to close now (ordering policy)?
    fn eligible(&self, local: &LocalState) -> bool {
        let me = self.cfg.node_id;
        let dv = self.cfg.dv_close_v;
        // Another string is already on its way: wait.
        for (id, r) in self.alive_remotes() {
            let p = r.phase();
            if p.is_closing() || (p == Phase::Requesting && id < me) {
                return false;
            }
        }
        let closed_known = self.out.closed_set != 0;
        if closed_known || local.v_bus_v > self.cfg.bus_live_v {
            // Live bus: match V_bus; the lowest-id matching string goes first.
            let margin = LIVE_MATCH_MARGIN * dv;
            if (local.v_bus_v - local.v_string_v).abs() > margin {
                return false;
            }
            !self.alive_remotes().any(|(id, r)| {
                id < me
                    && r.phase() == Phase::Open
                    && r.flags.may_close
                    && !r.flags.fault
                    && r.dup_until <= r.last_heard // a duplicated id is never granted: do not wait for it
                    && r.detail.is_some_and(|d| {
                        (d.v_bus_10mv as f64 - d.v_string_10mv as f64).abs() / 100.0 <= margin
                    })
            })
        } else {
            // Dead bus: the largest OCV group within dv closes first (ties: higher voltage),
            // lowest id of that group first.
            let my_ocv = self.last_sent_limits.unwrap_or_else(|| limits_of(local)).ocv_10mv;
            let mut cands: Vec<(u32, u16)> = vec![(my_ocv, me)];
            for (id, r) in self.alive_remotes() {
                if r.phase() == Phase::Open && r.flags.may_close && !r.flags.fault && r.dup_until <= r.last_heard {
                    if let Some(l) = r.limits {
                        cands.push((l.ocv_10mv, id));
                    }
                }
            }
            cands.sort_unstable();
            let width = (dv * 100.0).round() as u32;
            let mut best: (usize, u32, usize) = (0, 0, 0); // (count, low ocv, start index)
            let mut j = 0usize;
            for i in 0..cands.len() {
                while cands[i].0 - cands[j].0 > width {
                    j += 1;
                }
                let count = i - j + 1;
                if count > best.0 || (count == best.0 && cands[j].0 >= best.1) {
                    best = (count, cands[j].0, j);
                }
            }
            let (count, _, start) = best;
            let group = &cands[start..start + count];
            let lowest = group.iter().map(|c| c.1).min();
            lowest == Some(me)
        }
    }

    fn step_phase(&mut self, now: u64, started: u64, local: &LocalState) {
        let hb = self.cfg.heartbeat_ms as u64;
        let quorum = self.out.quorum;
        match self.phase {
            Phase::Listening => {
                self.command = Contactors::OPEN;
                if now.saturating_sub(started) >= self.cfg.listen_periods as u64 * hb {
                    self.phase = Phase::Open;
                }
            }
            Phase::Isolated => {
                self.command = Contactors::OPEN;
                self.out.events.push(Event::Rejoining);
                self.backoff(now, 1);
            }
            Phase::Waiting => {
                self.command = Contactors::OPEN;
                if now >= self.backoff_until {
                    self.phase = Phase::Open;
                }
            }
            Phase::Open => {
                self.command = Contactors::OPEN;
                let guard = self.cfg.grant_inhibit_ms();
                let free_ticket = (1..=MAX_TICKET)
                    .map(|k| (self.last_ticket + k - 1) % MAX_TICKET + 1)
                    .find(|&t| self.ticket_used_at[t as usize].is_none_or(|u| now.saturating_sub(u) >= guard));
                if let Some(t) = free_ticket.filter(|_| {
                    local.may_close
                        && quorum
                        && now >= self.dup_self_until
                        && now >= self.backoff_until
                        && self.eligible(local)
                }) {
                    self.last_ticket = t;
                    self.ticket_used_at[t as usize] = Some(now);
                    self.ticket = t;
                    self.t_req = now;
                    self.phase = Phase::Requesting;
                    self.counters.requests += 1;
                    self.out.events.push(Event::RequestSent { ticket: self.ticket });
                }
            }
            Phase::Requesting => {
                self.command = Contactors::OPEN;
                let grants = self.grant_mask().count_ones();
                let lease = self.cfg.requester_lease_ms();
                let need = self.cfg.precharge_timeout_ms as u64 + self.cfg.close_confirm_ms as u64;
                let me = self.cfg.node_id;
                let competitor = self
                    .alive_remotes()
                    .any(|(id, r)| (r.phase() == Phase::Requesting && id < me) || r.phase().is_closing());
                if !local.may_close || !quorum || now < self.dup_self_until {
                    self.withdraw(now);
                } else if grants as usize >= self.cfg.quorum()
                    && now.saturating_sub(self.t_req) + need <= lease
                {
                    self.phase = Phase::Precharging;
                    self.pre_live_bus = self.out.closed_set != 0 || local.v_bus_v > self.cfg.bus_live_v;
                    self.t_pre = now;
                    self.dwell = None;
                    self.verify_since = None;
                    self.command = Contactors::PRECHARGE;
                    self.out.events.push(Event::PrechargeStarted { grants });
                } else if competitor
                    || now.saturating_sub(self.t_req) >= self.cfg.grant_wait_ms as u64
                {
                    self.withdraw(now);
                }
            }
            Phase::Precharging => {
                self.command = Contactors::PRECHARGE;
                let lease = self.cfg.requester_lease_ms();
                if !local.may_close {
                    self.abort(now, AbortReason::Withdrawn);
                } else if !quorum {
                    self.abort(now, AbortReason::QuorumLost);
                } else if now.saturating_sub(self.t_req) + self.cfg.close_confirm_ms as u64 >= lease {
                    self.abort(now, AbortReason::LeaseExpired);
                } else {
                    self.precharge_step(now, local);
                }
            }
            Phase::Closing => {
                self.command = Contactors::CLOSING;
                if local.feedback.main_closed() {
                    self.phase = Phase::Closed;
                    self.command = Contactors::CLOSED;
                    self.ticket = 0;
                    self.t_open_fb = None;
                    self.counters.closes += 1;
                    self.out.events.push(Event::Closed);
                } else if now.saturating_sub(self.t_close) >= self.cfg.close_confirm_ms as u64 {
                    self.abort(now, AbortReason::FeedbackTimeout);
                } else if now.saturating_sub(self.t_req) >= self.cfg.requester_lease_ms() {
                    self.abort(now, AbortReason::LeaseExpired);
                }
            }
            Phase::Closed => {
                self.command = Contactors::CLOSED;
                if !local.may_close {
                    self.command = Contactors::OPEN;
                    self.phase = Phase::Open;
                    self.out.events.push(Event::Opened);
                } else if !local.feedback.main_closed() {
                    // The contactor dropped by itself: after the confirm time, we are open.
                    let since = *self.t_open_fb.get_or_insert(now);
                    if now.saturating_sub(since) >= self.cfg.close_confirm_ms as u64 {
                        self.command = Contactors::OPEN;
                        self.t_open_fb = None;
                        self.out.events.push(Event::Opened);
                        self.backoff(now, ABORT_BACKOFF_PERIODS);
                    }
                } else {
                    self.t_open_fb = None;
                }
            }
        }
    }

    /// S3, the physical match, in two phases (issue 11: a node deciding on a sample one
    /// control period old let a load step close the main contactor onto a 6 V mismatch):
    /// 1. dwell: every new sample must show |V_bus − V_string| ≤ dv_close, a settled
    ///    precharge current and a steady bus (spread of V_bus ≤ max_bus_slew · dwell), for
    ///    dwell_ms of sample time; a repeated (stale) sample does not advance it;
    /// 2. verify: the close is commanded only on a sample taken at or after the decision,
    ///    within verify_timeout_ms, that still matches, keeps the bus steady, and predicts
    ///    |ΔV| ≤ dv_close when the contact really closes (the bus's rate over the dwell
    ///    times the sample's age plus main_close_time_ms). Otherwise abort and open.
    fn precharge_step(&mut self, now: u64, local: &LocalState) {
        let cfg = &self.cfg;
        let meas_t = local.meas_t_ms.unwrap_or(now);
        let new_sample = self.last_meas_t.is_none_or(|t| meas_t > t);
        let dv_signed = local.v_bus_v - local.v_string_v;
        let dv = dv_signed.abs();
        // Live bus (a closed string holds it): any movement of V_bus is the load or another
        // string, not this precharge, so the bus must be steady. Dead bus: the bus is the
        // capacitance this precharge charges; it moves towards V_string by design.
        let live = self.pre_live_bus;
        let matched = dv <= cfg.dv_close_v && local.i_a.abs() <= cfg.precharge_settle_a && local.v_bus_v.is_finite();
        let steady_v = cfg.max_bus_slew_v_per_s * cfg.dwell_ms.max(1) as f64 / 1000.0;
        if let Some(t_dec) = self.verify_since {
            // A sample taken at or after the decision and young enough to act on now.
            if new_sample && meas_t >= t_dec && now.saturating_sub(meas_t) <= cfg.verify_timeout_ms as u64 {
                let ok = matched
                    && self.dwell.is_some_and(|mut d| {
                        d.add(local.v_bus_v);
                        // |ΔV| when the contact lands: sample age + operate time ahead, at
                        // the rate the bus moved over the dwell (live bus: any direction;
                        // dead bus: the trend of ΔV, no credit for converging).
                        let span_s = (meas_t.saturating_sub(d.since_meas_ms)).max(1) as f64 / 1000.0;
                        let ahead_s = (now.saturating_sub(meas_t) + cfg.main_close_time_ms as u64) as f64 / 1000.0;
                        let predicted = if live {
                            dv + d.spread_v() / span_s * ahead_s
                        } else {
                            let rate = (dv_signed - d.dv_first_v) / span_s;
                            dv.max((dv_signed + rate * ahead_s).abs())
                        };
                        (!live || d.spread_v() <= steady_v) && predicted <= cfg.dv_close_v
                    });
                if ok {
                    self.phase = Phase::Closing;
                    self.t_close = now;
                    self.command = Contactors::CLOSING;
                    self.dwell = None;
                    self.verify_since = None;
                    self.out.events.push(Event::MainClosing);
                } else {
                    self.abort(now, AbortReason::VerifyFailed);
                }
            } else if now.saturating_sub(t_dec) >= cfg.verify_timeout_ms as u64 {
                self.abort(now, AbortReason::VerifyTimeout);
            } else {
                self.out.sample_request = true;
            }
            return;
        }
        if new_sample {
            if matched {
                let d = self.dwell.get_or_insert(Dwell::start(meas_t, local.v_bus_v, dv_signed));
                d.add(local.v_bus_v);
                if live && d.spread_v() > steady_v {
                    // The bus moved (a load change): the dwell starts again from this sample.
                    *d = Dwell::start(meas_t, local.v_bus_v, dv_signed);
                }
                if meas_t.saturating_sub(d.since_meas_ms) >= cfg.dwell_ms as u64 {
                    self.verify_since = Some(now);
                    self.out.sample_request = true;
                }
            } else {
                self.dwell = None;
            }
        }
        if self.verify_since.is_none() && now.saturating_sub(self.t_pre) >= self.cfg.precharge_timeout_ms as u64 {
            self.abort(now, AbortReason::PrechargeTimeout);
        }
    }

    fn update_grant(&mut self, now: u64, started: u64) {
        let me = self.cfg.node_id;
        if let Some(g) = self.grant {
            let expired = now.saturating_sub(g.at_ms) >= self.cfg.lease_ms as u64;
            let released = if g.to == me {
                self.ticket != g.ticket
            } else {
                let r = &self.remotes[g.to as usize];
                r.last_heard > g.at_ms && r.coord.req_ticket != g.ticket
            };
            if expired || released {
                self.grant = None;
                self.out.events.push(Event::GrantReleased { to: g.to, expired: expired && !released });
            }
        }
        if self.grant.is_some()
            || (!self.start_clear && now.saturating_sub(started) < self.cfg.grant_inhibit_ms())
            || now < self.dup_self_until
            || self.phase.is_closing()
            || self.someone_else_closing()
        {
            return;
        }
        let mut best: Option<(u16, u8)> = None;
        if self.phase == Phase::Requesting && self.ticket != 0 {
            best = Some((me, self.ticket));
        }
        for (id, r) in self.alive_remotes() {
            if r.coord.req_ticket != 0
                && r.phase() == Phase::Requesting
                && !r.flags.fault
                && r.dup_until <= now
                && best.is_none_or(|b| id < b.0)
            {
                best = Some((id, r.coord.req_ticket));
            }
        }
        if let Some((to, ticket)) = best {
            self.grant = Some(Grant { to, ticket, at_ms: now });
            self.counters.grants += 1;
            self.out.events.push(Event::Granted { to, ticket });
        }
    }

    fn update_limits(&mut self, now: u64, local: &LocalState) {
        let me = self.cfg.node_id;
        let own = self.last_sent_limits.unwrap_or_else(|| limits_of(local));
        let mut closed_set = 0u64;
        let mut closed: Vec<StringState> = Vec::new();
        let mut closing: Option<StringState> = None;
        // Members that are not live but whose state we know: they may be open (a fault, a
        // crash drops the coils) or closed behind a network partition (S6: the bus does
        // not split), and they may have closed since we last heard them (with a quorum on
        // the other side). Leaving a closed string out does not err low under the N−1
        // rule, so every open/closed combination of them is evaluated with their last
        // known state and the lowest limit is taken.
        let mut ghosts: Vec<StringState> = Vec::new();
        // A live member that says it is closed but whose state we do not have yet.
        let mut unknown_closed = false;
        // Ascending id order on every peer, so identical inputs give identical floats.
        let mut ids: Vec<u16> = self.cfg.members.clone();
        ids.sort_unstable();
        for id in ids {
            let (phase, main_closed, limits, alive) = if id == me {
                (self.phase, self.command.main_closed(), Some(own), true)
            } else {
                let r = &self.remotes[id as usize];
                (r.phase(), r.flags.main_closed, r.limits, r.alive)
            };
            let Some(l) = limits else {
                unknown_closed |= alive && (phase == Phase::Closed || phase.is_closing());
                continue;
            };
            if !alive {
                ghosts.push(state_of(&l));
                continue;
            }
            if phase == Phase::Closed && main_closed {
                closed_set |= bit(id);
                closed.push(state_of(&l));
            } else if phase.is_closing() && closing.is_none() {
                closing = Some(state_of(&l));
            }
        }
        let (mut dcl, mut ccl) = (f64::INFINITY, f64::INFINITY);
        if self.phase == Phase::Listening || unknown_closed || ghosts.len() > MAX_GHOSTS {
            // Not enough known to bound the current of every string: report nothing.
            dcl = 0.0;
            ccl = 0.0;
        } else {
            let mut set: Vec<StringState> = Vec::with_capacity(closed.len() + ghosts.len() + 1);
            for mask in 0u32..(1u32 << ghosts.len()) {
                for with_closing in [false, true] {
                    if with_closing && closing.is_none() {
                        continue;
                    }
                    set.clear();
                    set.extend_from_slice(&closed);
                    set.extend(ghosts.iter().enumerate().filter(|(i, _)| mask >> i & 1 == 1).map(|(_, g)| *g));
                    if with_closing {
                        set.extend(closing);
                    }
                    let (d, c) = n1_limits(&set);
                    dcl = dcl.min(d);
                    ccl = ccl.min(c);
                }
            }
        }
        let prop = (amps_to_da_floor(dcl), amps_to_da_floor(ccl));
        // Since when our own proposal has been above what we report (a pending rise);
        // small wiggles of the inputs do not restart it.
        //
        // A string leaving the closed set restarts the gate: its contactor opens only after
        // the command (actuation delay), and until then it still carries its share, so the
        // rise it causes must wait the half period too. Without this, a rise pending from
        // before (e.g. the CCL waiting for fresh proposals) let the DCL jump in the very
        // tick our own derated string was isolated on a fault, still physically closed
        // (seeds 39746, 42929: reported 144.3 A against the 104.6 A N−1 limit of the
        // strings then closed).
        let left = self.prev_closed_set & !closed_set != 0;
        self.prev_closed_set = closed_set;
        if prop.0 > self.reported_da.0 || prop.1 > self.reported_da.1 {
            if left {
                self.rise_since = Some(now);
            } else {
                self.rise_since.get_or_insert(now);
            }
        } else {
            self.rise_since = None;
        }
        self.prop_changed_at = self.rise_since.unwrap_or(0);
        self.prop_da = prop;
        // Agreement: the target is the minimum of our own proposal and the latest proposals
        // of all live peers that have finished listening. A drop shows at once. A rise shows
        // only when every such peer has sent a proposal since our own last changed (so it
        // has seen the change too) and half a period has passed (a string that just left
        // the closed set has had time to open).
        let (mut d_da, mut c_da) = prop;
        let mut fresh = true;
        for (_, r) in self.alive_remotes() {
            if r.phase() == Phase::Listening {
                continue;
            }
            if let Some(d) = r.detail {
                d_da = d_da.min(d.prop_dcl_da);
                c_da = c_da.min(d.prop_ccl_da);
            }
            fresh &= r.detail.is_some() && r.detail_at >= self.prop_changed_at;
        }
        let may_rise = fresh && now.saturating_sub(self.prop_changed_at) >= self.cfg.heartbeat_ms as u64 / 2;
        let step = |cur: u32, target: u32| if target < cur || may_rise { target } else { cur };
        self.reported_da = (step(self.reported_da.0, d_da), step(self.reported_da.1, c_da));
        let (d_da, c_da) = self.reported_da;
        self.out.closed_set = closed_set;
        self.out.system_dcl_a = d_da as f64 / 10.0;
        self.out.system_ccl_a = c_da as f64 / 10.0;

        self.out.dcdc_setpoint_a = None;
        if self.cfg.dcdc && self.phase == Phase::Closed {
            self.out.dcdc_setpoint_a = Some(self.dcdc_setpoint(local, closed_set));
        }
    }

    /// Per-string set-point for strings with DC/DC converters: the total current of the
    /// closed strings, shared in proportion to weights 1 ± gain·(SOC_i − mean SOC) (more
    /// discharge from fuller strings, more charge into emptier ones), clamped to this
    /// string's own limits.
    fn dcdc_setpoint(&self, local: &LocalState, closed_set: u64) -> f64 {
        let me = self.cfg.node_id;
        let mut socs: Vec<(u16, f64, f64)> = vec![(me, local.soc, local.i_a)];
        for (id, r) in self.alive_remotes() {
            if closed_set & bit(id) != 0 {
                if let Some(d) = r.detail {
                    socs.push((id, d.soc_permille as f64 / 1000.0, d.i_da as f64 / 10.0));
                }
            }
        }
        let n = socs.len() as f64;
        let total: f64 = socs.iter().map(|s| s.2).sum();
        let mean = socs.iter().map(|s| s.1).sum::<f64>() / n;
        let sign = if total >= 0.0 { 1.0 } else { -1.0 };
        let w = |soc: f64| (1.0 + sign * self.cfg.dcdc_soc_gain * (soc - mean)).max(0.0);
        let wsum: f64 = socs.iter().map(|s| w(s.1)).sum();
        let share = if wsum > 0.0 { total * w(local.soc) / wsum } else { total / n };
        share.clamp(-local.ccl_a.max(0.0), local.dcl_a.max(0.0))
    }

    fn update_speaker(&mut self) {
        // The lowest live id that has finished listening (a peer that just started does
        // not know the limits yet), on the side with a quorum.
        let speaker = if self.out.quorum {
            let me = self.cfg.node_id;
            let mut ids: Vec<u16> = self
                .alive_remotes()
                .filter(|(_, r)| r.phase() != Phase::Listening)
                .map(|(id, _)| id)
                .collect();
            if self.phase != Phase::Listening {
                ids.push(me);
            }
            ids.into_iter().min()
        } else {
            None
        };
        if speaker != self.out.speaker {
            self.out.speaker = speaker;
            self.out.events.push(Event::SpeakerChanged { speaker });
        }
    }

    fn flags(&self, now: u64, local: &LocalState) -> Flags {
        Flags {
            phase: self.phase as u8,
            fault: local.fault,
            main_closed: self.phase == Phase::Closed && self.command.main_closed(),
            pre_closed: self.command.pre,
            // A node whose id is duplicated will not request (dup_self_until): it must not say it
            // may close either, or the others wait for it to go first (the lowest-id matching
            // string closes first) and the whole battery stays open.
            may_close: local.may_close && now >= self.dup_self_until,
        }
    }

    fn coord(&self) -> Coord {
        let (grant_to, grant_ticket) = self.grant.map_or((0, 0), |g| (g.to, g.ticket));
        Coord { req_ticket: self.ticket, grant_to, grant_ticket }
    }

    fn emit(&mut self, now: u64, local: &LocalState) {
        let hb = self.cfg.heartbeat_ms as u64;
        let fc = (self.flags(now, local), self.coord());
        let fresh = limits_of(local);
        let dropped = self.last_sent_limits.is_some_and(|l| {
            fresh.dcl_da < l.dcl_da
                || fresh.ccl_da < l.ccl_da
                || fresh.dcl_peak_da < l.dcl_peak_da
                || fresh.ccl_peak_da < l.ccl_peak_da
        });
        // One message per heartbeat period; a change of phase, request or grant (or a drop
        // of our own limits) is sent at once instead, at most every quarter period, and
        // then counts as the heartbeat (both kinds carry phase, request and grant). This
        // keeps the bus load near one message per peer per period even while strings close.
        // Changes that others wait for: our phase and flags, a new request, a new grant.
        // Clearing a request or a grant rides on the next heartbeat.
        let event = dropped
            || match self.last_sent_fc {
                None => true,
                Some((f, c)) => {
                    f != fc.0
                        || (fc.1.req_ticket != 0 && fc.1.req_ticket != c.req_ticket)
                        || (fc.1.grant_to != 0
                            && (fc.1.grant_to, fc.1.grant_ticket) != (c.grant_to, c.grant_ticket))
                }
            };
        let gap_ok = self.last_tx_ms.is_none_or(|t| now.saturating_sub(t) >= hb / 4);
        let kind = if now >= self.next_hb || (event && gap_ok) {
            self.next_hb = now + hb;
            let k = if dropped { 0 } else { self.next_kind };
            self.next_kind = k ^ 1;
            Some(k)
        } else {
            None
        };
        let Some(kind) = kind else { return };
        let body = if kind == 0 {
            self.last_sent_limits = Some(fresh);
            Body::Limits(fresh)
        } else {
            Body::Detail(DetailBody {
                prop_dcl_da: self.prop_da.0,
                prop_ccl_da: self.prop_da.1,
                soc_permille: soc_to_permille(local.soc),
                v_bus_10mv: volts_to_10mv(local.v_bus_v),
                v_string_10mv: volts_to_10mv(local.v_string_v),
                i_da: amps_to_da_signed(local.i_a),
            })
        };
        let m = Message {
            system_id: self.cfg.system_id,
            sender: self.cfg.node_id,
            seq: self.seq,
            incarnation: self.inc,
            flags: fc.0,
            coord: fc.1,
            body,
            tag: None,
        };
        self.seq = (self.seq + 1) % SEQ_MOD;
        self.last_tx_ms = Some(now);
        self.last_sent_fc = Some(fc);
        self.counters.tx += 1;
        self.out.messages.push(m.encode());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local(v: f64) -> LocalState {
        LocalState {
            ocv_v: v,
            r_ohm: 0.05,
            dcl_a: 100.0,
            ccl_a: 50.0,
            dcl_peak_a: 200.0,
            ccl_peak_a: 100.0,
            may_close: true,
            v_string_v: v,
            ..Default::default()
        }
    }

    fn peer(id: u16, inc: u64) -> Peer {
        Peer::new(PeerConfig { node_id: id, members: vec![1, 2, 3], ..Default::default() }, inc).unwrap()
    }

    #[test]
    fn a_fault_opens_in_the_same_tick_even_without_any_message() {
        let mut p = peer(1, 1);
        // Restarted with the contactors closed: it adopts them.
        let mut l = local(400.0);
        l.feedback = Contactors::CLOSED;
        assert_eq!(p.tick(0, &l).command, Contactors::CLOSED);
        l.fault = true;
        let out = p.tick(10, &l);
        assert_eq!(out.command, Contactors::OPEN);
        assert_eq!(out.phase, Phase::Isolated);
        assert!(out.events.contains(&Event::Isolated));
    }

    #[test]
    fn heartbeats_alternate_kinds_and_fit_the_size_bound() {
        let mut p = peer(2, 7);
        let mut kinds = Vec::new();
        for t in (0..1000).step_by(10) {
            for m in &p.tick(t, &local(400.0)).messages {
                assert!(m.len() <= crate::wire::MAX_MESSAGE_LEN);
                kinds.push(Message::decode(m).unwrap().kind());
            }
        }
        // ~one message per 100 ms period (plus the phase change Listening → Open).
        assert!((10..=12).contains(&kinds.len()), "{}", kinds.len());
        assert!(kinds.contains(&0) && kinds.contains(&1));
    }

    #[test]
    fn duplicates_stale_and_own_echo_are_dropped_and_counted() {
        let mut a = peer(1, 1);
        let mut b = peer(2, 2);
        let m0 = b.tick(0, &local(400.0)).messages[0].clone();
        let m1 = b.tick(100, &local(400.0)).messages[0].clone();
        assert_eq!(a.on_message(0, &m0), Ok(()));
        assert_eq!(a.on_message(1, &m1), Ok(()));
        assert_eq!(a.on_message(2, &m1), Err(RxError::Duplicate));
        assert_eq!(a.on_message(3, &m0), Err(RxError::Stale));
        let own = a.tick(0, &local(400.0)).messages[0].clone();
        assert_eq!(a.on_message(4, &own), Err(RxError::OwnEcho));
        assert!(matches!(a.on_message(5, &[0xC1, 0x00]), Err(RxError::Wire(_))));
        let c = a.counters();
        assert_eq!((c.rx_ok, c.rx_duplicate, c.rx_stale, c.rx_own_echo, c.rx_malformed), (2, 1, 1, 1, 1));
    }

    #[test]
    fn another_node_with_my_id_is_reported() {
        let mut a = peer(1, 1);
        let mut twin = peer(1, 99);
        let m = twin.tick(0, &local(400.0)).messages[0].clone();
        assert_eq!(a.on_message(0, &m), Err(RxError::DuplicateId(1)));
        let out = a.tick(0, &local(400.0));
        assert!(out.events.iter().any(|e| matches!(e, Event::DuplicateId { id: 1, .. })));
    }

    // ---- S3 two-phase close (issue 11) ----

    /// A lone member (quorum 1) on a live bus at 400 V, string at `v_string`: ticks every
    /// 100 ms with samples one period old (the runtime's latency) until it precharges.
    fn precharging(v_string: f64) -> (Peer, u64) {
        let mut p = Peer::new(PeerConfig { node_id: 1, members: vec![1], ..Default::default() }, 1).unwrap();
        let mut t = 0;
        loop {
            let mut l = local(v_string);
            l.v_bus_v = 400.0;
            l.meas_t_ms = Some(t.max(100) - 100);
            let out = p.tick(t, &l);
            if out.phase == Phase::Precharging {
                return (p, t);
            }
            assert!(t < 5_000, "never precharged");
            t += 100;
        }
    }

    fn sample(v_bus: f64, v_string: f64, meas_t_ms: u64) -> LocalState {
        let mut l = local(v_string);
        l.v_bus_v = v_bus;
        l.feedback = Contactors::PRECHARGE;
        l.meas_t_ms = Some(meas_t_ms);
        l
    }

    /// Tick every 100 ms with one-period-old samples at a steady match until the dwell is
    /// over; returns the tick time of the close decision.
    fn dwell_done(p: &mut Peer, mut t: u64) -> u64 {
        for _ in 0..20 {
            t += 100;
            let out = p.tick(t, &sample(400.0, 399.0, t - 100));
            assert_eq!(out.command, Contactors::PRECHARGE, "no main close on a sample older than the decision");
            if out.sample_request {
                return t;
            }
        }
        panic!("dwell never completed");
    }

    #[test]
    fn the_main_contactor_closes_only_on_a_sample_taken_after_the_decision() {
        let (mut p, t0) = precharging(399.0);
        let t = dwell_done(&mut p, t0);
        // the same old sample again: still waiting, still asking
        let out = p.tick(t + 1, &sample(400.0, 399.0, t - 100));
        assert!(out.sample_request && out.command == Contactors::PRECHARGE);
        // a sample taken after the decision, still matched and steady: close now
        let out = p.tick(t + 3, &sample(400.0, 399.0, t + 2));
        assert_eq!(out.command, Contactors::CLOSING);
        assert!(out.events.contains(&Event::MainClosing) && out.join_in_progress);
    }

    #[test]
    fn a_load_step_after_the_dwell_aborts_instead_of_closing() {
        let (mut p, t0) = precharging(399.0);
        let t = dwell_done(&mut p, t0);
        // the load stepped after the last dwell sample: the bus is 6 V down
        let out = p.tick(t + 3, &sample(393.6, 399.0, t + 2));
        assert_eq!(out.command, Contactors::OPEN);
        assert!(out.events.contains(&Event::Aborted { reason: AbortReason::VerifyFailed }));
        assert_eq!(out.phase, Phase::Waiting);
    }

    #[test]
    fn a_bus_moving_within_the_window_is_refused_before_it_leaves_it() {
        // 1.5 V of movement inside the 2 V window: |ΔV| stays "matched" at every sample, but a
        // bus that moves this fast will not be matched when the contact lands.
        let (mut p, t0) = precharging(399.0);
        let t = dwell_done(&mut p, t0);
        let out = p.tick(t + 3, &sample(400.0 - 1.5, 399.0, t + 2));
        assert!(out.events.contains(&Event::Aborted { reason: AbortReason::VerifyFailed }));
        // and during the dwell, a moving bus restarts it: no decision while it moves
        let (mut p, mut t) = precharging(399.0);
        for k in 0..7 {
            // (7 periods: within the default 800 ms precharge timeout)
            t += 100;
            let v_bus = if k % 2 == 0 { 400.0 } else { 399.2 }; // 0.8 V steps every 100 ms
            let out = p.tick(t, &sample(v_bus, 399.0, t - 100));
            assert!(!out.sample_request && out.command == Contactors::PRECHARGE, "step {k}");
        }
    }

    #[test]
    fn no_fresh_sample_before_the_deadline_aborts() {
        let (mut p, t0) = precharging(399.0);
        let t = dwell_done(&mut p, t0);
        let deadline = PeerConfig::default().verify_timeout_ms as u64;
        let mut aborted = false;
        for dt in (10..=deadline + 10).step_by(10) {
            // a frozen sensor link: the same sample over and over
            let out = p.tick(t + dt, &sample(400.0, 399.0, t - 100));
            assert_ne!(out.command, Contactors::CLOSING);
            if out.events.contains(&Event::Aborted { reason: AbortReason::VerifyTimeout }) {
                assert!(dt >= deadline && out.command == Contactors::OPEN);
                aborted = true;
                break;
            }
        }
        assert!(aborted);
    }

    #[test]
    fn a_repeated_sample_does_not_advance_the_dwell() {
        // a frozen plant: the node keeps ticking, the sample never changes
        let (mut p, mut t) = precharging(399.0);
        let frozen_at = t;
        for _ in 0..7 {
            t += 100;
            let out = p.tick(t, &sample(400.0, 399.0, frozen_at));
            assert!(!out.sample_request && out.command == Contactors::PRECHARGE);
        }
    }

    #[test]
    fn a_duplicated_node_does_not_say_it_may_close() {
        // Otherwise a higher id waits for it to go first (lowest matching id closes first) and
        // never closes: the whole battery stays open for as long as the duplicate lives.
        let mut a = peer(1, 1);
        let mut twin = peer(1, 99);
        let m = twin.tick(0, &local(400.0)).messages[0].clone();
        assert_eq!(a.on_message(0, &m), Err(RxError::DuplicateId(1)));
        let may_close = |p: &mut Peer, t: u64| {
            let out = p.tick(t, &local(400.0));
            out.messages.iter().map(|m| Message::decode(m).unwrap().flags.may_close).collect::<Vec<_>>()
        };
        let held: Vec<bool> = (1..=5).flat_map(|k| may_close(&mut a, k * 100)).collect();
        assert!(!held.is_empty() && held.iter().all(|&x| !x), "{held:?}");
        // once the twin is quiet for the hold time, it may close again
        let after: Vec<bool> = (20..=25).flat_map(|k| may_close(&mut a, k * 100)).collect();
        assert!(!after.is_empty() && after.iter().all(|&x| x), "{after:?}");
    }

    #[test]
    fn without_quorum_nothing_is_requested() {
        // Alone of three: listens, then waits forever without requesting.
        let mut p = peer(3, 5);
        for t in (0..5000).step_by(10) {
            let out = p.tick(t, &local(400.0));
            assert!(!out.quorum);
            assert_eq!(out.command, Contactors::OPEN);
            assert_ne!(out.phase, Phase::Requesting);
        }
        assert_eq!(p.counters().requests, 0);
    }
}
