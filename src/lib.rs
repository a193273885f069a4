//! wconf: a cluster configuration document and lock table, persisted through
//! one write-ahead log.
//!
//! The crate is a library first; the binaries are thin. Modules that need
//! actix or the HTTP stack sit behind the `daemon` feature, so the WAL engine,
//! the codec and the pure state machines build without them (`wal-tools`
//! depends on exactly that subset).

pub mod codec;
pub mod replay;
pub mod state;
pub mod wal;
