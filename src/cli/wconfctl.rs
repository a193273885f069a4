//! `wconfctl`'s command line: its flags and subcommands, and [`main`],
//! which makes the request through [`crate::ctl`] and prints the answer.

use std::ffi::OsString;
use std::process::ExitCode;

use clap::{Args, CommandFactory, Parser, Subcommand};

use super::Docs;
use crate::api::types::{AcquireRequest, LockSpec, ReleaseRequest, TxnRequest, WriteRequest};
use crate::ctl::{self, Answer, Ctl, CtlError, Format, PatchSource};

const AFTER_HELP: &str = "\
Output: tables and `key: value` lines by default; --json prints the
daemon's JSON answer instead.

Exit codes:
  0  done
  1  the daemon answered with an error (HTTP 4xx/5xx); stderr has
     `wconfctl: <code>: <message>`
  2  usage: bad flags or arguments, or an unreadable patch; nothing was sent
  3  could not connect to the daemon, or got no usable answer
  4  the daemon answered but did not do it: `lock acquire` not granted,
     `config write` without holding `config`
  5  `drill` found a violation of an invariant

Transport: TCP only. wconfd can also serve a Unix socket (--socket), but
the HTTP client under wconfctl (ureq 2) cannot connect to one, so wconfctl
has no --socket; use curl --unix-socket for that. A daemon started with
--auth-token-file needs --token-file (or WCONF_TOKEN_FILE) on TCP.

Example:
  S=$(wconfctl --json session open --name deploy --ttl-ms 60000 | jq -r .session)
  wconfctl lock acquire --session $S config
  wconfctl config write --session $S --release --patch '[{\"op\":\"add\",\"path\":\"/v\",\"value\":1}]'
  wconfctl config get /v";

/// Command-line client of wconfd: sessions, locks and the config document.
#[derive(Parser, Debug)]
#[command(name = "wconfctl", version, after_help = AFTER_HELP)]
pub struct Cli {
    /// wconfd's address: host:port or http://host:port.
    #[arg(long, global = true, env = "WCONF_ADDR", default_value = ctl::ADDR_DEFAULT)]
    addr: String,
    /// Print the daemon's answers as JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    /// Send the bearer token in FILE (owner-only), for a wconfd started
    /// with --auth-token-file.
    #[arg(long, global = true, env = "WCONF_TOKEN_FILE", value_name = "FILE")]
    token_file: Option<std::path::PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Show the daemon's epoch, LSNs, log size, counts and fsync latency.
    #[command(after_help = "Example:\n  wconfctl status")]
    Status,
    /// Check that the daemon answers (GET /healthz).
    #[command(after_help = "Example:\n  wconfctl health")]
    Health,
    /// Open, renew, close and list sessions.
    #[command(subcommand)]
    Session(SessionCommand),
    /// Acquire, release and list locks.
    #[command(subcommand)]
    Lock(LockCommand),
    /// Read and change the config document.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Recovery drill: start wconfd, SIGKILL it at random moments under
    /// load, restart it, and check that nothing acknowledged was lost.
    ///
    /// Needs no running daemon: it starts its own on a scratch directory
    /// (or --data-dir) and an ephemeral port. Exits 5 on any violation.
    #[command(after_help = "Example:\n  wconfctl drill --kills 100 --clients 8")]
    Drill(DrillArgs),
    #[command(flatten)]
    Docs(Docs),
}

