//! `wconf-bench`'s command line: clap definitions and the exit codes, kept
//! in the library like `wconf::cli`'s, so the binary is one call.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use super::workload::{Params, Workload};
use super::{plot, Options, RunError, Target};
use clap::{Args, Parser, Subcommand};

const AFTER_HELP: &str = "\
Workloads (everything they write lives under /bench of the document, which
each run first replaces):
  txn        POST /v1/config/txn setting one of --keys keys to a --value-bytes
             value; one operation is one durable change
  job        open a session, acquire instance/<random of --instances>
             exclusive (waiting), GET that instance's config, change it with a
             txn, close the session (which releases the lock); one operation
             is a job
  contended  every connection has a session and cycles on the `config` lock:
             acquire (waiting), write with release; one operation is a cycle
  read       GET /v1/config/bench/keys/<random>, with a txn write instead at
             --write-ratio
  ping       GET /healthz: no state and no record, only the HTTP path, so
             the ceiling of the others on the same machine

Closed loop by default (each connection sends its next request when the last
one is answered). With --rate, requests are scheduled at fixed intervals and
latency counts from the scheduled time, so a stalled daemon is not hidden
(coordinated omission).

Exit codes: 0 the run completed with no failed request; 1 it completed but
some requests failed (counted in the report); 2 usage; 3 set-up failed (no
daemon, or it refused the set-up).

Examples:
  wconf-bench --workload job --connections 64
  wconf-bench --workload txn --connections 16 --duration 5 --json > txn-16.json
  wconf-bench --workload read --rate 20000 --write-ratio 0.01
  wconf-bench plot results/raw/*.json --out results";

/// Load generator for wconfd: keep-alive HTTP connections, five workloads,
/// latency percentiles and the daemon's own fsync figures.
#[derive(Parser, Debug)]
#[command(name = "wconf-bench", version, after_help = AFTER_HELP, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(flatten)]
    run: RunArgs,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Args, Debug)]
struct RunArgs {
    /// wconfd's address, host:port.
    #[arg(long, env = "WCONF_ADDR", default_value = super::ADDR_DEFAULT)]
    addr: String,
    /// Drive wconfd over the Unix socket it serves with --socket, instead
    /// of TCP (--addr is then not used).
    #[arg(long, value_name = "PATH", conflicts_with = "addr")]
    socket: Option<PathBuf>,
    /// Send the bearer token in FILE (owner-only), for a wconfd started
    /// with --auth-token-file.
    #[arg(long, env = "WCONF_TOKEN_FILE", value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// What to run.
    #[arg(long, value_enum, default_value = "txn")]
    workload: Workload,
    /// Keep-alive connections, one client each.
    #[arg(long, default_value_t = 16)]
    connections: usize,
    /// Seconds measured, after the warm-up.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Seconds of load before measuring starts.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Open loop: operations per second over all connections.
    #[arg(long)]
    rate: Option<f64>,
    /// Keys in the map that txn, contended and read write (and read reads).
    #[arg(long, default_value_t = 1000)]
    keys: usize,
    /// Bytes of each value written.
    #[arg(long, default_value_t = 100)]
    value_bytes: usize,
    /// Instances the job workload picks its lock and config path from.
    #[arg(long, default_value_t = 1000)]
    instances: usize,
    /// read: the fraction of operations that are txn writes.
    #[arg(long, default_value_t = 0.05)]
    write_ratio: f64,
    /// read: read the whole document (GET /v1/config), as WConfD's
    /// ReadConfig does, instead of one key; with --pad-config-mb for its size.
    #[arg(long)]
    read_whole: bool,
    /// job: release the instance lock with its own request before closing
    /// the session (6 requests per job instead of 5).
    #[arg(long)]
    release_before_close: bool,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// Seed of the random key, instance and read/write choices.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// The daemon's pid, for the CPU split (found from the port of a
    /// loopback --addr, or from --socket, otherwise).
    #[arg(long)]
    daemon_pid: Option<u32>,
    /// Before the run, add about MB megabytes of document under /pad that
    /// no operation touches (a large config, for snapshot and memory runs).
    #[arg(long, value_name = "MB", default_value_t = 0)]
    pad_config_mb: u64,
    /// While measuring, ask for a snapshot (POST /v1/admin/snapshot) every
    /// SECONDS, or as soon as the last is durable if it took longer.
    #[arg(long, value_name = "SECONDS")]
    snapshot_every: Option<f64>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Render reports (from --json runs) as a markdown table and SVG plots.
    Plot {
        /// Report files, one JSON report each.
        #[arg(required = true)]
        reports: Vec<PathBuf>,
        /// Directory for results.md, throughput.svg and latency.svg.
        #[arg(long)]
        out: PathBuf,
        /// A line put above the table: how and where the numbers were made.
        #[arg(long, default_value = "")]
        title: String,
    },
}

fn seconds(flag: &str, s: f64) -> Result<Duration, RunError> {
    Duration::try_from_secs_f64(s)
        .map_err(|_| RunError::Usage(format!("{flag} must be a number of seconds ≥ 0")))
}

/// Parses the command line and runs or plots; the exit code is in the help.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::Plot {
        reports,
        out,
        title,
    }) = cli.command
    {
        return match plot::render(&reports, &out, &title) {
            Ok(written) => {
                for p in written {
                    println!("{}", p.display());
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("wconf-bench plot: {e}");
                ExitCode::from(1)
            }
        };
    }
    let a = cli.run;
    let opts = (|| {
        Ok::<_, RunError>(Options {
            token: match &a.token_file {
                Some(path) => Some(crate::auth::read_token_file(path).map_err(RunError::Usage)?),
                None => None,
            },
            target: match a.socket {
                Some(path) => Target::Unix(path),
                None => Target::Tcp(
                    a.addr
                        .trim_start_matches("http://")
                        .trim_end_matches('/')
                        .to_string(),
                ),
            },
            workload: a.workload,
            connections: a.connections,
            duration: seconds("--duration", a.duration)?,
            warmup: seconds("--warmup", a.warmup)?,
            rate: a.rate,
            params: Params {
                keys: a.keys,
                value_bytes: a.value_bytes,
                instances: a.instances,
                write_ratio: a.write_ratio,
                read_whole: a.read_whole,
                release_before_close: a.release_before_close,
            },
            seed: a.seed,
            daemon_pid: a.daemon_pid,
            pad_config_mb: a.pad_config_mb,
            snapshot_every: a
                .snapshot_every
                .map(|s| seconds("--snapshot-every", s))
                .transpose()?,
            progress: true,
        })
    })();
    let report = opts.and_then(|o| super::run(&o));
    match report {
        Ok(r) => {
            let text = if a.json {
                serde_json::to_string_pretty(&r).expect("a report serialises") + "\n"
            } else {
                r.text()
            };
            // A closed pipe (`| head`) is the reader's choice, not an error.
            let _ = std::io::Write::write_all(&mut std::io::stdout().lock(), text.as_bytes());
            if r.errors.total == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e @ RunError::Usage(_)) => {
            eprintln!("wconf-bench: {e}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("wconf-bench: {e}");
            ExitCode::from(3)
        }
    }
}
