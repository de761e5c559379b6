//! Membership: the configured members and what this peer knows of each (heard, alive,
//! incarnation, sequence numbers, their flags, grants and state), failure detection, quorum,
//! restarts of others and duplicate ids (two nodes with one id).

use crate::wire::{Body, Coord, DetailBody, Flags, LimitsBody, Message};

use super::{bit, Event, Peer, Phase, RxError, DUP_HOLD_PERIODS};

/// What a node persists per sender so that a restart does not forget what it had accepted
/// (brief S7 freshness): the sender's boot and the last message counter accepted from it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ReceiveCounter {
    pub sender: u16,
    pub incarnation: u16,
    pub counter: u32,
}

/// Membership sub-state: who is configured, who is alive, quorum, restarts and duplicate ids.
#[derive(Clone, Debug)]
pub(super) struct Membership {
    pub(super) inc: u16,
    pub(super) member_mask: u64,
    pub(super) remotes: Vec<Remote>, // index = id (0 unused)
    pub(super) started_at: Option<u64>,
    pub(super) had_quorum: bool,
    pub(super) dup_self_until: u64,
    /// Every other member was heard clean since our start (see `Remote::clean_since_start`):
    /// no grant we may have given before a restart can be in use, and no grant to our old
    /// incarnation can be alive, so the start inhibit and the ticket guard end early.
    pub(super) start_clear: bool,
    /// The last message with our id and a lower boot: (boot, newest counter, when heard).
    pub(super) own_other: Option<(u16, u32, u64)>,
}

/// What a peer knows of another member.
#[derive(Clone, Debug, Default)]
pub(super) struct Remote {
    pub(super) heard: bool,
    pub(super) inc: u16,
    pub(super) last_counter: u32,
    pub(super) last_heard: u64,
    pub(super) prev_inc: Option<u16>,
    pub(super) prev_last_counter: u32,
    pub(super) prev_heard: u64,
    pub(super) dup_until: u64,
    pub(super) flags: Flags,
    pub(super) coord: Coord,
    pub(super) limits: Option<LimitsBody>,
    pub(super) detail: Option<DetailBody>,
    pub(super) alive: bool,
    /// Heard since our start, neither requesting/closing nor granting to us: anything it
    /// does from then on concerns our new incarnation, not a forgotten one.
    pub(super) clean_since_start: bool,
    /// When the last Detail (with its proposal) arrived.
    pub(super) detail_at: u64,
    /// After a silence (not alive to us), or first heard after our restart: the first message
    /// that came, (boot, counter, when); it waits for a second, later one before anything of
    /// that sender counts (see `receive`).
    pub(super) back: Option<(u16, u32, u64)>,
    /// What a previous run of this node had accepted from this sender, (boot, counter), restored
    /// from the node's state (`Peer::restore_receive_counters`); consulted only until the sender
    /// is heard in this run: its first message must be newer (see `receive`).
    pub(super) restored: Option<(u16, u32)>,
}

impl Remote {
    pub(super) fn phase(&self) -> Phase {
        Phase::from_u8(self.flags.phase)
    }
}