#[derive(Args, Debug)]
struct DrillArgs {
    /// The wconfd binary [default: the wconfd beside this wconfctl].
    #[arg(long, value_name = "PATH")]
    wconfd: Option<std::path::PathBuf>,
    /// Drill this data directory instead of a scratch one. A non-empty
    /// directory that no drill made is refused unless --force.
    #[arg(long, value_name = "DIR")]
    data_dir: Option<std::path::PathBuf>,
    /// Drill a non-empty --data-dir that no drill made, in place.
    #[arg(long)]
    force: bool,
    /// Concurrent job clients.
    #[arg(long, default_value_t = crate::drill::DrillOptions::CLIENTS_DEFAULT as u64,
          value_parser = clap::value_parser!(u64).range(1..=crate::drill::CLIENTS_MAX as u64))]
    clients: u64,
    /// SIGKILLs (each followed by a restart).
    #[arg(long, default_value_t = crate::drill::DrillOptions::KILLS_DEFAULT)]
    kills: usize,
    /// Seed of the kill moments and the jobs [default: from the clock;
    /// printed in the report].
    #[arg(long)]
    seed: Option<u64>,
    /// Also SIGSTOP the daemon for longer than a lease, then SIGCONT
    /// (the first cycle and about one in ten).
    #[arg(long)]
    pause: bool,
    /// Every other cycle, fail a storage step of wconfd (EIO or ENOSPC at
    /// a random write, sync or segment-roll step) instead of killing it;
    /// it must stop by itself and lose nothing acknowledged. Needs a
    /// wconfd built with --features failpoints.
    #[arg(long)]
    storage_faults: bool,
    /// The daemon must serve again within this many ms after a restart.
    #[arg(long, default_value_t = crate::drill::DrillOptions::LIVENESS_BOUND_MS_DEFAULT)]
    liveness_bound_ms: u64,
    /// Each kill lands at a random moment up to this many ms after the
    /// load resumed.
    #[arg(long, default_value_t = crate::drill::DrillOptions::KILL_DELAY_MAX_MS_DEFAULT)]
    kill_delay_max_ms: u64,
    /// An argument for wconfd, e.g. --wconfd-arg=--segment-size=1MiB (repeatable).
    #[arg(long = "wconfd-arg", value_name = "ARG", allow_hyphen_values = true)]
    wconfd_args: Vec<String>,
}

impl DrillArgs {
    fn options(self) -> crate::drill::DrillOptions {
        crate::drill::DrillOptions {
            wconfd: self
                .wconfd
                .unwrap_or_else(crate::drill::wconfd_beside_current_exe),
            data_dir: self.data_dir,
            force: self.force,
            clients: self.clients as usize,
            kills: self.kills,
            seed: self.seed,
            pause: self.pause,
            liveness_bound_ms: self.liveness_bound_ms,
            kill_delay_max_ms: self.kill_delay_max_ms,
            wconfd_args: self.wconfd_args,
            point_cycles: vec![],
            storage_faults: self.storage_faults,
        }
    }
}

#[derive(Subcommand, Debug)]
enum SessionCommand {
    /// Open a session with a lease of --ttl-ms; prints its id.
    #[command(after_help = "Example:\n  wconfctl session open --name deploy --ttl-ms 60000")]
    Open {
        /// A name shown in listings (at most 256 bytes).
        #[arg(long)]
        name: Option<String>,
        /// Lease length in ms (1000..=86400000); renew with keepalive.
        #[arg(long)]
        ttl_ms: u64,
    },
    /// Renew a session's lease.
    #[command(
        after_help = "Example:\n  wconfctl session keepalive 5f0c3e9a7d214b8e9c1a2b3c4d5e6f70"
    )]
    Keepalive {
        #[arg(value_parser = ctl::parse_session)]
        session: String,
    },
    /// Close a session, releasing its locks and cancelling its waits.
    #[command(after_help = "Example:\n  wconfctl session close 5f0c3e9a7d214b8e9c1a2b3c4d5e6f70")]
    Close {
        #[arg(value_parser = ctl::parse_session)]
        session: String,
    },
    /// List open sessions.
    #[command(after_help = "Example:\n  wconfctl session list")]
    List,
}

