//! `wal-dump`: inspection of wconf WAL directories: `list` (the default),
//! `stats`, `state`, `verify` and `follow` read through read-only maps, so
//! they are safe on a live daemon's directory; `repair --apply` is the one
//! writer, and it takes the directory's `LOCK` first.
//!
//! Exit codes (see `wal-tools/README.md`): 0 clean (for the reading
//! subcommands, also a log ending in a torn or in-flight batch); 1 torn tail
//! (`verify`, and a `repair` dry run); 2 corruption or an unknown format version; 3 a missing or
//! out-of-order segment; 64 usage or I/O errors.

mod decode;
mod follow;
mod list;
mod log;
mod progress;
mod repair;
mod salvage;
mod state;
mod stats;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use wconf::wal::recovery::scan_dir_with_progress;
use wconf::wal::storage::StdStorage;
use wconf::wal::{DamageClass, WalError};

use crate::log::{Fatal, Log};
use crate::progress::Progress;

/// Exit codes, for scripts and drills.
pub mod exit {
    pub const CLEAN: u8 = 0;
    pub const TORN_TAIL: u8 = 1;
    pub const CORRUPT: u8 = 2;
    pub const SEQUENCE: u8 = 3;
    pub const USAGE_OR_IO: u8 = 64;
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Text,
    Json,
    Ndjson,
}

#[derive(Parser)]
#[command(
    name = "wal-dump",
    version,
    about = "Inspect a wconf write-ahead log (read-only)",
    args_conflicts_with_subcommands = true,
    after_help = "Without a subcommand, wal-dump runs `list`.\n\n\
                  Examples:\n  wal-dump ./wconf-data\n  wal-dump stats ./wconf-data\n  \
                  wal-dump state ./wconf-data --at 120\n  wal-dump verify ./wconf-data"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    list: ListArgs,
}

#[derive(clap::Args)]
struct ListArgs {
    /// A data directory, or one or more segment files (*.wal).
    inputs: Vec<PathBuf>,
    /// First LSN to show.
    #[arg(long, value_name = "LSN")]
    from: Option<u64>,
    /// Last LSN to show.
    #[arg(long, value_name = "LSN")]
    to: Option<u64>,
    /// Show at most N records (after filtering).
    #[arg(long, value_name = "N")]
    limit: Option<u64>,
    /// Only records of this type (name or kind number; repeatable).
    /// `--type list` prints the known types.
    #[arg(long = "type", value_name = "T")]
    types: Vec<String>,
    /// Only records of this session (32 hex digits).
    #[arg(long, value_name = "ID")]
    session: Option<String>,
    /// Only records that take, release or downgrade this lock.
    #[arg(long, value_name = "NAME")]
    lock: Option<String>,
    /// Only config writes with an op at, under or above this JSON pointer
    /// (compared by whole tokens: /a matches /a/b but not /ab).
    #[arg(long, value_name = "JSON-POINTER")]
    path: Option<String>,
    #[command(flatten)]
    output: OutputArgs,
}

/// How records are printed, shared by `list` and `follow`.
#[derive(clap::Args)]
struct OutputArgs {
    #[arg(long, value_enum, default_value = "text")]
    format: Format,
    /// Also show the physical frame: length, padding, stored and computed
    /// CRC, flags, batch index.
    #[arg(long)]
    raw: bool,
    /// Also show the payload bytes.
    #[arg(long)]
    hex: bool,
}

impl OutputArgs {
    fn options(&self) -> list::Options {
        list::Options {
            format: self.format,
            raw: self.raw,
            hex: self.hex,
        }
    }
}

