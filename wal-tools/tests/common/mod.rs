//! Helpers shared by the wal-tools test binaries: small logs written by the
//! real WAL writer.

// Each test binary compiles this module and uses only part of it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

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
    segments(dir)
}

/// The segment files of `dir`, in LSN order.
pub fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut segments: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "wal"))
        .collect();
    segments.sort();
    segments
}

/// What a `wal-dump` run printed, and its exit code.
pub struct Out {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `wal-dump` with `args`.
pub fn dump(args: &[&str]) -> Out {
    let out = Command::new(env!("CARGO_BIN_EXE_wal-dump"))
        .args(args)
        .output()
        .unwrap();
    Out {
        code: out.status.code().unwrap(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}
