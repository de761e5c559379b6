//! Arbitration: this string's way onto the bus. The phase machine (listen, request, precharge
//! with the S3 dwell and two-phase verification, close, closed, isolated, back-off), the
//! request's ticket, the one grant this peer gives at a time (S2) and the ordering policy
//! (which string may ask first).

use crate::prng::SplitMix64;
use crate::wire::MAX_TICKET;

use super::emission::limits_of;
use super::{bit, AbortReason, Contactors, Event, LocalState, Peer, Phase, ABORT_BACKOFF_PERIODS, LIVE_MATCH_MARGIN};

/// Arbitration sub-state: this string's phase and contactor command, its request (ticket),
/// the grant slot it gives, the S3 dwell and verification, back-off.
#[derive(Clone, Debug)]
pub(super) struct Arbitration {
    pub(super) phase: Phase,
    pub(super) command: Contactors,
    pub(super) ticket: u8,
    pub(super) last_ticket: u8,
    /// When each ticket (1..=15) was last used: a ticket is not reused within the grant
    /// guard, so a grant left over for an old request can never count for a new one.
    pub(super) ticket_used_at: [Option<u64>; 16],
    pub(super) t_req: u64,
    pub(super) t_pre: u64,
    pub(super) t_close: u64,
    pub(super) t_open_fb: Option<u64>,
    /// S3 dwell of the current precharge (None: no match yet or it broke).
    pub(super) dwell: Option<Dwell>,
    /// The dwell was complete at this tick (own clock): the close waits for a sample taken
    /// at or after it (two-phase close).
    pub(super) verify_since: Option<u64>,
    /// Time of the newest sample seen (a repeated sample does not advance the dwell).
    pub(super) last_meas_t: Option<u64>,
    /// The bus was live when this precharge started (a closed string or a voltage above
    /// bus_live_v held it): its movement is then not ours.
    pub(super) pre_live_bus: bool,
    pub(super) backoff_until: u64,
    pub(super) grant: Option<Grant>,
    pub(super) rng: SplitMix64,
}

/// The S3 dwell, in sample time: since when the match has held and how far the bus moved.
/// The S3 dwell, in sample time: since when the match has held and how far the bus moved.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) struct Dwell {
    pub(super) since_meas_ms: u64,
    pub(super) v_bus_min: f64,
    pub(super) v_bus_max: f64,
    /// Signed V_bus − V_string of the first sample of the dwell.
    pub(super) dv_first_v: f64,
}

impl Dwell {
    pub(super) fn start(meas_t_ms: u64, v_bus_v: f64, dv_signed_v: f64) -> Self {
        Dwell { since_meas_ms: meas_t_ms, v_bus_min: v_bus_v, v_bus_max: v_bus_v, dv_first_v: dv_signed_v }
    }
    pub(super) fn add(&mut self, v_bus_v: f64) {
        self.v_bus_min = self.v_bus_min.min(v_bus_v);
        self.v_bus_max = self.v_bus_max.max(v_bus_v);
    }
    pub(super) fn spread_v(&self) -> f64 {
        self.v_bus_max - self.v_bus_min
    }
}

/// Grant slot: at most one grant at a time.
/// Grant slot: at most one grant at a time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Grant {
    pub(super) to: u16,
    pub(super) ticket: u8,
    pub(super) at_ms: u64,
}

impl Peer {
    pub(super) fn step_phase(&mut self, now: u64, started: u64, local: &LocalState) {
        let hb = self.cfg.heartbeat_ms as u64;
        let quorum = self.out.quorum;
        match self.arb.phase {
            Phase::Listening => {
                self.arb.command = Contactors::OPEN;
                if now.saturating_sub(started) >= self.cfg.listen_periods as u64 * hb {
                    self.arb.phase = Phase::Open;
                }
            }
            Phase::Isolated => {
                self.arb.command = Contactors::OPEN;
                self.out.events.push(Event::Rejoining);
                self.backoff(now, 1);
            }
            Phase::Waiting => {
                self.arb.command = Contactors::OPEN;
                if now >= self.arb.backoff_until {
                    self.arb.phase = Phase::Open;
                }
            }
            Phase::Open => self.open_step(now, local),
            Phase::Requesting => self.requesting_step(now, local),
            Phase::Precharging => {
                self.arb.command = Contactors::PRECHARGE;
                let lease = self.cfg.requester_lease_ms();
                if !local.may_close {
                    self.abort(now, AbortReason::Withdrawn);
                } else if !quorum {
                    self.abort(now, AbortReason::QuorumLost);
                } else if now.saturating_sub(self.arb.t_req) + self.cfg.close_confirm_ms as u64 >= lease {
                    self.abort(now, AbortReason::LeaseExpired);
                } else {
                    self.precharge_step(now, local);
                }
            }
            Phase::Closing => self.closing_step(now, local),
            Phase::Closed => self.closed_step(now, local),
        }
    }

