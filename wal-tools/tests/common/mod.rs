//! Helpers shared by the wal-tools test binaries: small logs written by the
//! real WAL writer.

// Each test binary compiles this module and uses only part of it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use wconf::wal::{Wal, WalOptions};

/// Small segments, so a hundred records span several of them.
pub fn small_options() -> WalOptions {
    WalOptions {
        segment_bytes: 4096,
        record_bytes_max: 1024,
        ..WalOptions::default()
    }
}

/// Writes `records` records of kind 1, one durable append at a time (so
/// every batch holds one record), with `payload(i)` for the i-th (from 0),
/// and returns the segment files in LSN order.
pub fn write_log(dir: &Path, records: u64, payload: impl Fn(u64) -> Vec<u8>) -> Vec<PathBuf> {
    let (wal, _) = Wal::open(dir, small_options()).unwrap();
    for i in 0..records {
        wal.append(1, payload(i)).unwrap().wait().unwrap();
    }
    wal.close().unwrap();
    let mut segments: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "wal"))
        .collect();
    segments.sort();
    segments
}
