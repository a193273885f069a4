//! `wconfd`'s command line: its flags (each also a `WCONF_*` environment
//! variable and a key of the `--config` file), and [`main`], which turns
//! them into [`DaemonOptions`] and runs the daemon.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser};

use super::{parse_layered, Docs, ParseError};
use crate::server::{self, exit, DaemonOptions};
use crate::wal::RecoveryMode;

const AFTER_HELP: &str = "\
Every flag can also be set by its WCONF_* environment variable, or in the
TOML file given with --config under its long name (data-dir = \"...\").
Flags win over the environment, which wins over the file.

Exit codes:
  0  clean stop (SIGTERM or SIGINT): every request answered, the log closed
  1  start-up failed: the directory is locked, the address is in use, I/O
  2  usage: bad flags, environment variables or config file; an unusable
     --auth-token-file; a non-loopback --listen without a token
  3  fail-stop after a log write or fsync error
  4  the log is corrupt and was refused (a torn tail is repaired with a
     warning and is not an error)
  5  a second SIGTERM or SIGINT cut the clean shutdown short (the log is safe)";

/// A configuration and lock daemon whose every change goes through one
/// write-ahead log.
#[derive(Parser, Debug)]
#[command(name = "wconfd", version, after_help = AFTER_HELP)]
pub struct Args {
    /// Read options from this TOML file; its keys are the long flag names.
    #[arg(long, env = "WCONF_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Directory of the write-ahead log.
    #[arg(long, env = "WCONF_DATA_DIR", default_value = "./wconf-data")]
    pub data_dir: PathBuf,
    /// TCP address to serve HTTP on.
    #[arg(long, env = "WCONF_LISTEN", default_value = "127.0.0.1:7370")]
    pub listen: String,
    /// Also serve on this Unix socket, created with mode 0600 (owner only).
    #[arg(long, env = "WCONF_SOCKET")]
    pub socket: Option<PathBuf>,
    /// Let this group (name or number) connect to --socket too: the socket
    /// gets that group and mode 0660.
    #[arg(long, env = "WCONF_SOCKET_GROUP", value_name = "GROUP")]
    pub socket_group: Option<String>,
    /// Every TCP request but GET /healthz and /metrics must carry
    /// `Authorization: Bearer <token>`, the token in FILE (owner-only,
    /// mode 0600). The Unix socket is guarded by its mode instead.
    #[arg(long, env = "WCONF_AUTH_TOKEN_FILE", value_name = "FILE")]
    pub auth_token_file: Option<PathBuf>,
    /// Allow a non-loopback --listen address without --auth-token-file.
    #[arg(long, env = "WCONF_INSECURE")]
    pub insecure: bool,
    /// tolerate-torn-tail, strict or point-in-time.
    #[arg(
        long,
        env = "WCONF_RECOVERY_MODE",
        default_value = "tolerate-torn-tail"
    )]
    pub recovery_mode: RecoveryMode,
    /// Segment file size in bytes (suffixes KiB, MiB, GiB accepted).
    #[arg(long, env = "WCONF_SEGMENT_SIZE", default_value = "64MiB", value_parser = server::parse_bytes)]
    pub segment_size: u64,
    /// Largest request body in bytes (suffixes accepted); larger is a 413.
    #[arg(long, env = "WCONF_MAX_BODY", default_value = "16MiB", value_parser = server::parse_bytes)]
    pub max_body: u64,
    /// Lock levels, in acquisition order: names `level/name` must be
    /// acquired in this order (comma-separated).
    #[arg(long, env = "WCONF_LOCK_ORDER", value_delimiter = ',')]
    pub lock_order: Vec<String>,
    /// Records waiting for the log writer, at most. A request that would
    /// queue past this is answered 503 with Retry-After (backpressure).
    #[arg(long, env = "WCONF_WAL_QUEUE_MAX", default_value_t = crate::wal::QUEUE_LEN_MAX_DEFAULT as u64, value_parser = clap::value_parser!(u64).range(1..=1_048_576))]
    pub wal_queue_max: u64,
    /// Take a snapshot after this many records since the last one (0: never
    /// by count).
    #[arg(long, env = "WCONF_SNAPSHOT_EVERY_RECORDS", default_value_t = 100_000)]
    pub snapshot_every_records: u64,
    /// Take a snapshot after this many bytes of log since the last one
    /// (suffixes accepted; 0: never by size).
    #[arg(long, env = "WCONF_SNAPSHOT_EVERY_BYTES", default_value = "256MiB", value_parser = server::parse_bytes)]
    pub snapshot_every_bytes: u64,
    /// Log line format on stderr: text or json. RUST_LOG filters.
    #[arg(long, env = "WCONF_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,
    #[command(subcommand)]
    pub docs: Option<Docs>,
}

/// The whole command, for completions, man pages and tests.
pub fn command() -> clap::Command {
    Args::command()
}

/// Parses `argv` (program name first) with the config file layered in.
pub fn parse(argv: Vec<OsString>) -> Result<Args, ParseError> {
    let matches = parse_layered(command(), argv, "config")?;
    Args::from_arg_matches(&matches).map_err(ParseError::Clap)
}

