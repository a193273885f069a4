//! wconf: a cluster configuration document and lock table, persisted through
//! one write-ahead log.
//!
//! The crate is a library first; the binaries are thin. Modules that need
//! actix or the HTTP stack sit behind the `daemon` feature, so the WAL engine,
//! the codec and the pure state machines build without them (`wal-tools`
//! depends on exactly that subset).

#[cfg(feature = "daemon")]
pub mod actors;
#[cfg(feature = "daemon")]
pub mod api;
#[cfg(feature = "daemon")]
pub mod auth;
#[cfg(feature = "daemon")]
pub mod cli;
#[cfg(feature = "daemon")]
pub mod client;
pub mod codec;
#[cfg(feature = "daemon")]
pub mod ctl;
#[cfg(feature = "daemon")]
pub mod drill;
pub mod failpoints;
#[cfg(feature = "daemon")]
pub mod loadgen;
#[cfg(feature = "daemon")]
pub mod metrics;
pub mod replay;
#[cfg(feature = "daemon")]
pub mod server;
pub mod snapshot;
pub mod state;
pub mod wal;
