//! mbms-core: the controller library of mbms, pure Rust: the cell model, the pack engine
//! (SOC, SOH, limits, protection, balancing) and the node logic ([`node::NodeCore`]).
//!
//! Nothing in this crate reads a clock, a file, a socket or a random source: time,
//! measurements and seeds are arguments. The plant and the simulators live in `mbms-sim`,
//! the PyO3 bindings (`mbms._core`) in `mbms-py`: a controller build carries neither.

pub mod balancing;
pub mod cell_model;
pub mod cell_tables;
pub mod config;
pub mod engine;
pub mod limits;
pub mod protection;
pub mod soc_ekf;
pub mod node;
pub mod soh;
