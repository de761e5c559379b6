//! Emission: what this peer broadcasts and when. One message per heartbeat period, Limits and
//! Detail alternating; a change others wait for (phase, a new request or grant, a drop of
//! our own limits) goes out at once, at most every quarter period.

use crate::wire::{
    amps_to_da_floor, amps_to_da_signed, dv_to_10mv, ohm_to_100uohm, soc_to_permille, volts_to_10mv, Body, Coord, DetailBody,
    Flags, LimitsBody, Message, COUNTER_MAX, TAG_LEN,
};

use super::{LocalState, Peer, Phase};

/// Emission sub-state: sequence numbers, heartbeat schedule and what was sent last.
#[derive(Clone, Debug, Default)]
pub(super) struct Emission {
    /// The message counter of this boot (freshness).
    pub(super) counter: u32,
    pub(super) next_hb: u64,
    pub(super) next_kind: u8,
    pub(super) last_sent_limits: Option<LimitsBody>,
    pub(super) last_sent_fc: Option<(Flags, Coord)>,
    pub(super) last_tx_ms: Option<u64>,
}

pub(super) fn limits_of(local: &LocalState) -> LimitsBody {
    LimitsBody {
        ocv_10mv: volts_to_10mv(local.ocv_v),
        r_100uohm: ohm_to_100uohm(local.r_ohm),
        dcl_da: amps_to_da_floor(local.dcl_a),
        ccl_da: amps_to_da_floor(local.ccl_a),
        dcl_peak_da: amps_to_da_floor(local.dcl_peak_a),
        ccl_peak_da: amps_to_da_floor(local.ccl_peak_a),
    }
    .on_wire()
}

impl Peer {
    pub(super) fn emit(&mut self, now: u64, local: &LocalState) {
        let hb = self.cfg.heartbeat_ms as u64;
        let fc = (self.flags(now, local), self.coord());
        let mut fresh = limits_of(local);
        // The source voltage and the resistance stand as last sent while the new ones are within
        // their hold bands (`share_ocv_hold_v`, `share_r_hold`, counted in the limits'
        // uncertainty): measurement noise alone then changes no peer's proposal (S5).
        if let Some(l) = self.emission.last_sent_limits {
            if (local.ocv_v * 100.0 - l.ocv_10mv as f64).abs() <= self.cfg.share_ocv_hold_v * 100.0 {
                fresh.ocv_10mv = l.ocv_10mv;
            }
            let r_100uohm = local.r_ohm * 1e4;
            if (r_100uohm - l.r_100uohm as f64).abs() <= self.cfg.share_r_hold * r_100uohm {
                fresh.r_100uohm = l.r_100uohm;
            }
        }
        let dropped = self.emission.last_sent_limits.is_some_and(|l| {
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
            || match self.emission.last_sent_fc {
                None => true,
                Some((f, c)) => {
                    f != fc.0
                        || (fc.1.req_ticket != 0 && fc.1.req_ticket != c.req_ticket)
                        || (fc.1.grant_to != 0
                            && (fc.1.grant_to, fc.1.grant_ticket) != (c.grant_to, c.grant_ticket))
                }
            };
        let gap_ok = self.emission.last_tx_ms.is_none_or(|t| now.saturating_sub(t) >= hb / 4);
        let kind = if now >= self.emission.next_hb || (event && gap_ok) {
            self.emission.next_hb = now + hb;
            let k = if dropped { 0 } else { self.emission.next_kind };
            self.emission.next_kind = k ^ 1;
            Some(k)
        } else {
            None
        };
        let Some(kind) = kind else { return };
        let body = if kind == 0 {
            self.emission.last_sent_limits = Some(fresh);
            Body::Limits(fresh)
        } else {
            self.agreement.sent_prop_da = Some(self.agreement.prop_da);
            Body::Detail(DetailBody {
                prop_dcl_da: self.agreement.prop_da.0,
                prop_ccl_da: self.agreement.prop_da.1,
                soc_permille: soc_to_permille(local.soc),
                dv_10mv: dv_to_10mv(local.v_string_v - local.v_bus_v),
                i_da: amps_to_da_signed(local.i_a),
            })
        };
        if self.emission.counter > COUNTER_MAX {
            // The counter would wrap (after 2^24 messages, ~19 days at 10 per second): go on as
            // a new boot, which receivers take as a restart (they re-learn our state at once).
            self.membership.inc = self.membership.inc.wrapping_add(1);
            self.emission.counter = 0;
        }
        let mut m = Message {
            sender: self.cfg.node_id,
            incarnation: self.membership.inc,
            counter: self.emission.counter,
            flags: fc.0,
            coord: fc.1,
            body,
            tag: [0; TAG_LEN],
        };
        self.emission.counter += 1;
        self.emission.last_tx_ms = Some(now);
        self.emission.last_sent_fc = Some(fc);
        self.counters.tx += 1;
        self.out.messages.push(self.auth.seal(&mut m).to_vec());
    }

    pub(super) fn flags(&self, now: u64, local: &LocalState) -> Flags {
        Flags {
            phase: self.arb.phase as u8,
            fault: local.fault,
            main_closed: self.arb.phase == Phase::Closed && self.arb.command.main_closed(),
            pre_closed: self.arb.command.pre,
            // A node whose id is duplicated will not request (dup_self_until): it must not say it
            // may close either, or the others wait for it to go first (the lowest-id matching
            // string closes first) and the whole battery stays open.
            may_close: local.may_close && now >= self.membership.dup_self_until,
        }
    }

    pub(super) fn coord(&self) -> Coord {
        let (grant_to, grant_ticket) = self.arb.grant.map_or((0, 0), |g| (g.to, g.ticket));
        Coord { req_ticket: self.arb.ticket, grant_to, grant_ticket }
    }
}
