//! Membership: the configured members and what this peer knows of each (heard, alive,
//! incarnation, sequence numbers, their flags, grants and state), failure detection, quorum,
//! restarts of others and duplicate ids (two nodes with one id).

use crate::wire::{seq_newer, Body, Coord, DetailBody, Flags, LimitsBody, Message, SEQ_MOD};

use super::{bit, Event, Peer, Phase, RxError, DUP_HOLD_PERIODS};

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
}

/// What a peer knows of another member.
/// What a peer knows of another member.
#[derive(Clone, Debug, Default)]
pub(super) struct Remote {
    pub(super) heard: bool,
    pub(super) inc: u16,
    pub(super) last_seq: u8,
    pub(super) last_heard: u64,
    pub(super) prev_inc: Option<u16>,
    pub(super) prev_last_seq: u8,
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
}

impl Remote {
    pub(super) fn phase(&self) -> Phase {
        Phase::from_u8(self.flags.phase)
    }
}

impl Peer {
    pub(super) fn receive(&mut self, now: u64, m: &Message) -> Result<(), RxError> {
        if m.system_id != self.cfg.system_id {
            return Err(RxError::ForeignSystem(m.system_id));
        }
        if self.membership.member_mask & bit(m.sender) == 0 {
            return Err(RxError::UnknownSender(m.sender));
        }
        let hold = DUP_HOLD_PERIODS * self.cfg.heartbeat_ms as u64;
        if m.sender == self.cfg.node_id {
            if m.incarnation == self.membership.inc {
                return Err(RxError::OwnEcho);
            }
            self.membership.dup_self_until = now + hold;
            self.pending.push(Event::DuplicateId {
                id: m.sender,
                incarnations: (self.membership.inc, m.incarnation),
            });
            return Err(RxError::DuplicateId(m.sender));
        }
        let fail = self.cfg.fail_timeout_ms as u64;
        let r = &mut self.membership.remotes[m.sender as usize];
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
