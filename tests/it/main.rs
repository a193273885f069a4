//! wconf's integration tests, in one binary so the crate links once and the
//! modules share helpers: each module below owns one concern.
//!
//! - `wal_props`: recovery against damage (cuts, torn writes, bit flips,
//!   garbage) on random logs written by the real writer.
//! - `golden`: checked-in segment files of format version 1, which every later
//!   version must still decode.
//! - `daemon`: the guarantees of `wconfd` (G1, G2, G5, G8, G9), against the
//!   real binary, killed with SIGKILL and restarted.

mod daemon;
mod fairness;
mod golden;
mod wal_props;