/// Freshness of a message of the same boot from a sender that was silent to us (not heard for
/// `fail_timeout_ms`: a partition, a loss burst). Everything it sent meanwhile was missed by us
/// only, so a replay of it passes the counter check and would make us act on a stale state of
/// the sender (adversarial seed 10018931: a replay of member 3's "closed" message, sent while it
/// was cut off from member 1 and before it isolated itself, brought it back to member 1 as a
/// closed string; member 1's limits then counted a string that was open: S4).
///
/// A message whose counter moved on as far as one per heartbeat over the silence is taken at
/// once (the usual heal). Otherwise two rules, both sound for a live sender:
/// - rate: a live sender sends at least one message per `heartbeat_ms + fail_timeout_ms` of its
///   clock (one per heartbeat, on a control tick shorter than `fail_timeout_ms`, which the
///   system check demands), so its counter has moved on by at least the silence divided by that,
///   less one; an older message (from early in the silence) is stale;
/// - continuation: the first message after the silence only marks the sender as coming back;
///   a second one with a higher counter, at least half a heartbeat later and within
///   `fail_timeout_ms`, is taken. A single replayed message never is; a replayed sequence must
///   also be paced like the live sender and come from late in the silence (the rate rule).
fn back_fresh(cfg: &crate::PeerConfig, r: &mut Remote, counter: u32, now: u64) -> bool {
    let hb = cfg.heartbeat_ms as u64;
    let fail = cfg.fail_timeout_ms as u64;
    let rho = (cfg.max_drift_ppm as u64).min(100_000);
    // the silence on the sender's clock, at least
    let silent = now.saturating_sub(r.last_heard) * (1_000_000 - 2 * rho) / 1_000_000;
    let min_sent = (silent / (hb + fail).max(1)).saturating_sub(1);
    let moved = u64::from(counter.wrapping_sub(r.last_counter));
    if moved < min_sent {
        return false;
    }
    // As far on as a sender at one message per heartbeat would be, less two heartbeats for
    // delay and jitter: from the end of the silence, taken at once (a heal costs nothing).
    // Two heartbeats, not the three of an integer `silent / hb` with the same slack: a replay of
    // the last message a crashed sender sent, 1 message on after 378 ms of silence, passed
    // that (seed 18450: three peers took member 4 back 275 ms after it crashed and counted
    // its string closed: S4).
    if (moved + 2) * hb.max(1) >= silent {
        return true;
    }
    let inc = r.inc;
    continued(cfg, r, inc, counter, now)
}

/// The first message of a sender after a restart of ours, when we remember what it had sent
/// before (restored receive counters): taken once a second one confirms it (see
/// [`continued`]).
fn first_contact_confirmed(cfg: &crate::PeerConfig, r: &mut Remote, inc: u16, counter: u32, now: u64) -> bool {
    continued(cfg, r, inc, counter, now)
}

/// The continuation rule: the first message only marks the sender as (back) in contact; a
/// second of the same boot with a higher counter, at least half a heartbeat later and within
/// `fail_timeout_ms`, confirms it, if its counter moved on no faster than a live sender's
/// (one heartbeat plus event messages at most every quarter period: ≤ 4 per heartbeat, + 2 for
/// jitter). Two replays picked from a capture rarely make such a pair; a replayed sequence
/// paced like the live sender still does (docs/security.md, "What is not covered yet").
fn continued(cfg: &crate::PeerConfig, r: &mut Remote, inc: u16, counter: u32, now: u64) -> bool {
    let hb = (cfg.heartbeat_ms as u64).max(1);
    let fail = cfg.fail_timeout_ms as u64;
    match r.back {
        Some((i, c, at)) if i == inc && counter > c && now.saturating_sub(at) >= hb / 2 && now.saturating_sub(at) <= fail => {
            let pace_max = 4 * now.saturating_sub(at) / hb + 2;
            if u64::from(counter - c) <= pace_max {
                return true;
            }
            r.back = Some((inc, counter, now));
            false
        }
        Some((i, c, at)) if i == inc && counter <= c && now.saturating_sub(at) <= fail => false,
        _ => {
            r.back = Some((inc, counter, now));
            false
        }
    }
}

