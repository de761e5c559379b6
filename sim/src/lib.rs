//! mbms-sim: the test bench of mbms, never part of a controller build.
//!
//! Sans-IO like the cores it drives: time, inputs and seeds are arguments; nothing here reads
//! a clock, a socket or a random source, so every run is replayable from its seed.
//!
//! Modules, one concept each:
//! - [`plant`]: the parallel-string plant (cells, contactors, sensors, bus, load, faults).
//! - [`fastsim`]: the fast mode of `mbms sim`: one plant, N `NodeCore`s, a simulated peer
//!   network, on a virtual clock.
//! - [`monitor`]: the one safety monitor (S1–S6), used by every simulation mode.
//! - [`network`]: the one network model (loss, delay, duplicates, partitions; CAN- or UDP-like).
//! - [`scenario`]: the scenario file of `mbms sim` (one serde schema, normalised here).
//! - [`rng`]: the one PRNG module (SplitMix64 from the protocol crate, xoshiro256** + ziggurat).
//! - [`protocol`]: the deterministic protocol simulator (N `Peer`s, a small electrical model,
//!   crashes, drift), on the one network model.

pub mod fastsim;
pub mod monitor;
pub mod network;
pub mod plant;
pub mod protocol;
pub mod rng;
pub mod scenario;