    /// Open: ask to close (a fresh ticket, a request) when allowed and first in order.
    pub(super) fn open_step(&mut self, now: u64, local: &LocalState) {
        let quorum = self.out.quorum;
        self.arb.command = Contactors::OPEN;
        let guard = self.cfg.grant_inhibit_ms();
        let free_ticket = (1..=MAX_TICKET)
            .map(|k| (self.arb.last_ticket + k - 1) % MAX_TICKET + 1)
            .find(|&t| self.arb.ticket_used_at[t as usize].is_none_or(|u| now.saturating_sub(u) >= guard));
        if let Some(t) = free_ticket.filter(|_| {
            local.may_close
                && quorum
                && now >= self.membership.dup_self_until
                && now >= self.arb.backoff_until
                && self.eligible(local)
        }) {
            self.arb.last_ticket = t;
            self.arb.ticket_used_at[t as usize] = Some(now);
            self.arb.ticket = t;
            self.arb.t_req = now;
            self.arb.phase = Phase::Requesting;
            self.counters.requests += 1;
            self.out.events.push(Event::RequestSent { ticket: self.arb.ticket });
        }
    }

    /// Requesting: precharge with grants from a quorum inside the lease, else withdraw.
    pub(super) fn requesting_step(&mut self, now: u64, local: &LocalState) {
        let quorum = self.out.quorum;
        self.arb.command = Contactors::OPEN;
        let grants = self.grant_mask().count_ones();
        let lease = self.cfg.requester_lease_ms();
        // With a hold lead the precharge timeout counts from the lead (precharge_step).
        let lead_left = (self.cfg.join_hold_lead_ms as u64).saturating_sub(now.saturating_sub(self.arb.t_req));
        let need = lead_left + self.cfg.precharge_timeout_ms as u64 + self.cfg.close_confirm_ms as u64;
        let me = self.cfg.node_id;
        let competitor = self
            .alive_remotes()
            .any(|(id, r)| (r.phase() == Phase::Requesting && id < me) || r.phase().is_closing());
        if !local.may_close || !quorum || now < self.membership.dup_self_until {
            self.withdraw(now);
        } else if grants as usize >= self.cfg.quorum()
            && now.saturating_sub(self.arb.t_req) + need <= lease
        {
            self.arb.phase = Phase::Precharging;
            self.arb.pre_live_bus = self.out.closed_set != 0 || local.v_bus_v > self.cfg.bus_live_v;
            self.arb.t_pre = now;
            self.arb.dwell = None;
            self.arb.verify_since = None;
            self.arb.command = Contactors::PRECHARGE;
            self.out.events.push(Event::PrechargeStarted { grants });
        } else if competitor
            || now.saturating_sub(self.arb.t_req) >= self.cfg.grant_wait_ms as u64
        {
            self.withdraw(now);
        }
    }

    /// Closing: the main contactor's feedback confirms the close within close_confirm_ms.
    pub(super) fn closing_step(&mut self, now: u64, local: &LocalState) {
        self.arb.command = Contactors::CLOSING;
        if local.feedback.main_closed() {
            self.arb.phase = Phase::Closed;
            self.arb.command = Contactors::CLOSED;
            self.arb.ticket = 0;
            self.arb.t_open_fb = None;
            self.counters.closes += 1;
            self.out.events.push(Event::Closed);
        } else if now.saturating_sub(self.arb.t_close) >= self.cfg.close_confirm_ms as u64 {
            self.abort(now, AbortReason::FeedbackTimeout);
        } else if now.saturating_sub(self.arb.t_req) >= self.cfg.requester_lease_ms() {
            self.abort(now, AbortReason::LeaseExpired);
        }
    }

