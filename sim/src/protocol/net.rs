//! Network models of the simulator.
//!
//! - CAN-like: one bus, one global delivery order (frames serialised at the bit rate),
//!   each receiver independently misses a message (inconsistent omission) or receives it
//!   twice (a retransmission after an error frame); a disconnected node neither sends nor
//!   receives.
//! - UDP-like: per link independent loss, uniform delay (so reordering), duplicates, and
//!   partitions that may be one-way.

use crate::rng::SplitMix64;

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum NetKind {
    Can,
    Udp,
}

#[derive(Clone, Debug)]
pub struct Partition {
    pub start_us: u64,
    pub end_us: u64,
    /// Directed links (from index, to index) that drop everything in [start, end).
    pub blocked: Vec<(usize, usize)>,
}

#[derive(Clone, Debug)]
pub struct NetModel {
    pub kind: NetKind,
    pub loss: f64,
    pub dup: f64,
    pub delay_min_us: u64,
    pub delay_max_us: u64,
    pub partitions: Vec<Partition>,
    /// Faults (loss, duplicates, partitions) only before this time; a healthy network after.
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
            heal_us,
            bus_free_us: 0,
        }
    }

    pub fn blocked(&self, t_us: u64, from: usize, to: usize) -> bool {
        self.partitions
            .iter()
            .any(|p| t_us >= p.start_us && t_us < p.end_us && p.blocked.contains(&(from, to)))
    }

    /// Where and when a message broadcast by `from` at `t_us` arrives.
    pub fn broadcast(
        &mut self,
        rng: &mut SplitMix64,
        t_us: u64,
        from: usize,
        n: usize,
        frame_us: u64,
    ) -> Vec<Delivery> {
        let faulty = t_us < self.heal_us;
        let mut out = Vec::with_capacity(n);
        match self.kind {
            NetKind::Can => {
                let start = self.bus_free_us.max(t_us);
                let at = start + frame_us;
                self.bus_free_us = at;
                for to in 0..n {
                    if to == from || (faulty && self.blocked(t_us, from, to)) {
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
                    if to == from || (faulty && self.blocked(t_us, from, to)) {
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
        out
    }
}
