//! mbms-consensus: the leader-less peer coordination core (sans-IO).
//!
//! Time, inputs and seeds come in as arguments; nothing here reads a clock,
//! a socket or a random source. The same [`Peer`] runs in the real-time node
//! runtime (Python, via `mbms._core`) and in the deterministic protocol simulator
//! (`mbms_sim::protocol`, crate `mbms-sim`), which checks the safety rules S1–S7 of
//! the product brief after every step.
//!
//! Modules, one concept each:
//! - [`config`]: [`PeerConfig`] and its validation.
//! - [`wire`]: the fixed-layout message format (25 bytes, a 32-bit tag).
//! - [`auth`]: message authentication (CMAC-AES-128, SecOC model) and key rotation.
//! - [`segment`]: the message as three classic CAN frames (or one CAN FD frame) and the reassembler.
//! - [`busload`]: CAN frame bit counts (bit stuffing) and bus load.
//! - [`sharing`]: the current-sharing formula (brief §4) and the N−1 rule.
//! - [`peer`]: the protocol state machine ([`Peer`]).
//! - [`prng`]: a seeded SplitMix64 (the peer's request jitter; the simulators seed from it too).

pub mod auth;
pub mod busload;
pub mod config;
pub mod member_set;
pub mod peer;
pub mod prng;
pub mod segment;
pub mod sharing;
pub mod wire;

pub use auth::{Auth, AuthError};
pub use config::{ConsensusConfigError, PeerConfig};
pub use peer::{
    AbortReason, Contactors, Counters, Event, LocalState, Peer, PeerOutput, Phase, ReceiveCounter, RxError,
};

/// Cases per fuzzed decoder in the proptest suites: the CI default, or `MBMS_FUZZ_CASES` for the
/// documented long run (`MBMS_FUZZ_CASES=1000000 cargo test --release -p mbms-consensus`).
/// Public (hidden) so the other crates' proptest suites (rust_core's config decoders) read the
/// same variable; only tests call it.
#[doc(hidden)]
pub fn fuzz_cases(default: u32) -> u32 {
    std::env::var("MBMS_FUZZ_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(default)
}
