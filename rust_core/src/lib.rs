//! mbms-core: the pack engine and the plant simulator of mbms, pure Rust.
//!
//! Nothing in this crate reads a clock, a file, a socket or a random source: time,
//! measurements and seeds are arguments. The PyO3 bindings (`mbms._core`) live in
//! [`py`] behind the `python` feature so that `cargo test` links without libpython.

pub mod balancing;
pub mod cell_model;
pub mod cell_tables;
pub mod config;
pub mod engine;
pub mod limits;
pub mod protection;
pub mod soc_ekf;
pub mod soh;
pub mod plant;

#[cfg(feature = "python")]
mod py;
pub mod node;
pub mod fastsim;
