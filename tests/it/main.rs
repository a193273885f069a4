//! wconf's integration tests, in one binary so the crate links once and the
//! modules share helpers: each module below owns one concern.
//!
//! - `drill`: `wconfctl drill` end to end, the CI kill volume, and its
//!   invariant checker fed doctored histories.
//! - `failpoints` (with `--features failpoints`): SIGKILLs at every named
//!   failpoint of the write path, segment roll, snapshot and recovery.
//! - `wal_props`: recovery against damage (cuts, torn writes, bit flips,
//!   garbage) on random logs written by the real writer.
//! - `golden`: checked-in segment files of format version 1, which every later
//!   version must still decode.
//! - `access`: who may talk to `wconfd`: the socket's mode and group, the
//!   bearer token on TCP, no exposed address without a token.
//! - `api_edges`: requests that ask for nothing or are malformed answer
//!   without writing a record, and answers say what is really held.
//! - `backpressure`: a full log queue answers 503 with `Retry-After` at
//!   once, and refused requests change nothing.
//! - `daemon`: the guarantees of `wconfd` (G1, G2, G3, G5 to G9, the Unix
//!   socket, lock order), against the real binary, killed with SIGKILL and
//!   restarted.
//! - `metrics`: `GET /metrics` counts exactly what clients did, keeps its
//!   labels bounded, and answers while the lock actor is stuck.
//! - `crash_states`: simulated power loss after every storage operation of
//!   every short workload and of random long ones, each crash state
//!   recovered by the real recovery and judged by the invariants of issue 6;
//!   and storage faults (EIO, ENOSPC, bit flips, read errors).
//! - `handoff`: early lock release: a release and the grants it allows
//!   share one sync, and no client hears of a hand-off a power loss takes
//!   back (in-process on `MemStorage`).
//! - `power_loss`: G1, G2 and G4 under simulated power loss, with the daemon
//!   in-process on `MemStorage`.
//! - `service`: the `--config` file under environment and flags,
//!   `--log-format json`, completions and man pages of both binaries.
//! - `shutdown`: SIGTERM answers every request, syncs and frees the
//!   directory; a second signal exits at once; READY=1 and STOPPING=1 reach
//!   `NOTIFY_SOCKET`.
//! - `snapshots`: `POST /v1/admin/snapshot`, segment collection, restart
//!   from a snapshot, fallback from a corrupt one, refusals, and the
//!   snapshot writer's lower priority.
//! - `race`: the seed's race, lock and write-with-release under 200 SIGKILLs.
//! - `wconfctl`: the CLI against the real `wconfd`: its flows, JSON output
//!   and exit codes.

mod access;
mod api_edges;
mod backpressure;
mod bench;
mod crash_states;
mod daemon;
mod drill;
#[cfg(feature = "failpoints")]
mod failpoints;
mod fairness;
mod golden;
mod handoff;
mod lease;
mod metrics;
mod power_loss;
mod race;
mod service;
mod shutdown;
mod snapshots;
mod wal_props;
mod wconfctl;
