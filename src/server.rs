//! Start-up and shutdown of `wconfd`: take the directory, recover, replay,
//! write the new epoch, start the actors and the HTTP server, announce
//! readiness, and close the log on the way out. `src/bin/wconfd.rs` only
//! parses flags and calls [`run`].

use std::fmt;
use std::io::Write as _;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use actix::prelude::*;
use actix_web::{web, App, HttpServer};
use nix::sys::stat::{umask, Mode};
use tokio::sync::oneshot;

use crate::actors::config::{ConfigActor, ConfigReader, Published};
use crate::actors::lock::{LockActor, Shutdown, SnapshotPolicy, TakeSnapshot};
use crate::actors::mailbox::Mailbox;
use crate::actors::wal::WalActor;
use crate::api::guard::Gate;
use crate::api::{self, Handles};
use crate::auth::{read_token_file, Token};
use crate::metrics::{MailboxOf, Metrics};
use crate::replay::{encode_record, recover_state, Progress, ReplayError};
use crate::snapshot::writer::SnapshotWriter;
use crate::state::{LockOrder, Record, State};
use crate::wal::storage::Storage;
use crate::wal::{Recovered, RecoveryMode, Wal, WalError, WalOptions};

/// Exit codes of `wconfd`, so an operator can tell a repaired torn tail
/// (a warning, then a normal start) from a refused corrupt log.
pub mod exit {
    /// Clean shutdown (SIGINT or SIGTERM): every request answered, the log
    /// synced and closed, the directory unlocked.
    pub const OK: i32 = 0;
    /// Start-up failed for another reason: the directory is locked by
    /// another process, the address is in use, an I/O error.
    pub const START: i32 = 1;
    /// Bad flags or environment variables.
    pub const USAGE: i32 = 2;
    /// Fail-stop: a write or fsync of the log failed while running (G7).
    pub const FAIL_STOP: i32 = crate::actors::EXIT_FAIL_STOP;
    /// The log is corrupt (not merely torn at its tail) and was refused.
    pub const CORRUPT: i32 = 4;
    /// A second SIGINT or SIGTERM arrived during the clean shutdown, which
    /// was cut short: the log is safe (nothing unsynced was acknowledged),
    /// but no snapshot was written.
    pub const FORCED: i32 = 5;
}

#[derive(Debug, Clone)]
pub struct DaemonOptions {
    pub data_dir: PathBuf,
    pub listen: String,
    pub socket: Option<PathBuf>,
    pub recovery_mode: RecoveryMode,
    pub segment_bytes: u64,
    pub body_bytes_max: usize,
    pub lock_order: Vec<String>,
    /// Records waiting for the log writer, at most; a request that would
    /// queue past it is answered 503 with `Retry-After`.
    pub wal_queue_len_max: usize,
    /// With `socket`: this group (a name or a number) may connect too; the
    /// socket is then mode 0660 instead of 0600.
    pub socket_group: Option<String>,
    /// The bearer token every TCP request needs (but `/healthz` and
    /// `/metrics`); see [`crate::auth::read_token_file`].
    pub auth_token_file: Option<PathBuf>,
    /// Serve a non-loopback `listen` address without a token.
    pub insecure: bool,
    /// When to take snapshots without being asked.
    pub snapshot_policy: SnapshotPolicy,
}

impl Default for DaemonOptions {
    fn default() -> DaemonOptions {
        DaemonOptions {
            data_dir: PathBuf::from("./wconf-data"),
            listen: "127.0.0.1:7370".into(),
            socket: None,
            recovery_mode: RecoveryMode::default(),
            segment_bytes: WalOptions::default().segment_bytes,
            body_bytes_max: api::BODY_BYTES_MAX_DEFAULT,
            lock_order: Vec::new(),
            wal_queue_len_max: WalOptions::default().queue_len_max,
            socket_group: None,
            auth_token_file: None,
            insecure: false,
            snapshot_policy: SnapshotPolicy::default(),
        }
    }
}

/// Why the daemon did not start (or stopped), with its exit code.
#[derive(Debug)]
pub struct StartError {
    pub code: i32,
    pub message: String,
}

