//! Agreement: the system limits. This peer's N−1 proposal from the latest confirmed states of
//! the closed strings (and every open/closed combination of members it cannot hear), the
//! reported limits (a drop at once, a rise only once every live peer has proposed since and
//! half a period has passed: S4, S5), the DC/DC set-point and the speaker.

use crate::sharing::{n1_limits_with, StringState};
use crate::wire::{amps_to_da_floor_system, LimitsBody};

use super::emission::limits_of;
use super::{bit, Event, LocalState, Peer, Phase, MAX_GHOSTS};

/// Agreement sub-state: this peer's N−1 proposal and the limits it reports (drop at once,
/// rise once agreed).
#[derive(Clone, Debug, Default)]
pub(super) struct Agreement {
    pub(super) prop_da: (u32, u32),
    /// Our proposal as last broadcast (in a Detail): the value the other peers hold for us.
    pub(super) sent_prop_da: Option<(u32, u32)>,
    pub(super) prop_changed_at: u64,
    pub(super) rise_since: Option<u64>,
    /// The closed set of the previous limits update (a string leaving it restarts the
    /// rise gate).
    pub(super) prev_closed_set: u64,
    /// The live peers whose proposals bound the previous limits update (one leaving restarts
    /// the rise gate too).
    pub(super) prev_bound_set: u64,
    pub(super) reported_da: (u32, u32),
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

/// The strings as this peer sees them for the limits (see [`Peer::string_view`]).
struct StringView {
    closed_set: u64,
    closed: Vec<StringState>,
    closing: Option<StringState>,
    ghosts: Vec<StringState>,
    unknown_closed: bool,
}

impl Peer {
    pub(super) fn update_limits(&mut self, now: u64, local: &LocalState) {
        let view = self.string_view(local);
        let prop = self.proposal(&view);
        let closed_set = view.closed_set;
        self.agree(now, prop, closed_set);
        self.out.dcdc_setpoint_a = None;
        if self.cfg.dcdc && self.arb.phase == Phase::Closed {
            self.out.dcdc_setpoint_a = Some(self.dcdc_setpoint(local, closed_set));
        }
    }

    /// What is known of the strings, in ascending id order on every peer (so identical
    /// inputs give identical floats): the confirmed-closed ones, the one closing, the
    /// members not live but known (ghosts), and whether a live member claims to be closed
    /// without a known state.
    fn string_view(&self, local: &LocalState) -> StringView {
        let me = self.cfg.node_id;
        let own = self.emission.last_sent_limits.unwrap_or_else(|| limits_of(local));
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
                (self.arb.phase, self.arb.command.main_closed(), Some(own), true)
            } else {
                let r = &self.membership.remotes[id as usize];
                (r.phase(), r.flags.main_closed, r.limits, r.alive)
            };
            let Some(l) = limits else {
                // Closed (or closing) when last heard, and no state of it known: nothing bounds
                // its current, live or not. A member that went silent stays in the closed set as
                // far as we know (a crash opens it, a partition does not: S6, the bus does not
                // split), so leaving it out errs high (fault seed 10070997: member 2, restarted,
                // heard member 1 closed but lost it before its Limits arrived, then reported its
                // own string's limit alone: ccl 95.5 A against the 86.1 A N−1 limit of the two
                // closed strings: S4).
                let heard = id == me || self.membership.remotes[id as usize].heard;
                unknown_closed |= heard && (phase == Phase::Closed || phase.is_closing() || main_closed);
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
        StringView { closed_set, closed, closing, ghosts, unknown_closed }
    }