impl Args {
    /// The daemon's options, or a usage error.
    pub fn options(self) -> Result<DaemonOptions, String> {
        let body_bytes_max = usize::try_from(self.max_body)
            .map_err(|_| format!("--max-body {} is too large", self.max_body))?;
        Ok(DaemonOptions {
            data_dir: self.data_dir,
            listen: self.listen,
            socket: self.socket,
            recovery_mode: self.recovery_mode,
            segment_bytes: self.segment_size,
            body_bytes_max,
            lock_order: self.lock_order,
            wal_queue_len_max: self.wal_queue_max as usize,
            socket_group: self.socket_group,
            auth_token_file: self.auth_token_file,
            insecure: self.insecure,
            snapshot_policy: crate::actors::lock::SnapshotPolicy {
                every_records: self.snapshot_every_records,
                every_bytes: self.snapshot_every_bytes,
            },
        })
    }
}

/// All of `wconfd`: parse, then print generated docs or run the daemon.
pub fn main() -> ExitCode {
    let args = match parse(std::env::args_os().collect()) {
        Ok(args) => args,
        // Help and version exit 0; usage errors 2.
        Err(ParseError::Clap(e)) => e.exit(),
        Err(ParseError::Config(e)) => return usage(&e.to_string()),
    };
    if let Some(docs) = &args.docs {
        return match docs.generate(command(), &mut std::io::stdout().lock()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("wconfd: {e}");
                ExitCode::from(exit::START as u8)
            }
        };
    }
    // Crash drills only: a kill or fault at a named step (src/failpoints.rs).
    if let Err(e) = crate::failpoints::configure_from_env() {
        return usage(&e);
    }
    server::init_logging(args.log_format == "json");
    let options = match args.options() {
        Ok(options) => options,
        Err(e) => return usage(&e),
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

fn usage(message: &str) -> ExitCode {
    eprintln!("wconfd: {message}");
    ExitCode::from(exit::USAGE as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(args: &[&str]) -> Vec<OsString> {
        std::iter::once("wconfd")
            .chain(args.iter().copied())
            .map(OsString::from)
            .collect()
    }

    fn file(text: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(&mut f, text.as_bytes()).unwrap();
        f
    }

    #[test]
    fn the_file_overrides_defaults_and_flags_override_the_file() {
        // Invariant: a key in the file beats the built-in default, a flag
        // beats the file, and flags the file does not name keep their
        // defaults. (The environment layer is tested on the real binary.)
        let f = file(
            "data-dir = \"/srv/wconf\"\nlisten = \"127.0.0.1:9000\"\n\
             lock-order = [\"cluster\", \"node\"]\nwal-queue-max = 64\n",
        );
        let path = f.path().to_str().unwrap();
        let a = parse(argv(&["--config", path, "--listen", "127.0.0.1:9001"])).unwrap();
        assert_eq!(a.data_dir, PathBuf::from("/srv/wconf"));
        assert_eq!(a.listen, "127.0.0.1:9001");
        assert_eq!(a.lock_order, ["cluster", "node"]);
        assert_eq!(a.wal_queue_max, 64);
        assert_eq!(a.max_body, 16 << 20);
        assert_eq!(a.log_format, "text");
    }

    #[test]
    fn every_flag_is_a_key_of_the_file() {
        // Invariant: each long flag (but --config, --help, --version) is
        // accepted as a key of the config file.
        for flag in crate::cli::long_flags(&command()) {
            if ["config", "help", "version", "out-dir"].contains(&flag.as_str()) {
                continue;
            }
            let value = match flag.as_str() {
                "recovery-mode" => "\"strict\"",
                "segment-size" | "max-body" | "snapshot-every-bytes" => "\"1MiB\"",
                "wal-queue-max" | "snapshot-every-records" => "8",
                "log-format" => "\"json\"",
                "insecure" => "true",
                _ => "\"x\"",
            };
            let f = file(&format!("{flag} = {value}\n"));
            let parsed = parse(argv(&["--config", f.path().to_str().unwrap()]));
            assert!(parsed.is_ok(), "key {flag}: {:?}", parsed.err());
        }
    }

    #[test]
    fn unknown_keys_and_bad_values_name_the_key_and_the_file() {
        // Invariant: a misspelt key or a value its flag refuses is an error
        // naming the key and the file, never silently ignored.
        let f = file("data_dir = \"/srv\"\n");
        let Err(ParseError::Config(e)) = parse(argv(&["--config", f.path().to_str().unwrap()]))
        else {
            panic!("unknown key accepted");
        };
        assert_eq!(e.file, f.path());
        assert!(e.message.contains("unknown key `data_dir`"), "{e}");
        let f = file("wal-queue-max = 0\n");
        let Err(ParseError::Config(e)) = parse(argv(&["--config", f.path().to_str().unwrap()]))
        else {
            panic!("out-of-range value accepted");
        };
        assert!(e.to_string().contains("--wal-queue-max"), "{e}");
        assert!(
            e.to_string().contains(&f.path().display().to_string()),
            "{e}"
        );
    }
}