impl StartError {
    fn new(code: i32, message: impl Into<String>) -> StartError {
        StartError {
            code,
            message: message.into(),
        }
    }
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for StartError {}

fn wal_error(e: WalError) -> StartError {
    let code = match &e {
        WalError::Corrupted { .. } | WalError::UnsupportedVersion { .. } => exit::CORRUPT,
        WalError::InvalidOptions(_) => exit::USAGE,
        _ => exit::START,
    };
    StartError::new(code, e.to_string())
}

fn replay_error(e: ReplayError) -> StartError {
    let code = match &e {
        ReplayError::Snapshot(crate::snapshot::SnapshotError::Io { .. }) => exit::START,
        _ => exit::CORRUPT,
    };
    StartError::new(code, e.to_string())
}

/// Parses a byte size: a plain integer, or one with a suffix `K`, `KiB`,
/// `M`, `MiB`, `G`, `GiB` (all powers of 1024; `B` alone is bytes).
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, suffix) = text.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?} is not a byte size (e.g. 67108864 or 64MiB)"))?;
    let shift = match suffix.trim() {
        "" | "B" => 0,
        "K" | "KiB" | "k" => 10,
        "M" | "MiB" => 20,
        "G" | "GiB" => 30,
        other => {
            return Err(format!(
                "unknown size suffix {other:?} (use KiB, MiB or GiB)"
            ))
        }
    };
    n.checked_mul(1 << shift)
        .ok_or_else(|| format!("{text:?} is too large"))
}

/// Installs the tracing subscriber: `RUST_LOG` filters (default `info`),
/// `json` picks JSON lines over text. Logs go to stderr; stdout carries
/// only the ready line.
pub fn init_logging(json: bool) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Colour only for a person at a terminal: escape codes in a journal or
    // a log file are noise to whoever greps it.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn wal_options(opts: &DaemonOptions) -> WalOptions {
    let defaults = WalOptions::default();
    // A record must fit an empty segment; small segments get small records.
    let record_bytes_max = defaults
        .record_bytes_max
        .min((opts.segment_bytes / 2) as usize);
    WalOptions {
        segment_bytes: opts.segment_bytes,
        record_bytes_max,
        recovery_mode: opts.recovery_mode,
        queue_len_max: opts.wal_queue_len_max,
        ..defaults
    }
}

/// Runs the daemon until SIGINT or SIGTERM, then shuts down cleanly (see
/// [`shutdown`]). Returns only on a clean stop or a start-up failure; a
/// fail-stop, or a second signal during the shutdown, exits the process from
/// inside.
pub fn run(opts: DaemonOptions) -> Result<(), StartError> {
    let token = access(&opts)?;
    // Before any thread starts, so that every thread inherits the mask and
    // only the signal thread ever sees SIGINT and SIGTERM.
    let stop = watch_signals()?;
    let order = lock_order(&opts)?;
    // The directory is ours before anything listens: a second daemon on
    // the same directory fails here, whatever its address.
    let dir_lock = Wal::lock_dir(&opts.data_dir).map_err(wal_error)?;
    let metrics = web::Data::new(Metrics::new());
    let recover: Recover = {
        let (opts, metrics) = (opts.clone(), metrics.clone());
        Box::new(move |progress: &Progress| {
            let (wal, recovered) = Wal::open_locked(dir_lock, &opts.data_dir, wal_options(&opts))
                .map_err(wal_error)?;
            let state = prepare(&opts, order, &wal, recovered, &metrics, progress)?;
            Ok((state, wal))
        })
    };
    let (served, wal) = serve(
        &opts,
        recover,
        metrics,
        Front {
            listen: Listen::Addr(opts.listen.clone()),
            token,
        },
        stop,
        |ready| {
            println!(
                "wconfd ready on http://{} (epoch {}, lsn {})",
                ready.addr, ready.epoch, ready.lsn
            );
            let _ = std::io::stdout().flush();
            // systemd `Type=notify`: started only once the ports listen.
            notify(&[sd_notify::NotifyState::Ready]);
        },
    );
    let closed = wal.map_or(Ok(()), close_log);
    served?;
    closed
}

/// The last step of every stop: writes whatever is still queued, stops the
/// writer (each batch was already fdatasynced before it was acknowledged),
/// and releases the directory lock with the last reference to the log.
fn close_log(wal: Arc<Wal>) -> Result<(), StartError> {
    let closed = wal
        .close()
        .map_err(|e| StartError::new(exit::FAIL_STOP, e.to_string()));
    let lsn = wal.durable_lsn();
    // The actors are gone with the runtime, so this is normally the last
    // reference: dropping it unlocks `LOCK` now, not at process exit.
    drop(wal);
    if closed.is_ok() {
        tracing::info!(lsn, "log closed");
    }
    closed
}