#[derive(Subcommand, Debug)]
enum LockCommand {
    /// Acquire locks, all or nothing (or at least --min of them).
    ///
    /// Without --wait-ms it only tries; with it, it waits in the queue
    /// (ordered by priority, then arrival). Exits 4 if not granted.
    #[command(
        after_help = "Example:\n  wconfctl lock acquire --session $S config node/a:shared --wait-ms 5000"
    )]
    Acquire {
        #[command(flatten)]
        session: SessionArg,
        /// Locks as NAME, NAME:shared or NAME:exclusive (bare NAME is
        /// exclusive).
        #[arg(required = true, value_name = "NAME[:MODE]", value_parser = ctl::parse_lock_spec)]
        locks: Vec<LockSpec>,
        /// How long to wait for the locks, in ms (0: try only; at most 3600000).
        #[arg(long, default_value_t = 0)]
        wait_ms: u64,
        /// Queue priority, -20 (most urgent) to 19.
        #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
        priority: i64,
        /// Opportunistic: take whichever are free, at least this many (with
        /// --wait-ms, wait until that many can be taken).
        #[arg(long)]
        min: Option<usize>,
        #[command(flatten)]
        request_id: RequestIdArg,
    },
    /// Release some or all of a session's locks, or downgrade them.
    ///
    /// With no NAME and no --downgrade, releases every lock the session holds.
    #[command(
        after_help = "Examples:\n  wconfctl lock release --session $S config\n  wconfctl lock release --session $S --downgrade node/a\n  wconfctl lock release --session $S"
    )]
    Release {
        #[command(flatten)]
        session: SessionArg,
        /// Locks to release.
        #[arg(value_name = "NAME")]
        locks: Vec<String>,
        /// Locks to downgrade from exclusive to shared.
        #[arg(long, value_name = "NAME", num_args = 1..)]
        downgrade: Vec<String>,
        #[command(flatten)]
        request_id: RequestIdArg,
    },
    /// List holders and waiters.
    #[command(after_help = "Example:\n  wconfctl lock list")]
    List,
}

#[derive(Subcommand, Debug)]
enum ConfigCommand {
    /// Print the document with its serial, or the value at a JSON pointer.
    #[command(
        after_help = "Examples:\n  wconfctl config get\n  wconfctl config get /cluster/name"
    )]
    Get {
        /// A JSON pointer such as /cluster/name (`~1` is `/`, `~0` is `~`
        /// inside a key); none for the whole document.
        pointer: Option<String>,
    },
    /// Apply a JSON Patch as a session holding `config` exclusively.
    ///
    /// Exits 4, changing nothing, if the session does not hold `config`.
    #[command(
        after_help = "Example:\n  wconfctl config write --session $S --release --patch '[{\"op\":\"add\",\"path\":\"/v\",\"value\":1}]'"
    )]
    Write {
        #[command(flatten)]
        session: SessionArg,
        #[command(flatten)]
        patch: PatchArg,
        /// Release `config` in the same record as the change.
        #[arg(long)]
        release: bool,
        #[command(flatten)]
        request_id: RequestIdArg,
    },
    /// Apply a JSON Patch in one round trip: the daemon takes `config`,
    /// patches and releases it.
    #[command(
        after_help = "Example:\n  wconfctl config txn --if-serial 3 --wait-ms 2000 --patch @job.json"
    )]
    Txn {
        #[command(flatten)]
        patch: PatchArg,
        /// Apply only if the document's serial is still this (else 409).
        #[arg(long)]
        if_serial: Option<u64>,
        /// How long to wait for `config`, in ms (0: fail at once if busy).
        #[arg(long, default_value_t = 0)]
        wait_ms: u64,
        #[command(flatten)]
        request_id: RequestIdArg,
    },
}

#[derive(Args, Debug)]
struct SessionArg {
    /// The session (as printed by `session open`).
    #[arg(long, value_parser = ctl::parse_session)]
    session: String,
}

#[derive(Args, Debug)]
struct RequestIdArg {
    /// Makes a retry safe: the daemon answers a repeated id with the first
    /// outcome instead of doing it again (1 to 128 bytes).
    #[arg(long)]
    request_id: Option<String>,
}

#[derive(Args, Debug)]
struct PatchArg {
    /// An RFC 6902 JSON Patch: inline JSON, @FILE, or - for stdin.
    #[arg(long, value_name = "JSON|@FILE|-")]
    patch: PatchSource,
}

