//! mbms-consensus: the leader-less peer coordination core (sans-IO).
//!
//! Time, inputs and seeds come in as arguments; nothing here reads a clock,
//! a socket or a random source.
