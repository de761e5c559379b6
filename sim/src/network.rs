//! The one network model of the simulators (the protocol simulator and the fast simulator):
//! how a peer message broadcast by one node reaches the others. Draws come from the caller's
//! [`SplitMix64`] (the one PRNG of `mbms-sim`), so a run is replayed from its seed.
//!
//! - CAN-like ([`NetKind::Can`]): one bus, one global delivery order (frames serialised at the
//!   bit rate); each receiver independently misses a message (inconsistent omission) or receives
//!   it twice (a retransmission after an error frame).
//! - UDP-like ([`NetKind::Udp`]): per receiver independent loss, uniform delay (so reordering),
//!   duplicates.
//!
//! Who hears whom: a partition group per node, set at run time (messages cross only within a
//! group: `mbms sim`'s `partition` events), and scheduled directed-link partitions (which may
//! be one-way: the protocol simulator's schedules). Loss, duplication, delay and the scheduled
//! partitions act only before `heal_us` (a healthy network after it); the groups always act.

use crate::rng::SplitMix64;

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum NetKind {
    Can,
    Udp,
}

/// Directed links (from index, to index) that drop everything in [start, end).
#[derive(Clone, Debug, PartialEq)]
pub struct Partition {
    pub start_us: u64,
    pub end_us: u64,
    pub blocked: Vec<(usize, usize)>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct NetModel {
    pub kind: NetKind,
    /// Probability that one receiver misses one message (inconsistent omission).
    pub loss: f64,
    /// Probability that a delivered message is delivered twice.
    pub dup: f64,
    /// Delay of a delivery, uniform in [min, max] (µs); max > min reorders messages.
    pub delay_min_us: u64,
    pub delay_max_us: u64,
    pub partitions: Vec<Partition>,
    /// Partition group per node (index = node index); messages cross only within a group.
    /// Empty: one group.
    pub group: Vec<u8>,
    /// Loss, duplicates, delay spread and scheduled partitions only before this time.
    pub heal_us: u64,
    bus_free_us: u64,
}

/// One delivery: (time µs, receiver index).
pub type Delivery = (u64, usize);

impl NetModel {
    pub fn new(kind: NetKind, loss: f64, dup: f64, delay: (u64, u64), partitions: Vec<Partition>, heal_us: u64) -> Self {
        Self {
            kind,
            loss,
            dup,
            delay_min_us: delay.0,
            delay_max_us: delay.1.max(delay.0),
            partitions,
            group: Vec::new(),
            heal_us,
            bus_free_us: 0,
        }
    }

    /// A healthy UDP-like network of `n` nodes in one group, whose faults are set at run time
    /// and never heal by schedule (the fast simulator's network).
    pub fn healthy(n: usize) -> Self {
        Self { group: vec![0; n], ..Self::new(NetKind::Udp, 0.0, 0.0, (0, 0), Vec::new(), u64::MAX) }
    }

    /// No loss and one group: the conditions under which agreement (S5) is due.
    pub fn is_healthy(&self) -> bool {
        self.loss == 0.0 && self.group.iter().all(|&g| g == self.group[0])
    }

    /// The maximum extra delay (ms), as `mbms sim`'s `delay` event sets it.
    pub fn set_max_delay_ms(&mut self, max_ms: u64) {
        self.delay_min_us = 0;
        self.delay_max_us = max_ms * 1000;
    }

    pub fn max_delay_ms(&self) -> u64 {
        self.delay_max_us / 1000
    }

    /// The partition group of node `k` (0 if there are no groups).
    pub fn group_of(&self, k: usize) -> u8 {
        self.group.get(k).copied().unwrap_or(0)
    }

    pub fn blocked(&self, t_us: u64, from: usize, to: usize) -> bool {
        self.group_of(from) != self.group_of(to)
            || (t_us < self.heal_us
                && self.partitions.iter().any(|p| t_us >= p.start_us && t_us < p.end_us && p.blocked.contains(&(from, to))))
    }

    /// Where and when a message broadcast by `from` at `t_us` arrives (`frame_us`: its time on
    /// a CAN bus).
    pub fn broadcast(&mut self, rng: &mut SplitMix64, t_us: u64, from: usize, n: usize, frame_us: u64) -> Vec<Delivery> {
        let mut out = Vec::with_capacity(n);
        self.broadcast_into(rng, t_us, from, n, frame_us, &mut out);
        out
    }

    /// [`broadcast`](Self::broadcast) appending to `out` (no allocation per message).
    pub fn broadcast_into(&mut self, rng: &mut SplitMix64, t_us: u64, from: usize, n: usize, frame_us: u64, out: &mut Vec<Delivery>) {
        let faulty = t_us < self.heal_us;
        match self.kind {
            NetKind::Can => {
                let start = self.bus_free_us.max(t_us);
                let at = start + frame_us;
                self.bus_free_us = at;
                for to in 0..n {
                    if to == from || self.blocked(t_us, from, to) {
                        continue;
                    }
                    if faulty && rng.chance(self.loss) {
                        continue;
                    }
                    out.push((at, to));
                    if faulty && rng.chance(self.dup) {
                        out.push((at + frame_us, to));
                    }
                }
            }
            NetKind::Udp => {
                for to in 0..n {
                    if to == from || self.blocked(t_us, from, to) {
                        continue;
                    }
                    if faulty && rng.chance(self.loss) {
                        continue;
                    }
                    let span = self.delay_max_us - self.delay_min_us;
                    let d = if faulty { self.delay_min_us + rng.below(span + 1) } else { self.delay_min_us };
                    out.push((t_us + d, to));
                    if faulty && rng.chance(self.dup) {
                        out.push((t_us + d + rng.below(span + 1), to));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_split_and_schedules_heal() {
        let mut rng = SplitMix64::new(1);
        let mut net = NetModel::healthy(4);
        net.group = vec![0, 0, 1, 1];
        let to: Vec<usize> = net.broadcast(&mut rng, 0, 0, 4, 0).into_iter().map(|d| d.1).collect();
        assert_eq!(to, vec![1]);
        assert!(!net.is_healthy());
        let part = Partition { start_us: 0, end_us: 10, blocked: vec![(0, 1)] };
        let mut net = NetModel::new(NetKind::Can, 0.0, 0.0, (0, 0), vec![part], 5);
        assert!(net.blocked(1, 0, 1) && !net.blocked(1, 1, 0));
        assert!(!net.blocked(6, 0, 1), "healed");
        assert_eq!(net.broadcast(&mut rng, 1, 0, 2, 100), Vec::<Delivery>::new());
    }

    #[test]
    fn delay_spreads_and_loss_drops() {
        let mut rng = SplitMix64::new(7);
        let mut net = NetModel::healthy(2);
        net.set_max_delay_ms(50);
        let ds: Vec<u64> = (0..200).flat_map(|_| net.broadcast(&mut rng, 1_000, 0, 2, 0)).map(|d| d.0 - 1_000).collect();
        assert!(ds.iter().all(|&d| d <= 50_000) && ds.iter().any(|&d| d > 25_000));
        net.loss = 1.0;
        assert!(net.broadcast(&mut rng, 0, 0, 2, 0).is_empty());
    }
}