/// SIGINT and SIGTERM are blocked in this thread (and every thread started
/// after) and taken by a dedicated thread with `sigwait`. The first starts
/// the clean shutdown through the returned receiver; a second exits at once
/// with [`exit::FORCED`]. That is safe: every acknowledged record was
/// fdatasynced before its answer, and recovery cuts a torn tail.
fn watch_signals() -> Result<oneshot::Receiver<()>, StartError> {
    use nix::sys::signal::{SigSet, Signal};
    let mut set = SigSet::empty();
    set.add(Signal::SIGINT);
    set.add(Signal::SIGTERM);
    set.thread_block()
        .map_err(|e| StartError::new(exit::START, format!("block SIGINT and SIGTERM: {e}")))?;
    let (tx, rx) = oneshot::channel();
    std::thread::Builder::new()
        .name("wconfd-signals".into())
        .spawn(move || {
            let first = set.wait();
            tracing::info!(
                signal = ?first,
                "shutting down cleanly; a second SIGINT or SIGTERM stops at once"
            );
            let _ = tx.send(());
            let second = set.wait();
            tracing::warn!(signal = ?second, "second signal: exiting at once; the log is safe");
            eprintln!("wconfd: second signal during shutdown: exiting at once");
            std::process::exit(exit::FORCED);
        })
        .map_err(|e| StartError::new(exit::START, format!("spawn the signal thread: {e}")))?;
    Ok(rx)
}

/// Who may talk to the daemon, checked before anything is opened: reads
/// the token file, and refuses a non-loopback `listen` address without a
/// token unless `insecure` says so (exit 2 either way).
fn access(opts: &DaemonOptions) -> Result<Option<Token>, StartError> {
    if opts.socket_group.is_some() && opts.socket.is_none() {
        return Err(StartError::new(
            exit::USAGE,
            "--socket-group needs --socket: it grants a group access to the Unix socket",
        ));
    }
    if let Some(group) = &opts.socket_group {
        socket_gid(group)?;
    }
    let token = match &opts.auth_token_file {
        Some(path) => Some(read_token_file(path).map_err(|e| StartError::new(exit::USAGE, e))?),
        None => None,
    };
    if token.is_none() && !opts.insecure {
        use std::net::ToSocketAddrs;
        // An address that does not resolve fails at bind, with its reason.
        let exposed = opts
            .listen
            .to_socket_addrs()
            .map(|mut addrs| addrs.any(|a| !a.ip().is_loopback()))
            .unwrap_or(false);
        if exposed {
            return Err(StartError::new(
                exit::USAGE,
                format!(
                    "--listen {} is not a loopback address: anyone who reaches it could \
                     change the configuration and the locks. Give --auth-token-file FILE \
                     (clients then send its token), or --insecure to serve it without one",
                    opts.listen
                ),
            ));
        }
    }
    Ok(token)
}

fn lock_order(opts: &DaemonOptions) -> Result<LockOrder, StartError> {
    LockOrder::new(opts.lock_order.clone())
        .map_err(|e| StartError::new(exit::USAGE, format!("--lock-order: {e}")))
}

/// Everything between opening the log and serving: log what recovery did,
/// replay, and make a new epoch record durable.
fn prepare(
    opts: &DaemonOptions,
    order: LockOrder,
    wal: &Wal,
    recovered: Recovered,
    metrics: &Metrics,
    progress: &Progress,
) -> Result<State, StartError> {
    let report = &recovered.report;
    tracing::info!(
        dir = %opts.data_dir.display(),
        mode = %report.mode,
        segments = report.segments,
        records = report.records,
        bytes = report.bytes,
        ms = report.elapsed.as_millis() as u64,
        "recovered the log"
    );
    // A cut was already logged, with every detail, by wal::recovery.
    let (mut state, recovery) =
        recover_state(wal.storage().as_ref(), wal.dir(), &recovered, progress)
            .map_err(replay_error)?;
    let snapshot_lsn = recovery.snapshot.as_ref().map(|(_, lsn, _, _)| *lsn);
    metrics.recovered(
        report.elapsed + recovery.elapsed,
        recovery.replay.records,
        snapshot_lsn,
    );
    drop(recovered);
    tracing::info!(
        records = recovery.replay.records,
        skipped = recovery.replay.skipped,
        ms = recovery.replay_elapsed.as_millis() as u64,
        lsn = state.applied_lsn(),
        "replayed"
    );

    // A new epoch, durable before anything is served.
    let epoch = Record::Epoch {
        epoch: state.epoch() + 1,
        started_unix_ms: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64),
    };
    let lsn = state.next_lsn();
    if wal.next_lsn() != lsn {
        return Err(StartError::new(
            exit::CORRUPT,
            format!(
                "the log continues at LSN {} but replay reached LSN {}",
                wal.next_lsn(),
                lsn - 1
            ),
        ));
    }
    state
        .apply(lsn, &epoch)
        .map_err(|e| StartError::new(exit::CORRUPT, e.to_string()))?;
    let (kind, payload) =
        encode_record(&epoch).map_err(|e| StartError::new(exit::START, e.to_string()))?;
    wal.append(kind, payload)
        .and_then(|a| a.wait())
        .map_err(|e| StartError::new(exit::FAIL_STOP, e.to_string()))?;
    state.set_lock_order(order);
    crate::failpoints::failpoint!("server::ready::before");
    Ok(state)
}

