//! mbms-consensus: the leader-less peer coordination core (sans-IO).
//!
//! Time, inputs and seeds come in as arguments; nothing here reads a clock,
//! a socket or a random source. The same [`Peer`] runs in the real-time node
//! runtime (Python, via `mbms._core`) and in the deterministic protocol simulator
//! (`mbms_sim::protocol`, crate `mbms-sim`), which checks the safety rules S1–S6 of
//! the product brief after every step.
//!
//! Modules, one concept each:
//! - [`config`]: [`PeerConfig`] and its validation.
//! - [`wire`]: the msgpack message format (≤ 64 bytes, one CAN FD frame).
//! - [`segment`]: classic-CAN segmentation of a message into 8-byte frames and the reassembler.
//! - [`busload`]: CAN frame bit counts (bit stuffing) and bus load.
//! - [`sharing`]: the current-sharing formula (brief §4) and the N−1 rule.
//! - [`peer`]: the protocol state machine ([`Peer`]).
//! - [`prng`]: a seeded SplitMix64 (the peer's request jitter; the simulators seed from it too).

pub mod busload;
pub mod config;
pub mod member_set;
pub mod peer;
pub mod prng;
pub mod segment;
pub mod sharing;
pub mod wire;

pub use config::{ConsensusConfigError, PeerConfig};
pub use peer::{
    AbortReason, Contactors, Counters, Event, LocalState, Peer, PeerOutput, Phase, RxError,
};