impl Peer {
    /// Take an authenticated message (its tag was verified by the caller). Freshness (S7):
    /// the boot counter may only grow (a higher boot is a restart), and within one boot the
    /// message counter must grow; the last counter of every sender is kept for good, so a
    /// replay of a killed node's messages is stale however late it comes. An earlier boot is
    /// a replay unless it keeps sending counters it never used (a second node with that id).
    pub(super) fn receive(&mut self, now: u64, m: &Message) -> Result<(), RxError> {
        if self.membership.member_mask & bit(m.sender) == 0 {
            return Err(RxError::UnknownSender(m.sender));
        }
        let hold = DUP_HOLD_PERIODS * self.cfg.heartbeat_ms as u64;
        let fail = self.cfg.fail_timeout_ms as u64;
        if m.sender == self.cfg.node_id {
            if m.incarnation == self.membership.inc {
                if m.counter < self.emission.counter {
                    return Err(RxError::OwnEcho);
                }
                // A counter of our own boot that we never sent (a replay can only repeat what
                // was sent; a forgery does not pass the tag): another node with our id and our
                // boot (two state dirs that started as often). Move to a higher boot, so that
                // every peer sees two boots of one id and raises the duplicate-id alarm.
                let jump = 1 + self.arb.rng.below(4) as u16;
                self.membership.inc = self.membership.inc.wrapping_add(jump);
                self.emission.counter = 0;
                self.membership.dup_self_until = now + hold;
                self.pending.push(Event::DuplicateId { id: m.sender, incarnations: (self.membership.inc, m.incarnation) });
                return Err(RxError::DuplicateId(m.sender));
            }
            // Our id, another boot. A lower boot that is not sending new counters is a replay of
            // one of our past runs; one that is, or a higher boot, is another node with our id.
            if m.incarnation < self.membership.inc {
                let o = &mut self.membership.own_other;
                let live = matches!(*o, Some((inc, c, at)) if inc == m.incarnation && m.counter > c && now.saturating_sub(at) <= 4 * fail);
                let newest = match *o {
                    Some((inc, c, _)) if inc == m.incarnation => m.counter.max(c),
                    _ => m.counter,
                };
                *o = Some((m.incarnation, newest, now));
                if !live {
                    return Err(RxError::OldBoot);
                }
            }
            self.membership.dup_self_until = now + hold;
            self.pending.push(Event::DuplicateId {
                id: m.sender,
                incarnations: (self.membership.inc, m.incarnation),
            });
            return Err(RxError::DuplicateId(m.sender));
        }
        let r = &mut self.membership.remotes[m.sender as usize];
        if !r.heard {
            // First contact in this run. A previous run's memory (restored with the node state)
            // makes it stricter, never looser: an earlier boot than the one we had accepted is a
            // replay, and so is a counter of that boot no newer than the last we had accepted (a
            // replay of a dead peer's messages captured before our restart). A higher boot is a
            // restart of the sender, proven by the tag, as for a sender heard in this run.
            if let Some((inc, c)) = r.restored {
                if m.incarnation < inc {
                    return Err(RxError::OldBoot);
                }
                if m.incarnation == inc && m.counter == c {
                    return Err(RxError::Duplicate);
                }
                if m.incarnation == inc && m.counter < c {
                    return Err(RxError::Stale);
                }
                // Newer than what we had accepted, yet maybe sent while we were down and replayed
                // now, after the sender died (adversarial seed 10088969: member 1 crashed, a
                // replay of a "closed" message it sent while member 2 was down made the
                // restarted member 2 count member 1's open string closed: S4). Nothing in the
                // message proves when it was sent, so it only marks the sender as heard again;
                // a second message of the same boot confirms it (continuation, as after a
                // silence). Costs a restarted node one message per sender.
                if !first_contact_confirmed(&self.cfg, r, m.incarnation, m.counter, now) {
                    return Err(RxError::Stale);
                }
            }
            r.heard = true;
            r.inc = m.incarnation;
        } else if m.incarnation == r.inc {
            if m.counter == r.last_counter {
                return Err(RxError::Duplicate);
            }
            if m.counter < r.last_counter {
                return Err(RxError::Stale);
            }
            if now.saturating_sub(r.last_heard) > fail && !back_fresh(&self.cfg, r, m.counter, now) {
                return Err(RxError::Stale);
            }
        } else if m.incarnation > r.inc {
            // A restart (proven by the tag): forget what the old boot said.
            r.prev_inc = Some(r.inc);
            r.prev_last_counter = r.last_counter;
            r.prev_heard = r.last_heard;
            r.inc = m.incarnation;
            r.limits = None;
            r.detail = None;
            r.coord = Coord::default();
            self.pending.push(Event::PeerRestarted { id: m.sender, incarnation: m.incarnation });
        } else {
            if r.prev_inc == Some(m.incarnation)
                && m.counter > r.prev_last_counter
                && now.saturating_sub(r.prev_heard) <= 4 * fail
            {
                // The previous boot speaks again, with counters it never used: two nodes.
                r.dup_until = now + hold;
                r.prev_last_counter = m.counter;
                r.prev_heard = now;
                self.pending.push(Event::DuplicateId {
                    id: m.sender,
                    incarnations: (r.inc, m.incarnation),
                });
                return Err(RxError::DuplicateId(m.sender));
            }
            return Err(RxError::OldBoot);
        }
        r.back = None;
        r.last_counter = m.counter;
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

    /// The receive counters to persist with the node state: per sender heard in this run (or
    /// remembered from a previous one), the boot and the last message counter accepted.
    pub fn receive_counters(&self) -> Vec<ReceiveCounter> {
        let mut out = Vec::new();
        for (id, r) in self.membership.remotes.iter().enumerate() {
            if id == 0 || id as u16 == self.cfg.node_id || self.membership.member_mask & bit(id as u16) == 0 {
                continue;
            }
            let kept = if r.heard { Some((r.inc, r.last_counter)) } else { r.restored };
            if let Some((incarnation, counter)) = kept {
                out.push(ReceiveCounter { sender: id as u16, incarnation, counter });
            }
        }
        out
    }

    /// Restore the receive counters a previous run of this node persisted (before the first
    /// message of this run). They only make the peer stricter: until a sender is heard, its first
    /// message must be of that boot with a higher counter, or of a higher boot. Entries for ids
    /// that are not other members are ignored (a changed member list), and so are entries of
    /// senders already heard in this run; of two entries for one sender the newer counts.
    /// Returns how many entries were taken.
    pub fn restore_receive_counters(&mut self, counters: &[ReceiveCounter]) -> usize {
        let mut taken = 0;
        for rc in counters {
            let id = rc.sender;
            if id == 0 || id == self.cfg.node_id || id >= 64 || self.membership.member_mask & bit(id) == 0 {
                continue;
            }
            let r = &mut self.membership.remotes[id as usize];
            if r.heard {
                continue;
            }
            let new = (rc.incarnation, rc.counter);
            r.restored = Some(match r.restored {
                Some(old) if old >= new => old,
                _ => new,
            });
            taken += 1;
        }
        taken
    }

    pub(super) fn update_membership(&mut self, now: u64) {
        let fail = self.cfg.fail_timeout_ms as u64;
        for &id in &self.cfg.members {
            if id == self.cfg.node_id {
                continue;
            }
            let r = &mut self.membership.remotes[id as usize];
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
        if quorum != self.membership.had_quorum {
            self.membership.had_quorum = quorum;
            self.out.events.push(if quorum { Event::QuorumGained } else { Event::QuorumLost });
        }
        self.out.live_set = live;
        self.out.quorum = quorum;
    }

    pub(super) fn live_set(&self) -> u64 {
        let mut s = bit(self.cfg.node_id);
        for &id in &self.cfg.members {
            if id != self.cfg.node_id && self.membership.remotes[id as usize].alive {
                s |= bit(id);
            }
        }
        s
    }

    pub(super) fn alive_remotes(&self) -> impl Iterator<Item = (u16, &Remote)> + '_ {
        self.cfg
            .members
            .iter()
            .copied()
            .filter(move |&id| id != self.cfg.node_id)
            .map(move |id| (id, &self.membership.remotes[id as usize]))
            .filter(|(_, r)| r.alive)
    }

    pub(super) fn someone_else_closing(&self) -> bool {
        self.alive_remotes().any(|(_, r)| r.phase().is_closing())
    }

    /// The first tick fixes our start time. A restart with the main contactors still closed
    /// adopts them (opening under load is not safer); otherwise listen first. We do not know
    /// which tickets we used before a restart: treat all as just used.
    pub(super) fn start(&mut self, now: u64, local: &super::LocalState) -> u64 {
        *self.membership.started_at.get_or_insert_with(|| {
            self.arb.ticket_used_at = [Some(now); 16];
            if local.feedback.main_closed() && !local.fault {
                self.arb.phase = Phase::Closed;
                self.arb.command = super::Contactors::CLOSED;
            }
            self.emission.next_hb = now;
            now
        })
    }

    /// Every other member heard clean since our start: the start inhibit and the ticket
    /// guard end early (see `Remote::clean_since_start`).
    pub(super) fn update_start_clear(&mut self) {
        if !self.membership.start_clear {
            let me = self.cfg.node_id;
            if self.cfg.members.iter().all(|&id| id == me || self.membership.remotes[id as usize].clean_since_start) {
                self.membership.start_clear = true;
                self.arb.ticket_used_at = [None; 16];
            }
        }
    }
}