/// Where the HTTP server listens.
enum Listen {
    /// Bind this address (`wconfd`).
    Addr(String),
    /// Serve on a socket the caller bound (in-process servers).
    Listener(std::net::TcpListener),
}

/// How clients reach the server: where it listens, and the token TCP
/// requests must carry.
struct Front {
    listen: Listen,
    token: Option<Token>,
}

/// How long, at most, the HTTP server waits for requests in flight when it
/// stops. By then every waiting request has been answered, so what is left
/// only waits for a group commit; the limit is for a disk that hangs.
pub const SHUTDOWN_DRAIN_S: u64 = 10;

/// What the server announces once it accepts connections.
struct Ready {
    addr: String,
    epoch: u64,
    lsn: u64,
    wal: Arc<Wal>,
}

/// Recovery: opens the log and rebuilds the state, reporting its progress.
/// Runs on a blocking thread while the server already answers `/healthz`.
type Recover = Box<dyn FnOnce(&Progress) -> Result<(State, Wal), StartError> + Send>;

/// Connections waiting to be accepted, at most, per listener (actix's own
/// default): clients that connect while recovery hands over to the full
/// server wait here.
const LISTEN_BACKLOG: u32 = 2_048;

/// The sockets, bound once: the recovery server and then the full server
/// serve on copies of them, so the address never stops listening.
struct Bound {
    tcp: Vec<std::net::TcpListener>,
    uds: Option<std::os::unix::net::UnixListener>,
    addr: String,
    /// HTTP worker threads: actix's default (one per core) for `wconfd`,
    /// two for a server inside a test process.
    workers: Option<usize>,
}

fn listen_error(what: &str, e: std::io::Error) -> StartError {
    StartError::new(exit::START, format!("listen on {what}: {e}"))
}

/// Binds every address `listen` resolves to (as actix does: those that
/// bind, an error if none does), with SO_REUSEADDR so a restart can take
/// the port back at once, and the Unix socket owner-only.
async fn bind(opts: &DaemonOptions, listen: Listen) -> Result<Bound, StartError> {
    let workers = match &listen {
        Listen::Listener(_) => Some(2),
        Listen::Addr(_) => None,
    };
    let tcp = match listen {
        Listen::Listener(l) => vec![l],
        Listen::Addr(addr) => {
            let addrs = tokio::net::lookup_host(&addr)
                .await
                .map_err(|e| listen_error(&addr, e))?;
            let mut bound = Vec::new();
            let mut last = None;
            for a in addrs {
                let tried = (|| {
                    let socket = match a {
                        std::net::SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
                        std::net::SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
                    };
                    socket.set_reuseaddr(true)?;
                    socket.bind(a)?;
                    socket.listen(LISTEN_BACKLOG)?.into_std()
                })();
                match tried {
                    Ok(l) => bound.push(l),
                    Err(e) => last = Some(e),
                }
            }
            if bound.is_empty() {
                let e = last.unwrap_or_else(|| std::io::Error::other("no address"));
                return Err(listen_error(&addr, e));
            }
            bound
        }
    };
    let addr = tcp[0]
        .local_addr()
        .map_err(|e| listen_error("the listener", e))?
        .to_string();
    let uds = match &opts.socket {
        Some(path) => {
            remove_stale_socket(path)?;
            // Created owner-only from the start (umask), then made exactly
            // 0600: no other user can connect between bind and chmod.
            let old = umask(Mode::from_bits_truncate(0o177));
            let bound = std::os::unix::net::UnixListener::bind(path);
            umask(old);
            let listener = bound.map_err(|e| socket_error("bind", path, e))?;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
                .map_err(|e| socket_error("chmod", path, e))?;
            if let Some(group) = &opts.socket_group {
                grant_group(path, group)?;
            }
            Some(listener)
        }
        None => None,
    };
    Ok(Bound {
        tcp,
        uds,
        addr,
        workers,
    })
}