/// Runs one command against the daemon.
pub fn run(cli: Cli) -> Result<Answer, CtlError> {
    let format = if cli.json {
        Format::Json
    } else {
        Format::Human
    };
    let token = match &cli.token_file {
        Some(path) => Some(crate::auth::read_token_file(path).map_err(CtlError::Usage)?),
        None => None,
    };
    let ctl = Ctl::new(&cli.addr, format)?.with_token(token);
    match cli.command {
        Command::Docs(_) => Err(CtlError::Usage(
            "completions and man pages are printed by main, not sent".into(),
        )),
        Command::Drill(_) => Err(CtlError::Usage("main runs the drill".into())),
        Command::Status => ctl.status(),
        Command::Health => ctl.health(),
        Command::Session(c) => match c {
            SessionCommand::Open { name, ttl_ms } => ctl.session_open(name.as_deref(), ttl_ms),
            SessionCommand::Keepalive { session } => ctl.session_keepalive(&session),
            SessionCommand::Close { session } => ctl.session_close(&session),
            SessionCommand::List => ctl.session_list(),
        },
        Command::Lock(c) => match c {
            LockCommand::Acquire {
                session,
                locks,
                wait_ms,
                priority,
                min,
                request_id,
            } => ctl.lock_acquire(&AcquireRequest {
                session: session.session,
                locks,
                wait_ms,
                priority,
                min,
                request_id: request_id.request_id,
            }),
            LockCommand::Release {
                session,
                locks,
                downgrade,
                request_id,
            } => ctl.lock_release(&ReleaseRequest {
                session: session.session,
                locks: (!locks.is_empty()).then_some(locks),
                downgrade: (!downgrade.is_empty()).then_some(downgrade),
                request_id: request_id.request_id,
            }),
            LockCommand::List => ctl.lock_list(),
        },
        Command::Config(c) => match c {
            ConfigCommand::Get { pointer } => ctl.config_get(pointer.as_deref()),
            ConfigCommand::Write {
                session,
                patch,
                release,
                request_id,
            } => ctl.config_write(&WriteRequest {
                session: session.session,
                patch: patch.patch.load()?,
                release,
                request_id: request_id.request_id,
            }),
            ConfigCommand::Txn {
                patch,
                if_serial,
                wait_ms,
                request_id,
            } => ctl.config_txn(&TxnRequest {
                patch: patch.patch.load()?,
                if_serial,
                wait_ms,
                request_id: request_id.request_id,
            }),
        },
    }
}

/// The whole command, for completions, man pages and tests.
pub fn command() -> clap::Command {
    Cli::command()
}

/// Parses `argv` (program name first).
pub fn parse(argv: Vec<OsString>) -> Result<Cli, clap::Error> {
    Cli::try_parse_from(argv)
}

/// All of `wconfctl`: parse, then print generated docs or run the command.
pub fn main() -> ExitCode {
    // clap exits 2 on bad usage and 0 for --help and --version.
    let cli = parse(std::env::args_os().collect()).unwrap_or_else(|e| e.exit());
    if let Command::Docs(docs) = &cli.command {
        return match docs.generate(command(), &mut std::io::stdout().lock()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("wconfctl: {e}");
                ExitCode::from(ctl::exit::USAGE)
            }
        };
    }
    if let Command::Drill(args) = cli.command {
        let format = if cli.json {
            Format::Json
        } else {
            Format::Human
        };
        return match ctl::drill(&args.options(), format) {
            Ok((output, code)) => {
                print!("{output}");
                ExitCode::from(code)
            }
            Err(e) => {
                eprintln!("wconfctl: {e}");
                ExitCode::from(e.exit_code())
            }
        };
    }
    match run(cli) {
        Ok(answer) => {
            print!("{}", answer.output);
            if let Some(why) = &answer.not_done {
                eprintln!("wconfctl: {why}");
            }
            ExitCode::from(answer.exit_code())
        }
        Err(e) => {
            eprintln!("wconfctl: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
