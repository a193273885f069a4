//! `wal-dump`: read-only inspection of wconf WAL directories. This first
//! version has `verify`; listing, stats, state and repair arrive with the
//! dump-tool issue.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use wconf::wal::recovery::scan_dir;
use wconf::wal::storage::StdStorage;
use wconf::wal::{DamageClass, WalError};

/// Exit codes of `wal-dump verify`, for scripts and drills.
const EXIT_CLEAN: u8 = 0;
const EXIT_TORN_TAIL: u8 = 1;
const EXIT_CORRUPT: u8 = 2;
const EXIT_SEQUENCE: u8 = 3;
const EXIT_USAGE_OR_IO: u8 = 64;

#[derive(Parser)]
#[command(
    name = "wal-dump",
    version,
    about = "Inspect a wconf write-ahead log (read-only)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check every segment (header, chain, CRC, LSN continuity) without
    /// changing anything.
    ///
    /// Exit codes: 0 clean; 1 torn tail (the daemon would cut it and start);
    /// 2 corruption (the daemon would refuse to start); 3 a missing or
    /// out-of-order segment; 64 usage or I/O error.
    ///
    /// Example: wal-dump verify ./wconf-data
    Verify {
        /// The data directory holding the *.wal segment files.
        dir: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() {
                EXIT_USAGE_OR_IO
            } else {
                EXIT_CLEAN
            });
        }
    };
    match cli.command {
        Command::Verify { dir } => ExitCode::from(verify(&dir)),
    }
}

fn verify(dir: &std::path::Path) -> u8 {
    if !dir.is_dir() {
        eprintln!("wal-dump: {} is not a directory", dir.display());
        return EXIT_USAGE_OR_IO;
    }
    let scan = match scan_dir(&StdStorage, dir) {
        Ok(scan) => scan,
        Err(e @ WalError::UnsupportedVersion { .. }) => {
            eprintln!("wal-dump: {e}");
            return EXIT_CORRUPT;
        }
        Err(e) => {
            eprintln!("wal-dump: {e}");
            return EXIT_USAGE_OR_IO;
        }
    };
    let records: u64 = scan.scans.iter().map(|s| s.records).sum();
    let last_lsn = scan.scans.last().map(|s| s.next_lsn - 1);
    let Some((i, p)) = scan.problem else {
        println!(
            "clean: {} segments, {records} records, last LSN {}",
            scan.segments.len(),
            last_lsn.map_or("none".to_string(), |l| l.to_string())
        );
        return EXIT_CLEAN;
    };
    let path = scan.segments[i].path.display();
    let what = format!(
        "{path} at offset {} (LSN {}): {}",
        p.offset, p.lsn, p.damage
    );
    if scan.problem_is_torn_tail() {
        println!(
            "torn tail: {what}; the daemon would cut at offset {} and keep LSNs below {}",
            p.cut_offset, p.cut_lsn
        );
        EXIT_TORN_TAIL
    } else if p.damage.class() == DamageClass::Sequence {
        println!("segment sequence broken: {what}");
        EXIT_SEQUENCE
    } else {
        println!("corrupt: {what}");
        EXIT_CORRUPT
    }
}