impl Bound {
    /// Copies of every socket, for one server to serve on.
    fn copies(
        &self,
    ) -> Result<
        (
            Vec<std::net::TcpListener>,
            Option<std::os::unix::net::UnixListener>,
        ),
        StartError,
    > {
        let tcp = self
            .tcp
            .iter()
            .map(|l| l.try_clone().map_err(|e| listen_error(&self.addr, e)))
            .collect::<Result<_, _>>()?;
        let uds = match &self.uds {
            Some(l) => Some(
                l.try_clone()
                    .map_err(|e| listen_error("the Unix socket", e))?,
            ),
            None => None,
        };
        Ok((tcp, uds))
    }
}

/// Has an `HttpServer` serve on copies of every socket of a [`Bound`].
macro_rules! serve_on {
    ($bound:expr, $server:expr) => {{
        let (tcp, uds) = $bound.copies()?;
        let mut server = $server;
        for l in tcp {
            server = server
                .listen(l)
                .map_err(|e| listen_error(&$bound.addr, e))?;
        }
        if let Some(l) = uds {
            server = server
                .listen_uds(l)
                .map_err(|e| listen_error("the Unix socket", e))?;
        }
        server
    }};
}

/// While recovery runs: `/healthz` answers 503 with its progress, `/metrics`
/// answers, everything else 503 `recovering` (after the token check, as
/// always).
fn recovery_server(
    bound: &Bound,
    metrics: web::Data<Metrics>,
    gate: Gate,
    progress: Arc<Progress>,
) -> Result<actix_web::dev::Server, StartError> {
    let server = HttpServer::new(move || {
        App::new()
            .app_data(metrics.clone())
            .app_data(web::Data::new(gate.clone()))
            .app_data(web::Data::from(progress.clone()))
            .wrap(actix_web::middleware::from_fn(api::guard::gate))
            .route("/healthz", web::get().to(api::healthz_recovering))
            .route("/metrics", web::get().to(api::metrics::scrape))
            .default_service(web::to(api::recovering))
            .wrap(actix_web::middleware::from_fn(api::metrics::observe))
    })
    .disable_signals()
    .workers(1)
    .shutdown_timeout(1);
    Ok(serve_on!(bound, server).run())
}

/// Binds, serves `/healthz` (503, with progress) while `recover` runs on
/// a blocking thread, then starts the actors and the full server on the
/// same sockets and serves until `stop` resolves (or its sender is
/// dropped), then runs the clean [`shutdown`]. Returns the log, when
/// recovery opened one, for the caller to close.
fn serve(
    opts: &DaemonOptions,
    recover: Recover,
    metrics: web::Data<Metrics>,
    front: Front,
    stop: oneshot::Receiver<()>,
    on_ready: impl FnOnce(Ready),
) -> (Result<(), StartError>, Option<Arc<Wal>>) {
    let Front { listen, token } = front;
    let system = actix_web::rt::System::new();
    system.block_on(async move {
        let bound = match bind(opts, listen).await {
            Ok(b) => b,
            Err(e) => return (Err(e), None),
        };
        let gate = Gate {
            token: token.map(Arc::new),
            ..Gate::default()
        };
        let progress = Arc::new(Progress::default());
        let recovering =
            match recovery_server(&bound, metrics.clone(), gate.clone(), progress.clone()) {
                Ok(server) => server,
                Err(e) => return (Err(e), None),
            };
        let recovering_handle = recovering.handle();
        let recovering = actix_web::rt::spawn(recovering);
        tracing::info!(addr = %bound.addr, "recovering; /healthz answers 503 until ready");
        let recovered = {
            let progress = progress.clone();
            actix_web::rt::task::spawn_blocking(move || recover(&progress)).await
        };
        recovering_handle.stop(true).await;
        let _ = recovering.await;
        let (state, wal) = match recovered {
            Ok(Ok((state, wal))) => (state, Arc::new(wal)),
            Ok(Err(e)) => return (Err(e), None),
            Err(e) => {
                let e = StartError::new(exit::START, format!("recovery thread: {e}"));
                return (Err(e), None);
            }
        };
        progress.set_phase(crate::replay::Phase::Ready);
        let result = serve_recovered(
            opts,
            state,
            wal.clone(),
            metrics,
            bound,
            gate,
            stop,
            on_ready,
        )
        .await;
        (result, Some(wal))
    })
}

