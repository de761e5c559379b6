//! mbms-sim: the test bench of mbms, never part of a controller build.
//!
//! Sans-IO like the cores it drives: time, inputs and seeds are arguments; nothing here reads
//! a clock, a socket or a random source, so every run is replayable from its seed.
//!
//! Modules, one concept each:
//! - [`plant`]: the parallel-string plant (cells, contactors, sensors, bus, load, faults).
//! - [`fastsim`]: the fast mode of `mbms sim`: one plant, N `NodeCore`s, a simulated peer
//!   network, on a virtual clock.
//! - [`monitor`]: the one safety monitor (S1–S7), used by every simulation mode.
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

/// The key every simulated node of a system shares (the simulators' attacker does not know it).
/// A constant: simulations are replayable, and no real system is ever keyed with it (the node
/// runtime reads its keys from the system's key file).
pub const SIMULATION_KEY: [u8; mbms_consensus::auth::KEY_LEN] = *b"mbms-simulation!";

/// Authentication of simulated peers of system `system_id` with [`SIMULATION_KEY`].
pub fn simulation_auth(system_id: u32) -> mbms_consensus::Auth {
    mbms_consensus::Auth::new(system_id, &[SIMULATION_KEY]).expect("a valid key")
}
