//! What the WAL benchmarks share: where their data lives (on a real disk,
//! never tmpfs), whether criterion is measuring or only smoke-testing, and the
//! one-line report format that `run-wal-benches.sh` parses.
//!
//! Each bench binary compiles this module and uses only part of it.
#![allow(dead_code)]

use std::fmt::Display;
use std::path::PathBuf;

/// Overrides the directory the benchmarks write to. It must be on the disk
/// whose fsync is being measured.
pub const DIR_ENV: &str = "WCONF_BENCH_DIR";

/// Prefix of the report lines on stderr, one line a benchmark:
/// `wconf-bench <criterion id> key=value key=value ...`. Criterion reports
/// time and throughput; these lines carry what it cannot see (records per
/// fsync, fsync latency, record counts).
pub const REPORT_PREFIX: &str = "wconf-bench";

const RAMFS_MAGIC: i64 = 0x8584_58f6;

/// The directory for benchmark data: `$WCONF_BENCH_DIR`, else
/// `target/tmp/wconf-bench`. Created if missing. Panics on tmpfs or ramfs,
/// where fdatasync costs nothing and the numbers would mean nothing.
pub fn bench_dir() -> PathBuf {
    let dir = std::env::var_os(DIR_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("wconf-bench"));
    std::fs::create_dir_all(&dir)
        .unwrap_or_else(|e| panic!("create bench directory {}: {e}", dir.display()));
    let fs = nix::sys::statfs::statfs(&dir)
        .unwrap_or_else(|e| panic!("statfs {}: {e}", dir.display()))
        .filesystem_type();
    assert!(
        fs != nix::sys::statfs::TMPFS_MAGIC && fs.0 as i64 != RAMFS_MAGIC,
        "{} is on tmpfs/ramfs, where fsync is free; set {DIR_ENV} to a directory on a real disk",
        dir.display()
    );
    dir
}

/// True when criterion measures (`cargo bench`), false when it only runs
/// each benchmark once to see that it works (`cargo test --benches`,
/// `cargo bench -- --test`). Mirrors criterion's own test-mode rule.
pub fn measuring() -> bool {
    let has = |flag: &str| std::env::args().any(|a| a == flag);
    has("--bench") && !has("--test")
}

/// Prints one report line to stderr, in the format of `REPORT_PREFIX`.
pub fn report(id: &str, fields: &[(&str, &dyn Display)]) {
    let mut line = format!("{REPORT_PREFIX} {id}");
    for (key, value) in fields {
        line.push_str(&format!(" {key}={value}"));
    }
    eprintln!("{line}");
}