/// The full server, once recovery is done.
#[allow(clippy::too_many_arguments)]
async fn serve_recovered(
    opts: &DaemonOptions,
    state: State,
    wal: Arc<Wal>,
    metrics: web::Data<Metrics>,
    bound: Bound,
    gate: Gate,
    stop: oneshot::Receiver<()>,
    on_ready: impl FnOnce(Ready),
) -> Result<(), StartError> {
    {
        let epoch = state.epoch();
        let lsn = state.applied_lsn();
        // Replay does not keep the LSN of the last config change; the epoch
        // record just written is durable, so reads never wait on it.
        let config_lsn = lsn;
        let wal_arbiter = Arbiter::new();
        let wal_for_actor = wal.clone();
        let wal_actor = WalActor::start_in_arbiter(&wal_arbiter.handle(), move |_| {
            WalActor::new(wal_for_actor)
        });
        let (config_tx, config_rx) = Published::new(state.config().clone());
        let config_reader = ConfigReader::new(config_rx.clone(), wal.clone());
        // Its own thread: encoding a large document (1.5 ms per MB) on the
        // system arbiter held up every lock decision behind it.
        // Built here, so its start-up check fails the start, not that thread.
        let config_arbiter = Arbiter::new();
        let config = ConfigActor::new(config_rx, config_lsn, wal.clone());
        let config = ConfigActor::start_in_arbiter(&config_arbiter.handle(), move |_| config);
        let snapshot_writer = SnapshotWriter::start(wal.clone())
            .map_err(|e| StartError::new(exit::START, format!("start the snapshot writer: {e}")))?;
        let lock = LockActor::new(
            state,
            wal.clone(),
            wal_actor,
            config_tx,
            metrics.clone().into_inner(),
        )
        .with_snapshots(snapshot_writer, opts.snapshot_policy)
        .start();
        metrics.watch_wal(wal.clone());
        let handles = Handles {
            lock: Mailbox::new(lock.clone(), metrics.mailbox(MailboxOf::Lock)),
            config: Mailbox::new(config, metrics.mailbox(MailboxOf::Config)),
            config_reader,
            wal_dir: wal.dir().to_path_buf(),
        };
        let body_bytes_max = opts.body_bytes_max;
        let app_gate = gate.clone();
        let server = HttpServer::new(move || {
            App::new()
                .app_data(metrics.clone())
                .app_data(web::Data::new(handles.clone()))
                .app_data(web::Data::new(app_gate.clone()))
                .app_data(api::json_config(body_bytes_max))
                .app_data(web::PayloadConfig::new(body_bytes_max))
                .wrap(actix_web::middleware::from_fn(api::guard::gate))
                .configure(api::configure)
                .default_service(web::to(api::not_found))
                // Wrapped last, so outermost: every request is counted,
                // whoever answers it (the shutdown gate's 503s too).
                .wrap(actix_web::middleware::from_fn(api::metrics::observe))
        })
        // Signals belong to `run`'s signal thread; the shutdown below
        // stops the server in its own order.
        .disable_signals()
        .shutdown_timeout(SHUTDOWN_DRAIN_S);
        let server = match bound.workers {
            Some(n) => server.workers(n),
            None => server,
        };
        let server = serve_on!(bound, server);
        let addr = bound.addr.clone();
        drop(bound);
        let running = server.run();
        let handle = running.handle();
        let mut running = actix_web::rt::spawn(running);
        tracing::info!(%addr, epoch, lsn, "ready");
        on_ready(Ready {
            addr,
            epoch,
            lsn,
            wal: wal.clone(),
        });
        let result = tokio::select! {
            // The server only ends by itself on an error.
            ended = &mut running => server_ended(ended),
            _ = stop => {
                let shut = shutdown(&gate, &lock, &handle, &wal).await;
                let ended = server_ended(running.await);
                shut.and(ended)
            }
        };
        wal_arbiter.stop();
        config_arbiter.stop();
        if result.is_ok() {
            tracing::info!("stopped cleanly");
        }
        result
    }
}

fn server_ended(
    ended: Result<std::io::Result<()>, actix_web::rt::task::JoinError>,
) -> Result<(), StartError> {
    match ended {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(StartError::new(exit::START, format!("HTTP server: {e}"))),
        Err(e) => Err(StartError::new(
            exit::START,
            format!("HTTP server task: {e}"),
        )),
    }
}