    /// This peer's proposal (dA, floored): the N−1 limits of the closed set over every
    /// open/closed combination of the ghosts, with and without the closing string; zero
    /// when not enough is known to bound the current of every string.
    fn proposal(&self, v: &StringView) -> (u32, u32) {
        let StringView { closed, closing, ghosts, unknown_closed, .. } = v;
        let (closing, unknown_closed) = (*closing, *unknown_closed);
        let (mut dcl, mut ccl) = (f64::INFINITY, f64::INFINITY);
        let unc = self.cfg.share_uncertainty();
        if self.arb.phase == Phase::Listening || unknown_closed || ghosts.len() > MAX_GHOSTS {
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
                    let (d, c) = n1_limits_with(&set, &unc);
                    dcl = dcl.min(d);
                    ccl = ccl.min(c);
                }
            }
        }
        (amps_to_da_floor_system(dcl), amps_to_da_floor_system(ccl))
    }

    /// The rise gate and the agreement on the reported limits (S5): a drop shows at once,
    /// a rise once every live peer has proposed since and half a period has passed.
    fn agree(&mut self, now: u64, prop: (u32, u32), closed_set: u64) {
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
        //
        // So does a peer whose proposal bound us going silent (lost): what its proposal carried
        // (e.g. a derate we never heard ourselves) binds us until it could no longer be in
        // flight, so a rise waits the half period, longer than any delivery delay (fault seed
        // 38727: member 2 lost member 1, the last live peer, and rose in that tick from
        // member 1's 56.3 A to its own 148.2 A; member 3's derate, which member 2 had missed,
        // put the true N−1 limit at 88.6 A).
        let bound_set = self
            .alive_remotes()
            .filter(|(_, r)| r.phase() != Phase::Listening && r.detail.is_some())
            .fold(0u64, |m, (id, _)| m | bit(id));
        let left = self.agreement.prev_closed_set & !closed_set != 0 || self.agreement.prev_bound_set & !bound_set != 0;
        self.agreement.prev_closed_set = closed_set;
        self.agreement.prev_bound_set = bound_set;
        if prop.0 > self.agreement.reported_da.0 || prop.1 > self.agreement.reported_da.1 {
            if left {
                self.agreement.rise_since = Some(now);
            } else {
                self.agreement.rise_since.get_or_insert(now);
            }
        } else {
            self.agreement.rise_since = None;
        }
        self.agreement.prop_changed_at = self.agreement.rise_since.unwrap_or(0);
        self.agreement.prop_da = prop;
        // Agreement: the target is the minimum of our own proposal and the latest proposals
        // of all live peers that have finished listening. A drop shows at once. A rise shows
        // only when every such peer has sent a proposal since our own last changed (so it
        // has seen the change too) and half a period has passed (a string that just left
        // the closed set has had time to open).
        //
        // Our own proposal enters twice: fresh (a drop of ours shows at once, S4) and as we last
        // broadcast it, the value every other peer holds for us. Each peer computes the same
        // fresh proposal from the same string states, so with the broadcast values the minimum
        // is taken over the same set on every peer. With only the fresh one, each peer mixed its
        // own fresh proposal with the others' older ones, and while the states moved with every
        // message (sensor noise; see `share_ocv_hold_v` for the other half of the remedy) the
        // peers' minima differed for seconds (processes mode, S5: 20 periods).
        let (mut d_da, mut c_da) = prop;
        if let Some((d, c)) = self.agreement.sent_prop_da {
            d_da = d_da.min(d);
            c_da = c_da.min(c);
        }
        let mut fresh = true;
        for (_, r) in self.alive_remotes() {
            if r.phase() == Phase::Listening {
                continue;
            }
            if let Some(d) = r.detail {
                d_da = d_da.min(d.prop_dcl_da);
                c_da = c_da.min(d.prop_ccl_da);
            }
            fresh &= r.detail.is_some() && r.detail_at >= self.agreement.prop_changed_at;
        }
        let may_rise = fresh && now.saturating_sub(self.agreement.prop_changed_at) >= self.cfg.heartbeat_ms as u64 / 2;
        let step = |cur: u32, target: u32| if target < cur || may_rise { target } else { cur };
        self.agreement.reported_da = (step(self.agreement.reported_da.0, d_da), step(self.agreement.reported_da.1, c_da));
        let (d_da, c_da) = self.agreement.reported_da;
        self.out.closed_set = closed_set;
        self.out.system_dcl_a = d_da as f64 / 10.0;
        self.out.system_ccl_a = c_da as f64 / 10.0;
    }

    /// Per-string set-point for strings with DC/DC converters: the total current of the
    /// closed strings, shared in proportion to weights 1 ± gain·(SOC_i − mean SOC) (more
    /// discharge from fuller strings, more charge into emptier ones), clamped to this
    /// string's own limits.
    pub(super) fn dcdc_setpoint(&self, local: &LocalState, closed_set: u64) -> f64 {
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

    pub(super) fn update_speaker(&mut self) {
        // The lowest live id that has finished listening (a peer that just started does
        // not know the limits yet), on the side with a quorum.
        let speaker = if self.out.quorum {
            let me = self.cfg.node_id;
            let mut ids: Vec<u16> = self
                .alive_remotes()
                .filter(|(_, r)| r.phase() != Phase::Listening)
                .map(|(id, _)| id)
                .collect();
            if self.arb.phase != Phase::Listening {
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
}
