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

//!
//! The peer is composed of sub-states, each a struct in its own module that owns its state,
//! in the manner of quinn-proto's connection: [`membership`] (who is alive, quorum, restarts,
//! duplicate ids), [`arbitration`] (phase machine, requests, grants, the S3 close),
//! [`agreement`] (N−1 proposal, reported limits, speaker) and [`emission`] (what is sent
//! when). [`Peer::tick`] only orchestrates them.

use crate::auth::{Auth, AuthError};
use crate::config::{PeerConfig, MAX_MEMBER_ID};
use crate::prng::SplitMix64;
use crate::wire::{Message, WireError, MAX_TICKET};

mod agreement;
mod arbitration;
mod emission;
mod membership;
pub use membership::ReceiveCounter;

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

/// Outputs cross to Python and to logs as `(neg, pos, pre)`: one form in every mode (issue 9).
impl serde::Serialize for Contactors {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        (self.neg, self.pos, self.pre).serialize(s)
    }
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

/// A phase crosses as its name (`Phase::name`), the same in every output.
impl serde::Serialize for Phase {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
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

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
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

/// Serialized (one schema for every binding and log) as `{"kind": "peer_joined", "id": 3, ...}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
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
    Granted {
        #[serde(rename = "id")]
        to: u16,
        ticket: u8,
    },
    GrantReleased {
        #[serde(rename = "id")]
        to: u16,
        expired: bool,
    },
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
    /// The tag is zero: the sender runs without authentication (S7: dropped).
    Unauthenticated,
    /// The tag does not verify: forged, corrupted, or another system's (S7: dropped).
    Forged,
    UnknownSender(u16),
    /// Our own message echoed back (e.g. a multicast loopback).
    OwnEcho,
    Duplicate,
    /// An older message counter of the sender's current boot (reordered, or replayed).
    Stale,
    /// A message of an earlier boot of the sender (a replay of a past run).
    OldBoot,
    /// Another node uses this id (with a different incarnation).
    DuplicateId(u16),
}

impl std::fmt::Display for RxError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RxError::Wire(e) => write!(f, "{e}"),
            RxError::Unauthenticated => write!(f, "unauthenticated message (zero tag)"),
            RxError::Forged => write!(f, "message tag does not verify (forged)"),
            RxError::OldBoot => write!(f, "message of an earlier boot of its sender (replay)"),
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
            RxError::Unauthenticated => "unauthenticated",
            RxError::Forged => "forged",
            RxError::OldBoot => "old_boot",
            RxError::UnknownSender(_) => "unknown_sender",
            RxError::OwnEcho => "own_echo",
            RxError::Duplicate => "duplicate",
            RxError::Stale => "stale",
            RxError::DuplicateId(_) => "duplicate_id",
        }
    }
}

/// The one counter set every binding reports (serialized field by field).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Counters {
    pub rx_ok: u64,
    pub rx_malformed: u64,
    /// S7: zero tag (sender without authentication), tag that does not verify, earlier boot.
    pub rx_unauthenticated: u64,
    pub rx_forged: u64,
    pub rx_old_boot: u64,
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

/// Serialized as the one schema of a peer's output (bindings, logs): member sets as id lists,
/// messages as bytes.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct PeerOutput {
    /// What this string's contactors should be.
    pub command: Contactors,
    pub phase: Phase,
    /// Agreed system limits (A, ≥ 0).
    pub system_dcl_a: f64,
    pub system_ccl_a: f64,
    /// Bit (id−1) per member confirmed closed.
    #[serde(serialize_with = "crate::member_set::serialize_ids")]
    pub closed_set: u64,
    #[serde(serialize_with = "crate::member_set::serialize_ids")]
    pub live_set: u64,
    pub quorum: bool,
    pub speaker: Option<u16>,
    pub dcdc_setpoint_a: Option<f64>,
    /// Encoded messages to broadcast now.
    #[serde(serialize_with = "crate::member_set::serialize_messages")]
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







pub struct Peer {
    cfg: PeerConfig,
    auth: Auth,
    membership: membership::Membership,
    arb: arbitration::Arbitration,
    agreement: agreement::Agreement,
    emission: emission::Emission,
    /// events noticed while receiving, reported with the next tick's output
    pending: Vec<Event>,
    out: PeerOutput,
    counters: Counters,
}