#[derive(Subcommand)]
enum Command {
    /// One line per record: LSN, type, length, segment@offset, session,
    /// request id and a decoded summary. The default subcommand.
    ///
    /// Reads up to the end of the last complete batch: on a live daemon's
    /// directory the batch being written and the preallocated zeros are not
    /// read. Exit 0 also when the log ends in a torn or in-flight batch (a
    /// note goes to stderr); 2 or 3 when it stops at mid-log damage.
    #[command(
        after_help = "Examples:\n  wal-dump list ./wconf-data --from 100 --limit 20\n  \
                            wal-dump list ./wconf-data --type grant --type release --lock node/a\n  \
                            wal-dump list ./wconf-data --path /cluster --format ndjson\n  \
                            wal-dump list ./wconf-data/00000000000000000001.wal --raw --hex"
    )]
    List(ListArgs),
    /// Counts and bytes per record type, padding and segment fill,
    /// group-commit batch sizes, the busiest sessions and locks, and the
    /// record rate.
    #[command(after_help = "Example:\n  wal-dump stats ./wconf-data\n  \
                            wal-dump stats ./wconf-data --format json")]
    Stats {
        /// The data directory (or segment files).
        #[arg(required = true)]
        inputs: Vec<PathBuf>,
        /// How many sessions and locks to show.
        #[arg(long, default_value_t = 5)]
        top: usize,
        #[arg(long, value_enum, default_value = "text")]
        format: Format,
    },
    /// The config (with its serial) and lock table as of an LSN, as JSON,
    /// rebuilt from the newest snapshot at or below it plus the log after
    /// that snapshot (or the log from LSN 1), naming the snapshot used; or
    /// the RFC 6902 difference between two LSNs.
    #[command(after_help = "Examples:\n  wal-dump state ./wconf-data --at 120\n  \
                            wal-dump state ./wconf-data --diff 100 120")]
    State {
        /// The data directory.
        dir: PathBuf,
        /// The LSN to stop at (0: the empty initial state).
        #[arg(
            long,
            value_name = "LSN",
            required_unless_present = "diff",
            conflicts_with = "diff"
        )]
        at: Option<u64>,
        /// Print the JSON patch that turns the state at LSN1 into the state at LSN2.
        #[arg(long, num_args = 2, value_names = ["LSN1", "LSN2"])]
        diff: Option<Vec<u64>>,
    },
    /// Check every segment (header, chain, CRC, LSN continuity) without
    /// changing anything.
    ///
    /// Exit codes: 0 clean; 1 torn tail (the daemon would cut it and start);
    /// 2 corruption (the daemon would refuse to start); 3 a missing or
    /// out-of-order segment; 64 usage or I/O error.
    ///
    /// Damage is reported with its file, offset, LSN and kind, and a
    /// hexdump of the 64 bytes on each side (the line holding it marked >).
    #[command(after_help = "Examples:\n  wal-dump verify ./wconf-data\n  \
                            wal-dump verify ./wconf-data --salvage")]
    Verify {
        /// The data directory holding the *.wal segment files.
        dir: PathBuf,
        /// Keep scanning past damage (resuming at the next frame whose CRC
        /// checks out) and report every damaged region. The exit code is
        /// still that of the first damage, the one the daemon would meet.
        #[arg(long)]
        salvage: bool,
    },
    /// Print records as they become durable, like `tail -f`, following
    /// segment rolls; from the start of the log, or from --from LSN.
    ///
    /// Polls the current segment every 100 ms and prints only complete
    /// group-commit batches. Read-only: safe beside a running wconfd.
    /// Ctrl-C (SIGINT) ends it with exit 0. `--format json` prints ndjson.
    #[command(after_help = "Examples:\n  wal-dump follow ./wconf-data\n  \
                            wal-dump follow ./wconf-data --from 1200 --format ndjson")]
    Follow {
        /// The data directory.
        dir: PathBuf,
        /// First LSN to print.
        #[arg(long, value_name = "LSN")]
        from: Option<u64>,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Cut a torn tail exactly as the daemon would on start (a dry run
    /// unless --apply). The cut bytes are kept in `<segment>.broken`, fsynced
    /// with the directory; no CRC is ever recomputed. Mid-log damage is
    /// refused unless --truncate-at names where the log should end.
    ///
    /// Exit codes: 0 clean or repaired; 1 a torn tail a dry run would cut;
    /// 2 corruption refused; 3 a broken segment sequence refused; 64 usage,
    /// I/O, or the directory's LOCK held (by a running wconfd).
    #[command(after_help = "Examples:\n  wal-dump repair ./wconf-data\n  \
                            wal-dump repair ./wconf-data --apply\n  \
                            wal-dump repair ./wconf-data --truncate-at 1200 --apply")]
    Repair {
        /// The data directory.
        dir: PathBuf,
        /// Do it (takes the directory's LOCK). Without it, only print.
        #[arg(long)]
        apply: bool,
        /// Damaged log only: end the log just before LSN, which must start
        /// a group-commit batch; records from LSN on are set aside.
        #[arg(long, value_name = "LSN")]
        truncate_at: Option<u64>,
    },
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() {
                exit::USAGE_OR_IO
            } else {
                exit::CLEAN
            });
        }
    };
    let result = match cli.command {
        None => run_list(cli.list),
        Some(Command::List(args)) => run_list(args),
        Some(Command::Stats {
            inputs,
            top,
            format,
        }) => {
            let progress = Progress::for_log(&inputs, "scanning");
            Log::open(&inputs, &progress).and_then(|log| stats::run(&log, top, format, &progress))
        }
        Some(Command::State { dir, at, diff }) => state::run(&dir, at, diff.as_deref()),
        Some(Command::Verify { dir, salvage }) => Ok(verify(&dir, salvage)),
        Some(Command::Follow { dir, from, output }) => follow::run(&dir, from, &output.options()),
        Some(Command::Repair {
            dir,
            apply,
            truncate_at,
        }) => repair::run(&dir, apply, truncate_at),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(Fatal { code, message }) => {
            eprintln!("wal-dump: {message}");
            ExitCode::from(code)
        }
    }
}