    /// Closed: open on request; a contactor that dropped by itself is open after the confirm time.
    pub(super) fn closed_step(&mut self, now: u64, local: &LocalState) {
        self.arb.command = Contactors::CLOSED;
        if !local.may_close {
            self.arb.command = Contactors::OPEN;
            self.arb.phase = Phase::Open;
            self.out.events.push(Event::Opened);
        } else if !local.feedback.main_closed() {
            // The contactor dropped by itself: after the confirm time, we are open.
            let since = *self.arb.t_open_fb.get_or_insert(now);
            if now.saturating_sub(since) >= self.cfg.close_confirm_ms as u64 {
                self.arb.command = Contactors::OPEN;
                self.arb.t_open_fb = None;
                self.out.events.push(Event::Opened);
                self.backoff(now, ABORT_BACKOFF_PERIODS);
            }
        } else {
            self.arb.t_open_fb = None;
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
    pub(super) fn precharge_step(&mut self, now: u64, local: &LocalState) {
        let cfg = &self.cfg;
        let meas_t = local.meas_t_ms.unwrap_or(now);
        let new_sample = self.arb.last_meas_t.is_none_or(|t| meas_t > t);
        let dv_signed = local.v_bus_v - local.v_string_v;
        let dv = dv_signed.abs();
        // Live bus (a closed string holds it): any movement of V_bus is the load or another
        // string, not this precharge, so the bus must be steady. Dead bus: the bus is the
        // capacitance this precharge charges; it moves towards V_string by design.
        let live = self.arb.pre_live_bus;
        let matched = dv <= cfg.dv_close_v && local.i_a.abs() <= cfg.precharge_settle_a && local.v_bus_v.is_finite();
        let steady_v = cfg.max_bus_slew_v_per_s * cfg.dwell_ms.max(1) as f64 / 1000.0;
        if let Some(t_dec) = self.arb.verify_since {
            // A sample taken at or after the decision and young enough to act on now.
            if new_sample && meas_t >= t_dec && now.saturating_sub(meas_t) <= cfg.verify_timeout_ms as u64 {
                let ok = matched
                    && self.arb.dwell.is_some_and(|mut d| {
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
                    self.arb.phase = Phase::Closing;
                    self.arb.t_close = now;
                    self.arb.command = Contactors::CLOSING;
                    self.arb.dwell = None;
                    self.arb.verify_since = None;
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
        // The inverter holds its current only from the lead on: earlier samples prove nothing
        // about the bus the contact will land on, so the dwell starts afresh until then.
        let hold_from = self.arb.t_req + cfg.join_hold_lead_ms as u64;
        if new_sample {
            if matched {
                let d = self.arb.dwell.get_or_insert(Dwell::start(meas_t, local.v_bus_v, dv_signed));
                d.add(local.v_bus_v);
                if meas_t < hold_from {
                    *d = Dwell::start(meas_t, local.v_bus_v, dv_signed);
                } else if live && d.spread_v() > steady_v {
                    // The bus moved (a load change): the dwell starts again from this sample.
                    *d = Dwell::start(meas_t, local.v_bus_v, dv_signed);
                }
                if meas_t.saturating_sub(d.since_meas_ms) >= cfg.dwell_ms as u64 {
                    self.arb.verify_since = Some(now);
                    self.out.sample_request = true;
                }
            } else {
                self.arb.dwell = None;
            }
        }
        // A precharge that waits for the hold lead is matched and settled (its current is
        // below precharge_settle_a), so the timeout, which catches a precharge that does not
        // settle, counts from the later of its start and the lead.
        if self.arb.verify_since.is_none()
            && now.saturating_sub(self.arb.t_pre.max(hold_from)) >= self.cfg.precharge_timeout_ms as u64
        {
            self.abort(now, AbortReason::PrechargeTimeout);
        }
    }

    pub(super) fn update_grant(&mut self, now: u64, started: u64) {
        let me = self.cfg.node_id;
        if let Some(g) = self.arb.grant {
            let expired = now.saturating_sub(g.at_ms) >= self.cfg.lease_ms as u64;
            let released = if g.to == me {
                self.arb.ticket != g.ticket
            } else {
                let r = &self.membership.remotes[g.to as usize];
                r.last_heard > g.at_ms && r.coord.req_ticket != g.ticket
            };
            if expired || released {
                self.arb.grant = None;
                self.out.events.push(Event::GrantReleased { to: g.to, expired: expired && !released });
            }
        }
        if self.arb.grant.is_some()
            || (!self.membership.start_clear && now.saturating_sub(started) < self.cfg.grant_inhibit_ms())
            || now < self.membership.dup_self_until
            || self.arb.phase.is_closing()
            || self.someone_else_closing()
        {
            return;
        }
        let mut best: Option<(u16, u8)> = None;
        if self.arb.phase == Phase::Requesting && self.arb.ticket != 0 {
            best = Some((me, self.arb.ticket));
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
            self.arb.grant = Some(Grant { to, ticket, at_ms: now });
            self.counters.grants += 1;
            self.out.events.push(Event::Granted { to, ticket });
        }
    }

    /// Members whose grant for our current request we hold (bit per id).
    pub(super) fn grant_mask(&self) -> u64 {
        if self.arb.ticket == 0 {
            return 0;
        }
        let me = self.cfg.node_id;
        let mut m = 0u64;
        if let Some(g) = self.arb.grant {
            if g.to == me && g.ticket == self.arb.ticket {
                m |= bit(me);
            }
        }
        for (id, r) in self.alive_remotes() {
            if r.coord.grant_to == me
                && r.coord.grant_ticket == self.arb.ticket
                && r.last_heard >= self.arb.t_req
                && r.dup_until <= r.last_heard
            {
                m |= bit(id);
            }
        }
        m
    }

    /// May this string ask to close now (ordering policy)?
    pub(super) fn eligible(&self, local: &LocalState) -> bool {
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
                        (d.dv_10mv as f64).abs() / 100.0 <= margin
                    })
            })
        } else {
            // Dead bus: the largest OCV group within dv closes first (ties: higher voltage),
            // lowest id of that group first.
            let my_ocv = self.emission.last_sent_limits.unwrap_or_else(|| limits_of(local)).ocv_10mv;
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

    pub(super) fn backoff(&mut self, now: u64, periods: u64) {
        let hb = self.cfg.heartbeat_ms as u64;
        let jitter = self.arb.rng.below(hb);
        self.arb.backoff_until = now + periods * hb + hb / 2 + jitter;
        self.arb.phase = Phase::Waiting;
    }

    pub(super) fn abort(&mut self, now: u64, reason: AbortReason) {
        self.arb.command = Contactors::OPEN;
        self.arb.ticket = 0;
        self.arb.dwell = None;
        self.arb.verify_since = None;
        self.counters.aborts += 1;
        self.out.events.push(Event::Aborted { reason });
        self.backoff(now, ABORT_BACKOFF_PERIODS);
    }

    pub(super) fn withdraw(&mut self, now: u64) {
        self.out.events.push(Event::RequestWithdrawn { ticket: self.arb.ticket });
        self.arb.ticket = 0;
        self.backoff(now, 0);
    }

    /// S1 first: a confirmed local fault opens in this very tick, whatever else is going
    /// on; otherwise the phase machine steps.
    pub(super) fn step_arbitration(&mut self, now: u64, started: u64, local: &LocalState) {
        let listened = now.saturating_sub(started) >= self.cfg.listen_periods as u64 * self.cfg.heartbeat_ms as u64;
        if local.fault && self.arb.phase == Phase::Listening && !listened {
            // Still learning the state after a start: open, and stay Listening (a listening
            // peer reports no limits and is never the speaker).
            self.arb.command = Contactors::OPEN;
        } else if local.fault {
            if self.arb.phase != Phase::Isolated {
                if self.arb.phase.is_closing() || self.arb.phase == Phase::Requesting {
                    self.counters.aborts += 1;
                    self.out.events.push(Event::Aborted { reason: AbortReason::Fault });
                }
                self.arb.ticket = 0;
                self.arb.dwell = None;
                self.arb.verify_since = None;
                self.arb.phase = Phase::Isolated;
                self.out.events.push(Event::Isolated);
            }
            self.arb.command = Contactors::OPEN;
        } else {
            self.step_phase(now, started, local);
        }
    }
}