fn rx_auth(e: AuthError) -> RxError {
    match e {
        AuthError::Wire(w) => RxError::Wire(w),
        AuthError::Unauthenticated => RxError::Unauthenticated,
        AuthError::Forged => RxError::Forged,
    }
}

fn bit(id: u16) -> u64 {
    1u64 << (id - 1)
}



/// The boot counter on the wire: the low 16 bits of the incarnation. Receivers accept a new
/// boot only if it is higher than the last one they authenticated, so an incarnation must grow
/// from one start to the next (the node runtime persists it; simulators count up).
pub fn wire_incarnation(inc: u64) -> u16 {
    inc as u16
}

impl Peer {
    /// A peer of `cfg`'s system in its boot `incarnation`, authenticating with `auth` (whose
    /// system id must be the config's).
    pub fn new(cfg: PeerConfig, incarnation: u64, auth: Auth) -> Result<Peer, crate::ConsensusConfigError> {
        cfg.validate()?;
        if auth.system_id() != cfg.system_id {
            return Err(crate::ConsensusConfigError {
                field: "system_id".into(),
                message: format!("the keys are for system {}, the config is system {}", auth.system_id(), cfg.system_id),
            });
        }
        let member_mask = cfg.members.iter().fold(0u64, |m, &id| m | bit(id));
        let rng = SplitMix64::new(cfg.seed ^ incarnation.rotate_left(17) ^ cfg.node_id as u64);
        Ok(Peer {
            membership: membership::Membership {
                inc: wire_incarnation(incarnation),
                member_mask,
                remotes: vec![membership::Remote::default(); MAX_MEMBER_ID as usize + 1],
                started_at: None,
                had_quorum: false,
                dup_self_until: 0,
                start_clear: false,
                own_other: None,
            },
            arb: arbitration::Arbitration {
                phase: Phase::Listening,
                command: Contactors::OPEN,
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
                rng,
            },
            agreement: agreement::Agreement::default(),
            emission: emission::Emission::default(),
            pending: Vec::new(),
            out: PeerOutput::default(),
            counters: Counters::default(),
            auth,
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
        self.arb.phase
    }
    pub fn incarnation_wire(&self) -> u16 {
        self.membership.inc
    }
    /// The current grant (grantee id, ticket, granted at local ms), for checkers and tools.
    pub fn grant(&self) -> Option<(u16, u8, u64)> {
        self.arb.grant.map(|g| (g.to, g.ticket, g.at_ms))
    }
    /// The current request (ticket, request time local ms), if any.
    pub fn request(&self) -> Option<(u8, u64)> {
        (self.arb.ticket != 0).then_some((self.arb.ticket, self.arb.t_req))
    }
    /// The grants this peer currently counts for its own request (bit per granter id).
    pub fn grants_held(&self) -> u64 {
        self.grant_mask()
    }

    // ------------------------------------------------------------------ receive

    pub fn on_message(&mut self, now_ms: u64, data: &[u8]) -> Result<(), RxError> {
        // S7: nothing reaches the state before its tag is verified.
        let r = self.auth.open(data).map_err(rx_auth).and_then(|m| self.receive(now_ms, &m));
        self.count(&r);
        r
    }

    /// The same as [`Peer::on_message`] for a message already decoded (a simulator delivering
    /// one broadcast to many receivers decodes it once).
    pub fn on_decoded(&mut self, now_ms: u64, m: &Message) -> Result<(), RxError> {
        let r = self.auth.verify(m).map_err(rx_auth).and_then(|()| self.receive(now_ms, m));
        self.count(&r);
        r
    }

    fn count(&mut self, r: &Result<(), RxError>) {
        match r {
            Ok(()) => self.counters.rx_ok += 1,
            Err(RxError::Wire(_)) => self.counters.rx_malformed += 1,
            Err(RxError::Unauthenticated) => self.counters.rx_unauthenticated += 1,
            Err(RxError::Forged) => self.counters.rx_forged += 1,
            Err(RxError::OldBoot) => self.counters.rx_old_boot += 1,
            Err(RxError::UnknownSender(_)) => self.counters.rx_unknown_sender += 1,
            Err(RxError::OwnEcho) => self.counters.rx_own_echo += 1,
            Err(RxError::Duplicate) => self.counters.rx_duplicate += 1,
            Err(RxError::Stale) => self.counters.rx_stale += 1,
            Err(RxError::DuplicateId(_)) => self.counters.duplicate_id += 1,
        }
    }


    // ------------------------------------------------------------------ tick

    pub fn tick(&mut self, now_ms: u64, local: &LocalState) -> &PeerOutput {
        let now = now_ms;
        self.out.messages.clear();
        self.out.events.clear();
        self.out.events.append(&mut self.pending);
        self.out.sample_request = false;
        let started = self.start(now, local);
        self.update_membership(now);
        self.update_start_clear();
        self.step_arbitration(now, started, local);
        self.update_grant(now, started);
        self.update_limits(now, local);
        self.update_speaker();
        self.emit(now, local);

        self.out.command = self.arb.command;
        self.out.phase = self.arb.phase;
        // From the request on, not only the precharge: the speaker hears a peer's phase one
        // heartbeat late and the inverter hears the hold one frame later still, so a hold raised
        // at the precharge would often reach the inverter after the main contact closed (S3).
        let joining = |p: Phase| p == Phase::Requesting || p.is_closing();
        self.out.join_in_progress =
            joining(self.arb.phase) || self.alive_remotes().any(|(_, r)| joining(r.phase()));
        if let Some(t) = local.meas_t_ms {
            self.arb.last_meas_t = Some(self.arb.last_meas_t.map_or(t, |l| l.max(t)));
        }
        &self.out
    }


















}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::test_runner::TestCaseError;
    use proptest::{prop_assert, prop_assert_eq};

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

    fn key() -> Auth {
        Auth::new(PeerConfig::default().system_id, &[[0x5A; 16]]).unwrap()
    }

    fn peer(id: u16, inc: u64) -> Peer {
        Peer::new(PeerConfig { node_id: id, members: vec![1, 2, 3], ..Default::default() }, inc, key()).unwrap()
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

    /// Three closed peers, ticking every 100 ms at their own phases, every message reaching
    /// the others at once; each string's source voltage carries measurement noise (uniform
    /// ±`ocv_noise_v`) and its resistance estimate moves by up to ±0.2 %, afresh every tick.
    /// String 1's source voltage steps by `step_v` at 10 s. Returns the longest time (ms) the
    /// peers' reported limits differed after start-up, how many times they came to differ, and
    /// the limits at the end.
    fn jittered_disagreement(cfg: &PeerConfig, ocv_noise_v: f64, step_v: f64) -> (u64, u32, (f64, f64)) {
        let mut peers: Vec<Peer> = (1..=3)
            .map(|id| Peer::new(PeerConfig { node_id: id, ..cfg.clone() }, id as u64, key()).unwrap())
            .collect();
        let phase_ms = [0u64, 37, 71];
        let mut rng = crate::prng::SplitMix64::new(7);
        let mut locals: Vec<LocalState> = (0..3).map(|k| local(400.0 + k as f64 * 0.3)).collect();
        for l in &mut locals {
            l.feedback = Contactors::CLOSED; // restarted closed: each adopts its contactors
        }
        let mut outs: Vec<(f64, f64)> = vec![(f64::NAN, f64::NAN); 3];
        let (mut since, mut longest_ms, mut disagreements) = (None::<u64>, 0u64, 0u32);
        for t in 0..20_000u64 {
            let mut sent = Vec::new();
            for k in 0..3 {
                if t % 100 != phase_ms[k] {
                    continue;
                }
                let step = if k == 0 && t >= 10_000 { step_v } else { 0.0 };
                locals[k].ocv_v = 400.0 + k as f64 * 0.3 + step + (2.0 * rng.unit() - 1.0) * ocv_noise_v;
                locals[k].r_ohm = 0.05 * (1.0 + (2.0 * rng.unit() - 1.0) * 0.002);
                let out = peers[k].tick(t, &locals[k]);
                outs[k] = (out.system_dcl_a, out.system_ccl_a);
                sent.extend(out.messages.iter().map(|m| (k, m.clone())));
            }
            for (from, m) in sent {
                for (k, p) in peers.iter_mut().enumerate() {
                    if k != from {
                        p.on_message(t, &m).unwrap();
                    }
                }
            }
            if t < 2000 {
                continue; // listening, adopting, first proposals
            }
            assert!(outs[0].0 > 100.0, "the closed strings carry a limit ({:?})", outs[0]);
            let agree = outs.iter().all(|o| *o == outs[0]);
            match (agree, since) {
                (false, None) => {
                    since = Some(t);
                    disagreements += 1;
                }
                (true, Some(s)) => {
                    longest_ms = longest_ms.max(t - s);
                    since = None;
                }
                _ => {}
            }
        }
        if let Some(s) = since {
            longest_ms = longest_ms.max(20_000 - s);
        }
        (longest_ms, disagreements, outs[0])
    }

    /// S5 with unsynchronised peers whose inputs carry measurement noise: with the default hold
    /// bands the peers agree within 2 heartbeat periods whatever the noise does. Without them
    /// (the control: the check can fail) each noisy sample changes every proposal, and peers
    /// that mix their own fresh proposal with the others' older ones report different limits
    /// for several periods (processes mode on CI: 20 periods, an S5 violation).
    #[test]
    fn unsynchronised_peers_agree_on_limits_while_the_measurements_jitter() {
        let base = PeerConfig { members: vec![1, 2, 3], ..Default::default() };
        let noise_v = 0.05; // ~the default story's source voltage noise (the cell sum's σ 25 mV, ±2σ)
        let (longest, n, end) = jittered_disagreement(&base, noise_v, 0.0);
        assert!(longest <= 200, "with the hold bands the peers disagreed for {longest} ms ({n} times)");
        let bare = PeerConfig { share_ocv_hold_v: 0.0, share_r_hold: 0.0, ..base.clone() };
        let (longest_bare, n_bare, _) = jittered_disagreement(&bare, noise_v, 0.0);
        assert!(n_bare > 50 && longest_bare > 400, "without them the noise must split the peers: {longest_bare} ms, {n_bare} times");
        // A real change, beyond the band, still reaches every peer's limits, and they agree.
        let (longest_step, _, end_step) = jittered_disagreement(&base, noise_v, 1.0);
        assert!(longest_step <= 200, "after a 1 V step the peers disagreed for {longest_step} ms");
        assert!(end_step.0 < end.0 - 1.0, "a string 1 V higher takes more of the discharge: {end_step:?} vs {end:?}");
    }

    #[test]
    fn heartbeats_alternate_kinds_and_fit_the_size_bound() {
        let mut p = peer(2, 7);
        let mut kinds = Vec::new();
        for t in (0..1000).step_by(10) {
            for m in &p.tick(t, &local(400.0)).messages {
                assert_eq!(m.len(), crate::wire::MESSAGE_LEN);
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

    /// A message of a sender that was silent to us (a partition) counts only when its counter
    /// fits the silence and a later one follows: a replay of what the sender said early in the
    /// silence (missed by us only, so newer than anything we hold) is stale; a single replay of
    /// a late one does not bring the sender back; the live sender does, with its second message.
    #[test]
    fn after_a_silence_a_missed_message_is_not_taken_alone() {
        let mut a = peer(1, 1);
        let mut b = peer(2, 5);
        let sent: Vec<Vec<u8>> = (0..40).flat_map(|k| b.tick(k * 100, &local(400.0)).messages.clone()).collect();
        assert!(sent.len() >= 40);
        assert_eq!(a.on_message(0, &sent[0]), Ok(()));
        // silent for 3.9 s (b sent ~39 messages meanwhile, all missed by a)
        assert_eq!(a.on_message(3900, &sent[1]), Err(RxError::Stale), "a message from early in the silence");
        let mid = sent.len() / 2;
        assert_eq!(a.on_message(3901, &sent[mid]), Err(RxError::Stale), "from mid-silence, alone, it only marks b as coming back");
        assert_eq!(a.on_message(3910, &sent[mid - 1]), Err(RxError::Stale), "an older one does not confirm it");
        assert_eq!(a.on_message(3920, &sent[mid + 1]), Err(RxError::Stale), "nor a newer one within half a heartbeat");
        let last = sent.len() - 1;
        assert_eq!(a.on_message(4000, &sent[last]), Ok(()), "the live message, as far on as the silence, is taken at once");
        // alive again: the usual counter rule
        let more = b.tick(4000, &local(400.0)).messages.clone();
        assert_eq!(a.on_message(4050, &more[0]), Ok(()));
    }

    /// A restarted node that restored its receive counters takes no replay of what its previous
    /// run had accepted (a dead peer's captured messages); without them it took the replay.
    #[test]
    fn restored_receive_counters_reject_a_replay_after_a_restart() {
        let mut a = peer(1, 1);
        let mut b = peer(2, 5);
        let sent: Vec<Vec<u8>> = (0..20).flat_map(|k| b.tick(k * 100, &local(400.0)).messages.clone()).collect();
        assert!(sent.len() >= 20);
        let upto = sent.len() - 5; // a heard all but b's last few messages
        for (k, m) in sent[..upto].iter().enumerate() {
            assert_eq!(a.on_message(k as u64 * 100, m), Ok(()));
        }
        let saved = a.receive_counters();
        let last = Message::decode(&sent[upto - 1]).unwrap();
        assert_eq!(saved, vec![ReceiveCounter { sender: 2, incarnation: 5, counter: last.counter }]);

        // b is dead; a restarts without memory: a replay of b's old messages is taken (the gap)
        let mut forgetful = peer(1, 2);
        assert_eq!(forgetful.on_message(0, &sent[0]), Ok(()), "no memory: the first contact is taken");

        // a restarts with its counters restored: every captured message it had accepted is refused
        let mut a2 = peer(1, 2);
        assert_eq!(a2.restore_receive_counters(&saved), 1);
        assert_eq!(a2.on_message(0, &sent[0]), Err(RxError::Stale));
        assert_eq!(a2.on_message(10, &sent[upto - 2]), Err(RxError::Stale));
        assert_eq!(a2.on_message(20, &sent[upto - 1]), Err(RxError::Duplicate));
        assert_eq!(a2.receive_counters(), saved, "not heard yet: the memory is kept for the next restart");
        assert_eq!(a2.counters().rx_stale, 2);
        // b's messages it never heard are newer, but may be a replay of a dead b (seed 10088969):
        // one alone is held; a second one paced like a live sender confirms it
        assert_eq!(a2.on_message(30, &sent[upto]), Err(RxError::Stale), "a first contact is held");
        assert_eq!(a2.on_message(40, &sent[upto + 1]), Err(RxError::Stale), "not within half a heartbeat: held again");
        assert_eq!(a2.on_message(140, &sent[upto + 2]), Ok(()), "the next message, paced like b, confirms it");
        assert_eq!(a2.on_message(240, &sent[upto - 1]), Err(RxError::Stale), "heard now: the usual rule");

        // a capture of what a dead b sent: two replays far apart in counter are no live sender
        let far: Vec<Vec<u8>> = (20..60).flat_map(|k| b.tick(k * 100, &local(400.0)).messages.clone()).collect();
        let mut a5 = peer(1, 5);
        a5.restore_receive_counters(&saved);
        assert_eq!(a5.on_message(0, &far[0]), Err(RxError::Stale));
        assert_eq!(a5.on_message(100, &far[30]), Err(RxError::Stale), "30 messages on in 100 ms: not b's pace");
        assert_eq!(a5.on_message(150, &far[29]), Err(RxError::Stale), "older than the mark: refused");
        assert!(a5.receive_counters() == saved, "nothing taken");

        // an older boot of b is refused; a higher boot (b restarted) is taken as a restart
        let mut a3 = peer(1, 3);
        a3.restore_receive_counters(&saved);
        let mut b_old = peer(2, 4);
        let old = b_old.tick(0, &local(400.0)).messages[0].clone();
        assert_eq!(a3.on_message(0, &old), Err(RxError::OldBoot));
        let mut b_new = peer(2, 6);
        let new = b_new.tick(0, &local(400.0)).messages[0].clone();
        let new2 = b_new.tick(100, &local(400.0)).messages[0].clone();
        assert_eq!(a3.on_message(10, &new), Err(RxError::Stale), "held until a second confirms it");
        assert_eq!(a3.on_message(110, &new2), Ok(()));
        assert_eq!(a3.receive_counters()[0].incarnation, 6);

        // entries of ids that are no other member are ignored; of two the newer counts
        let mut a4 = peer(1, 4);
        let junk = [
            ReceiveCounter { sender: 0, incarnation: 9, counter: 9 },
            ReceiveCounter { sender: 1, incarnation: 9, counter: 9 },
            ReceiveCounter { sender: 7, incarnation: 9, counter: 9 },
            ReceiveCounter { sender: 200, incarnation: 9, counter: 9 },
            ReceiveCounter { sender: 3, incarnation: 2, counter: 50 },
            ReceiveCounter { sender: 3, incarnation: 2, counter: 10 },
        ];
        assert_eq!(a4.restore_receive_counters(&junk), 2);
        assert_eq!(a4.receive_counters(), vec![ReceiveCounter { sender: 3, incarnation: 2, counter: 50 }]);
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
        let mut p = Peer::new(PeerConfig { node_id: 1, members: vec![1], ..Default::default() }, 1, key()).unwrap();
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

    /// The join hold (issue 11, S3) is asked for from the request on, not only from the
    /// precharge: the inverter hears it a heartbeat and a frame later.
    #[test]
    fn a_join_is_in_progress_from_the_request_on() {
        let mut p = Peer::new(PeerConfig { node_id: 1, members: vec![1], ..Default::default() }, 1, key()).unwrap();
        let mut t = 0;
        loop {
            let mut l = local(399.0);
            l.v_bus_v = 400.0;
            l.meas_t_ms = Some(t.max(100) - 100);
            let out = p.tick(t, &l);
            assert_eq!(out.join_in_progress, matches!(out.phase, Phase::Requesting | Phase::Precharging | Phase::Closing),
                       "phase {:?}", out.phase);
            if out.phase == Phase::Requesting {
                assert!(out.join_in_progress);
                return;
            }
            assert!(t < 5_000, "never requested");
            t += 100;
        }
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

    /// With a hold lead (an inverter that hears the hold late, e.g. Pylon HV's 1 s poll), no
    /// sample taken before request + lead counts towards the dwell; without it, it would.
    #[test]
    fn the_dwell_counts_only_samples_taken_after_the_hold_lead() {
        for lead in [0u64, 1300] {
            let cfg = PeerConfig { node_id: 1, members: vec![1], join_hold_lead_ms: lead as u32, lease_ms: 3500, ..Default::default() };
            let mut p = Peer::new(cfg, 1, key()).unwrap();
            let mut t = 0;
            let mut t_req = None;
            let decided = loop {
                let mut l = sample(400.0, 399.0, t.max(100) - 100);
                l.feedback = if t_req.is_some() { Contactors::PRECHARGE } else { Contactors::OPEN };
                let out = p.tick(t, &l);
                if out.phase == Phase::Requesting && t_req.is_none() {
                    t_req = Some(t);
                }
                assert_ne!(out.phase, Phase::Waiting, "aborted at {t} (lead {lead})");
                if out.sample_request {
                    break t;
                }
                assert!(t < 6_000, "never decided (lead {lead})");
                t += 100;
            };
            let t_req = t_req.unwrap();
            // the dwell (100 ms) starts at the first sample at or after request + lead, which
            // arrives one period later (samples are one period old)
            if lead == 0 {
                assert!(decided - t_req < 1_000, "decided {decided}, request {t_req}");
            } else {
                assert!(decided >= t_req + lead + PeerConfig::default().dwell_ms as u64, "decided {decided}, request {t_req}");
            }
        }
        // a lead the lease cannot cover is refused, naming the lease
        let c = PeerConfig { join_hold_lead_ms: 1300, ..Default::default() };
        assert_eq!(c.validate().unwrap_err().field, "lease_ms");
        let c = PeerConfig { join_hold_lead_ms: 20_000, lease_ms: 60_000, ..Default::default() };
        assert_eq!(c.validate().unwrap_err().field, "join_hold_lead_ms");
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
    fn s7_forged_unauthenticated_and_replayed_messages_change_nothing() {
        use crate::wire::{Body, Coord, DetailBody, TAG_LEN};
        let mut a = peer(1, 1);
        let mut b = peer(2, 5);
        a.tick(0, &local(400.0));
        let captured: Vec<Vec<u8>> = (0..30).flat_map(|k| b.tick(k * 100, &local(400.0)).messages.clone()).collect();
        for m in &captured {
            assert_eq!(a.on_message(0, m), Ok(()));
        }
        let c0 = *a.counters();
        // Forged: a grant to us from member 3 with a guessed tag, and a huge boot stamp for 2.
        let forged = |sender: u16, inc: u16, tag: [u8; TAG_LEN]| {
            Message {
                sender,
                incarnation: inc,
                counter: 1,
                flags: Default::default(),
                coord: Coord { req_ticket: 0, grant_to: 1, grant_ticket: 3 },
                body: Body::Detail(DetailBody::default()),
                tag,
            }
            .encode()
        };
        assert_eq!(a.on_message(10, &forged(3, 9, [1, 2, 3, 4])), Err(RxError::Forged));
        assert_eq!(a.on_message(10, &forged(2, u16::MAX, [9; 4])), Err(RxError::Forged));
        assert_eq!(a.on_message(10, &forged(3, 9, [0; 4])), Err(RxError::Unauthenticated));
        // Signed with another system's key, or another key of this system.
        let mut m = Message::decode(&forged(3, 9, [0; 4])).unwrap();
        let other = Auth::new(PeerConfig::default().system_id, &[[0x77; 16]]).unwrap();
        assert_eq!(a.on_message(10, &other.seal(&mut m)), Err(RxError::Forged));
        // Replays of b's captured messages, long after b died (past the failure timeout).
        for (k, m) in captured.iter().enumerate() {
            assert_eq!(a.on_message(60_000 + k as u64, m), if k + 1 == captured.len() { Err(RxError::Duplicate) } else { Err(RxError::Stale) });
        }
        let c = a.counters();
        assert_eq!((c.rx_forged, c.rx_unauthenticated), (c0.rx_forged + 3, c0.rx_unauthenticated + 1));
        assert_eq!(c.rx_ok, c0.rx_ok);
        assert!(a.membership.remotes[3].heard == false, "the forged member 3 was never heard");
        // b restarts with a higher boot: accepted at once; its old boot replayed: dropped.
        let mut b2 = peer(2, 6);
        let fresh = b2.tick(70_000, &local(400.0)).messages[0].clone();
        assert_eq!(a.on_message(70_000, &fresh), Ok(()));
        assert_eq!(a.on_message(70_001, &captured[3]), Err(RxError::OldBoot));
        assert_eq!(a.counters().rx_old_boot, 1);
    }

    #[test]
    fn my_own_past_run_is_old_until_it_sends_counters_beyond_the_last_seen() {
        let mut old = peer(1, 3);
        let past: Vec<Vec<u8>> = (0..3).flat_map(|k| old.tick(k * 100, &local(400.0)).messages.clone()).collect();
        let mut a = peer(1, 4);
        a.tick(0, &local(400.0));
        // one replayed message of the past run: dropped as old, no alarm
        assert_eq!(a.on_message(10, &past[0]), Err(RxError::OldBoot));
        assert_eq!(a.on_message(11, &past[0]), Err(RxError::OldBoot));
        // a lower boot that keeps sending new counters is a live twin
        assert_eq!(a.on_message(12, &past[1]), Err(RxError::DuplicateId(1)));
    }

    #[test]
    fn a_twin_with_my_id_and_my_boot_is_told_apart() {
        // Two nodes with id 1 that both started as boot 7: the one that hears a counter of its
        // own boot it never sent moves to a higher boot and alarms; the other then sees a
        // higher boot with its id and alarms too.
        let mut a = peer(1, 7);
        let mut b = peer(1, 7);
        let ahead: Vec<Vec<u8>> = (0..20).flat_map(|k| a.tick(k * 100, &local(400.0)).messages.clone()).collect();
        let behind = b.tick(0, &local(400.0)).messages[0].clone();
        assert_eq!(a.on_message(2000, &behind), Err(RxError::OwnEcho)); // ambiguous for a: a past counter
        assert_eq!(b.on_message(10, ahead.last().unwrap()), Err(RxError::DuplicateId(1)));
        assert!(b.incarnation_wire() > 7);
        let moved = b.tick(100, &local(400.0)).messages[0].clone();
        assert_eq!(a.on_message(2001, &moved), Err(RxError::DuplicateId(1)));
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

    // ---- issue 15 item 5: a bad frame changes no state ----

    /// Two identical nodes 1 (`a`, `twin`) in a three-member system hear the same genuine traffic
    /// of 2 and 3 and close (4 s: listen, request, wait, precharge, close); at a drawn tick the twin alone is also fed garbage: random bytes and
    /// genuine messages with bits flipped. Every garbage input is rejected and counted, and the
    /// twin's output (commands, phase, agreed limits, sets, the messages it sends, events) stays
    /// equal to `a`'s on every tick before and after.
    fn run_with_garbage(at_tick: u64, garbage: &[Vec<u8>], flips: &[(usize, u8)]) -> Result<u64, TestCaseError> {
        let mut closed_ticks = 0;
        let mut a = peer(1, 1);
        let mut twin = peer(1, 1);
        let mut others = [peer(2, 2), peer(3, 3)];
        let mut fb = [Contactors::OPEN; 4];
        let mut genuine: Vec<Vec<u8>> = Vec::new();
        for k in 0..40u64 {
            let t = k * 100;
            let mut sent: Vec<Vec<u8>> = Vec::new();
            for (i, o) in others.iter_mut().enumerate() {
                let mut l = local(400.0);
                l.v_bus_v = 400.0;
                l.meas_t_ms = Some(t);
                l.feedback = fb[i + 2];
                let out = o.tick(t, &l);
                fb[i + 2] = out.command;
                sent.extend(out.messages.iter().cloned());
            }
            if k == at_tick {
                let before = *twin.counters();
                let mut bad: Vec<Vec<u8>> = garbage.to_vec();
                for &(pos, bit) in flips {
                    if let Some(g) = genuine.last() {
                        let mut m = g.clone();
                        let n = m.len();
                        m[pos % n] ^= 1 << (bit % 8);
                        bad.push(m);
                    }
                }
                for g in &bad {
                    prop_assert!(twin.on_message(t, g).is_err(), "garbage accepted: {:?}", g);
                }
                let c = twin.counters();
                let rejected = (c.rx_malformed + c.rx_unauthenticated + c.rx_forged)
                    - (before.rx_malformed + before.rx_unauthenticated + before.rx_forged);
                prop_assert_eq!(rejected, bad.len() as u64, "every garbage input is counted as malformed, unauthenticated or forged");
                prop_assert_eq!(c.rx_ok, before.rx_ok);
            }
            for m in &sent {
                prop_assert_eq!(a.on_message(t + 1, m).is_ok(), twin.on_message(t + 1, m).is_ok());
            }
            genuine.extend(sent);
            let mut l = local(400.0);
            l.v_bus_v = 400.0;
            l.meas_t_ms = Some(t);
            l.feedback = fb[1];
            let oa = a.tick(t + 2, &l).clone();
            let ot = twin.tick(t + 2, &l).clone();
            prop_assert_eq!(&oa, &ot, "tick {}: the garbage changed the twin's state", k);
            fb[1] = oa.command;
            closed_ticks += u64::from(oa.command == Contactors::CLOSED && oa.closed_set & 1 == 1);
            for m in &oa.messages {
                for o in others.iter_mut() {
                    let _ = o.on_message(t + 3, m);
                }
            }
        }
        prop_assert_eq!(a.counters().rx_ok, twin.counters().rx_ok);
        Ok(closed_ticks)
    }

    #[test]
    fn the_twin_run_closes_without_garbage() {
        // The property below is only meaningful if the run reaches the state that matters:
        // node 1 requests, is granted, precharges and closes (agreed closed) in the run, and
        // the garbage can land in every phase (Listening, Requesting, Waiting, Closing, Closed).
        let closed = run_with_garbage(99, &[], &[]).unwrap();
        assert!(closed >= 5, "node 1 closed on {closed} of 40 ticks");
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(crate::fuzz_cases(1000)))]
        #[test]
        fn a_bad_frame_changes_no_peer_state(
            at_tick in 0u64..40,
            garbage in proptest::collection::vec(proptest::collection::vec(proptest::prelude::any::<u8>(), 0..40), 0..4),
            flips in proptest::collection::vec((0usize..64, 0u8..8), 0..4),
        ) {
            run_with_garbage(at_tick, &garbage, &flips)?;
        }
    }
}