/// The clean shutdown, in order:
///
/// 1. refuse new requests (503 `shutting_down`, at the gate);
/// 2. answer every waiting acquire and transaction 503 `shutting_down`,
///    and let no request start waiting;
/// 3. stop accepting connections and let the requests in flight finish:
///    they only wait for their group commit now;
/// 4. wait until everything the lock actor applied is durable (the last
///    group commit);
/// 5. write a snapshot of that state ([`final_snapshot`]).
///
/// The caller then closes the log and so releases the directory lock.
async fn shutdown(
    gate: &Gate,
    lock: &Addr<LockActor>,
    handle: &actix_web::dev::ServerHandle,
    wal: &Wal,
) -> Result<(), StartError> {
    notify(&[sd_notify::NotifyState::Stopping]);
    gate.stop();
    let stopped = |e: MailboxError| StartError::new(exit::START, format!("lock actor: {e}"));
    let waits_ended = lock.send(Shutdown).await;
    // Stopped whatever the actor answered: the server must never outlive
    // a failed shutdown (`serve` awaits it).
    handle.stop(true).await;
    waits_ended.map_err(stopped)?;
    // Requests that passed the gate before it closed were still decided
    // while the server drained; ask again for the last applied LSN.
    let lsn = lock.send(Shutdown).await.map_err(stopped)?;
    match wal.wait_durable(lsn).await {
        Ok(_) => {}
        Err(WalError::Poisoned { .. }) | Err(WalError::Closed) => {
            return Err(StartError::new(
                exit::FAIL_STOP,
                wal.poisoned()
                    .map_or_else(|| "the log closed early".into(), |e| e.to_string()),
            ))
        }
        Err(e) => return Err(StartError::new(exit::START, e.to_string())),
    }
    tracing::info!(lsn, "every request answered and every record durable");
    final_snapshot(lock).await;
    Ok(())
}

/// Step 5: a snapshot of the final state, so the next start loads it and
/// replays nothing. A failure is a warning, not an error: the log already
/// holds every record, and the next start replays it from the previous
/// snapshot (only slower).
async fn final_snapshot(lock: &Addr<LockActor>) {
    let (reply, answer) = oneshot::channel();
    if lock.send(TakeSnapshot { reply }).await.is_err() {
        tracing::warn!("no final snapshot: the lock actor is gone");
        return;
    }
    match answer.await {
        Ok(Ok(taken)) => tracing::info!(
            lsn = taken.lsn,
            bytes = taken.bytes,
            ms = taken.duration_ms,
            "final snapshot written"
        ),
        Ok(Err(e)) => tracing::warn!(
            error = %e,
            "no final snapshot; the next start replays the log after the previous one"
        ),
        Err(_) => tracing::warn!("no final snapshot: the lock actor dropped the request"),
    }
}

/// Tells the service manager about a state change when `NOTIFY_SOCKET` is
/// set (systemd `Type=notify`); without it this does nothing. A failure is
/// logged, never fatal: the daemon serves either way.
fn notify(state: &[sd_notify::NotifyState]) {
    if let Err(e) = sd_notify::notify(state) {
        tracing::warn!(error = %e, "sd_notify failed");
    }
}

/// A daemon running inside this process, on a storage backend the caller
/// chose (for tests that simulate power loss with `MemStorage`).
///
/// The log is opened with `Wal::open_with`, which takes no directory lock:
/// the caller guarantees one server per storage and directory. A fail-stop
/// inside such a server does not end the host process (see
/// [`crate::actors::fail_stop`]): its actor thread halts, so nothing is
/// answered again, and [`InProcess::fail_stopped`] tells why.
pub struct InProcess {
    addr: std::net::SocketAddr,
    epoch: u64,
    lsn: u64,
    /// Fires the clean shutdown, as a first SIGTERM does for `wconfd`.
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<Result<(), StartError>>>,
    wal: Arc<Wal>,
}

/// Starts the daemon on `storage` (its log in `opts.data_dir` there), serving
/// HTTP on `listener`, in a background thread. `opts.listen` is not used.
/// Returns once the server accepts connections.
pub fn start_in_process(
    opts: &DaemonOptions,
    storage: Arc<dyn Storage>,
    listener: std::net::TcpListener,
) -> Result<InProcess, StartError> {
    crate::actors::fail_stop_halts_thread();
    let token = access(opts)?;
    let order = lock_order(opts)?;
    let addr = listener
        .local_addr()
        .map_err(|e| StartError::new(exit::START, format!("listener address: {e}")))?;
    let metrics = web::Data::new(Metrics::new());
    let recover: Recover = {
        let (opts, metrics) = (opts.clone(), metrics.clone());
        Box::new(move |progress: &Progress| {
            let (wal, recovered) =
                Wal::open_with(storage, &opts.data_dir, wal_options(&opts)).map_err(wal_error)?;
            let state = prepare(&opts, order, &wal, recovered, &metrics, progress)?;
            Ok((state, wal))
        })
    };
    let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel(1);
    let (stop_tx, stop_rx) = oneshot::channel();
    let thread = {
        let opts = opts.clone();
        std::thread::Builder::new()
            .name("wconfd-in-process".into())
            .spawn(move || {
                let front = Front {
                    listen: Listen::Listener(listener),
                    token,
                };
                let (served, wal) = serve(&opts, recover, metrics, front, stop_rx, |ready| {
                    let _ = ready_tx.send(ready);
                });
                // A server that never became ready closes its log here; a
                // ready one is closed by `InProcess::stop`.
                if served.is_err() {
                    if let Some(wal) = wal {
                        let _ = wal.close();
                    }
                }
                served
            })
            .map_err(|e| StartError::new(exit::START, format!("spawn server thread: {e}")))?
    };
    match ready_rx.recv() {
        Ok(ready) => Ok(InProcess {
            addr,
            epoch: ready.epoch,
            lsn: ready.lsn,
            stop: Some(stop_tx),
            thread: Some(thread),
            wal: ready.wal,
        }),
        // The server thread ended before it was ready: its error says why.
        Err(_) => Err(match thread.join() {
            Ok(Err(e)) => e,
            Ok(Ok(())) => StartError::new(exit::START, "server stopped before it was ready"),
            Err(_) => StartError::new(exit::START, "server thread panicked"),
        }),
    }
}

