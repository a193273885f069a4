//! `wconfd`: the wconf daemon. Parses flags (each also a `WCONF_*`
//! environment variable) and calls `wconf::server::run`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use wconf::server::{self, exit, DaemonOptions};
use wconf::wal::RecoveryMode;

/// A configuration and lock daemon whose every change goes through one
/// write-ahead log.
///
/// Exit codes: 0 clean stop; 1 start-up failed (directory locked, address in
/// use, I/O); 2 usage; 3 fail-stop after a log write or fsync error; 4 the
/// log is corrupt and was refused (a torn tail is repaired with a warning
/// and is not an error).
#[derive(Parser, Debug)]
#[command(name = "wconfd", version)]
struct Args {
    /// Directory of the write-ahead log.
    #[arg(long, env = "WCONF_DATA_DIR", default_value = "./wconf-data")]
    data_dir: PathBuf,
    /// TCP address to serve HTTP on.
    #[arg(long, env = "WCONF_LISTEN", default_value = "127.0.0.1:7370")]
    listen: String,
    /// Also serve on this Unix socket, created with mode 0600.
    #[arg(long, env = "WCONF_SOCKET")]
    socket: Option<PathBuf>,
    /// tolerate-torn-tail, strict or point-in-time.
    #[arg(
        long,
        env = "WCONF_RECOVERY_MODE",
        default_value = "tolerate-torn-tail"
    )]
    recovery_mode: RecoveryMode,
    /// Segment file size in bytes (suffixes KiB, MiB, GiB accepted).
    #[arg(long, env = "WCONF_SEGMENT_SIZE", default_value = "64MiB", value_parser = server::parse_bytes)]
    segment_size: u64,
    /// Largest request body in bytes (suffixes accepted); larger is a 413.
    #[arg(long, env = "WCONF_MAX_BODY", default_value = "16MiB", value_parser = server::parse_bytes)]
    max_body: u64,
    /// Lock levels, in acquisition order: names `level/name` must be
    /// acquired in this order (comma-separated).
    #[arg(long, env = "WCONF_LOCK_ORDER", value_delimiter = ',')]
    lock_order: Vec<String>,
    /// Records waiting for the log writer, at most. A request that would
    /// queue past this is answered 503 with Retry-After (backpressure).
    #[arg(long, env = "WCONF_WAL_QUEUE_MAX", default_value_t = wconf::wal::QUEUE_LEN_MAX_DEFAULT as u64, value_parser = clap::value_parser!(u64).range(1..=1_048_576))]
    wal_queue_max: u64,
    /// Log line format on stderr: text or json. RUST_LOG filters.
    #[arg(long, env = "WCONF_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
}

fn main() -> ExitCode {
    let args = Args::parse();
    server::init_logging(args.log_format == "json");
    let Ok(body_bytes_max) = usize::try_from(args.max_body) else {
        eprintln!("wconfd: --max-body {} is too large", args.max_body);
        return ExitCode::from(exit::USAGE as u8);
    };
    let options = DaemonOptions {
        data_dir: args.data_dir,
        listen: args.listen,
        socket: args.socket,
        recovery_mode: args.recovery_mode,
        segment_bytes: args.segment_size,
        body_bytes_max,
        lock_order: args.lock_order,
        wal_queue_len_max: args.wal_queue_max as usize,
    };
    match server::run(options) {
        Ok(()) => ExitCode::from(exit::OK as u8),
        Err(e) => {
            tracing::error!(error = %e, code = e.code, "wconfd stopped");
            eprintln!("wconfd: {e}");
            ExitCode::from(e.code as u8)
        }
    }
}
