//! wconf's integration tests, in one binary so the crate links once and the
//! modules share helpers: each module below owns one concern.
//!
//! - `daemon`: the guarantees of `wconfd` (G1, G2, G5, G8, G9), against the
//!   real binary, killed with SIGKILL and restarted.

mod daemon;