fn run_list(args: ListArgs) -> Result<u8, Fatal> {
    if args.types.iter().any(|t| t == "list") {
        return Ok(list::print_types());
    }
    if args.inputs.is_empty() {
        return Err(Fatal::usage(
            "give a data directory or segment files (see wal-dump --help)",
        ));
    }
    let types = args
        .types
        .iter()
        .map(|t| decode::parse_type(t))
        .collect::<Result<Vec<u16>, String>>()
        .map_err(Fatal::usage)?;
    if let Some(s) = &args.session {
        s.parse::<wconf::state::SessionId>()
            .map_err(|e| Fatal::usage(format!("--session {s:?}: {e}")))?;
    }
    if let Some(p) = &args.path {
        if !p.is_empty() && !p.starts_with('/') {
            return Err(Fatal::usage(format!(
                "--path {p:?} is not a JSON pointer (it must be empty or start with /)"
            )));
        }
    }
    let filter = list::Filter {
        from: args.from,
        to: args.to,
        limit: args.limit,
        types,
        session: args.session,
        lock: args.lock,
        path: args.path,
    };
    let log = Log::open(&args.inputs, &Progress::hidden())?;
    list::run(&log, &filter, &args.output.options())
}

fn verify(dir: &std::path::Path, salvage: bool) -> u8 {
    if !dir.is_dir() {
        eprintln!("wal-dump: {} is not a directory", dir.display());
        return exit::USAGE_OR_IO;
    }
    let progress = Progress::for_log(&[dir.to_path_buf()], "verifying");
    let scan = scan_dir_with_progress(&StdStorage, dir, &mut |b| progress.inc(b));
    drop(progress);
    let scan = match scan {
        Ok(scan) => scan,
        Err(e @ WalError::UnsupportedVersion { .. }) => {
            eprintln!("wal-dump: {e}");
            return exit::CORRUPT;
        }
        Err(e) => {
            eprintln!("wal-dump: {e}");
            return exit::USAGE_OR_IO;
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
        return exit::CLEAN;
    };
    let path = scan.segments[i].path.display();
    let what = format!(
        "{path} at offset {} (LSN {}): {}",
        p.offset, p.lsn, p.damage
    );
    let code = if scan.problem_is_torn_tail() {
        println!(
            "torn tail: {what}; the daemon would cut at offset {} and keep LSNs below {}",
            p.cut_offset, p.cut_lsn
        );
        exit::TORN_TAIL
    } else if p.damage.class() == DamageClass::Sequence {
        println!("segment sequence broken: {what}");
        exit::SEQUENCE
    } else {
        println!("corrupt: {what}");
        exit::CORRUPT
    };
    // With --salvage the first damage is also the first region listed.
    if salvage {
        print_salvage(&scan.segments);
    } else {
        print!("{}", salvage::hexdump(&scan.segments[i].view, p.offset));
    }
    code
}

fn print_salvage(segments: &[wconf::wal::reader::SegmentFile]) {
    let found = match salvage::salvage(segments) {
        Ok(found) => found,
        // The first scan already read every header this one reads.
        Err(e) => {
            eprintln!("wal-dump: salvage: {e}");
            return;
        }
    };
    for (n, r) in found.regions.iter().enumerate() {
        let file = &segments[r.segment];
        let lsn = r.lsn.map_or("?".to_string(), |l| l.to_string());
        let resumed = match r.resumed {
            Some((offset, lsn)) => format!("resumed at offset {offset} (LSN {lsn})"),
            None => "nothing valid after it in this segment".to_string(),
        };
        println!(
            "damage {}: {} at offset {} (LSN {lsn}): {}; {resumed}",
            n + 1,
            file.path.display(),
            r.offset,
            r.damage
        );
        print!("{}", salvage::hexdump(&file.view, r.offset));
    }
    println!(
        "salvage: {} damaged regions; {} frames with a valid CRC",
        found.regions.len(),
        found.valid_frames
    );
}