impl InProcess {
    /// The TCP address the server answers on.
    pub fn addr(&self) -> std::net::SocketAddr {
        self.addr
    }

    /// The epoch this start wrote, and its LSN.
    pub fn epoch(&self) -> (u64, u64) {
        (self.epoch, self.lsn)
    }

    /// Why the server fail-stopped, if it did.
    pub fn fail_stopped(&self) -> Option<String> {
        crate::actors::last_fail_stop()
    }

    /// Shuts down cleanly, as `wconfd` does on SIGTERM: every request
    /// answered, every record durable; then closes the log. A fail-stopped
    /// server's thread is halted for good; it is left behind.
    pub fn stop(mut self) -> Result<(), StartError> {
        if self.fail_stopped().is_some() {
            return Err(StartError::new(
                exit::FAIL_STOP,
                self.fail_stopped().unwrap_or_default(),
            ));
        }
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let served = match self.thread.take().map(|t| t.join()) {
            Some(Ok(result)) => result,
            Some(Err(_)) => Err(StartError::new(exit::START, "server thread panicked")),
            None => Ok(()),
        };
        let closed = self.wal.close();
        served?;
        closed.map_err(|e| StartError::new(exit::FAIL_STOP, e.to_string()))
    }
}

/// The group `--socket-group` names: a group name, else a number.
fn socket_gid(group: &str) -> Result<nix::unistd::Gid, StartError> {
    use nix::unistd::{Gid, Group};
    match Group::from_name(group) {
        Ok(Some(g)) => Ok(g.gid),
        _ => group.parse::<u32>().map(Gid::from_raw).map_err(|_| {
            StartError::new(
                exit::USAGE,
                format!("--socket-group: there is no group {group:?}"),
            )
        }),
    }
}

/// Gives `group` access to the socket: its group first, then mode 0660,
/// so the socket is never open to a group other than the one named.
fn grant_group(path: &Path, group: &str) -> Result<(), StartError> {
    let gid = socket_gid(group)?;
    nix::unistd::chown(path, None, Some(gid))
        .map_err(|e| socket_error(&format!("chown to group {group}"), path, e.into()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
        .map_err(|e| socket_error("chmod", path, e))
}

fn socket_error(what: &str, path: &Path, e: std::io::Error) -> StartError {
    StartError::new(exit::START, format!("{what} {}: {e}", path.display()))
}

/// A socket left by a previous run is replaced; any other file is not.
fn remove_stale_socket(path: &Path) -> Result<(), StartError> {
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(StartError::new(
                exit::START,
                format!("{} exists and is not a socket", path.display()),
            ));
        }
        std::fs::remove_file(path).map_err(|e| socket_error("remove stale socket", path, e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_sizes_parse_with_and_without_suffixes() {
        // Invariant: plain integers are bytes; suffixes are powers of 1024;
        // junk and overflow are errors, not panics.
        assert_eq!(parse_bytes("67108864"), Ok(64 << 20));
        assert_eq!(parse_bytes("64MiB"), Ok(64 << 20));
        assert_eq!(parse_bytes("64M"), Ok(64 << 20));
        assert_eq!(parse_bytes("4KiB"), Ok(4096));
        assert_eq!(parse_bytes("1GiB"), Ok(1 << 30));
        assert!(parse_bytes("").is_err());
        assert!(parse_bytes("MiB").is_err());
        assert!(parse_bytes("12 parsecs").is_err());
        assert!(parse_bytes("99999999999999999999GiB").is_err());
    }
}
