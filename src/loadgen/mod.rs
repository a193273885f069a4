//! `wconf-bench`, the load generator of issue 7: N keep-alive HTTP/1.1
//! connections drive a running `wconfd` with one of five workloads, in a
//! closed loop or at a fixed rate, and the run is reported with latency
//! percentiles, errors by kind, the daemon's own group-commit figures and
//! where the CPU went. `plot` turns a set of reports into a table and SVGs.
//! `src/bin/wconf-bench.rs` only calls [`cli::main`], which parses flags
//! and calls [`run`] or [`plot::render`].

pub mod cli;
pub mod cpu;
pub mod http;
pub mod metrics;
pub mod plot;
pub mod report;
pub mod workload;

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use hyper::Method;
use rand::{Rng, SeedableRng};
use tokio::time::sleep_until;

use self::cpu::{CpuSplit, Sample};
pub use self::http::Target;
use self::http::{Conn, Endpoint, ErrorKind, OpError};
use self::metrics::WalDelta;
use self::report::{DaemonFigures, Errors, KindReport, Latency, Report, SnapshotFigures};
use self::workload::{Client, OpKind, Params, Plan, Workload};
use crate::api::types::{SnapshotTaken, Status};

/// Where `wconfd` listens unless told otherwise.
pub const ADDR_DEFAULT: &str = "127.0.0.1:7370";
/// Connections at most: each is a session-less socket (a session too in
/// `contended`), and the daemon caps sessions and waiters far above this.
pub const CONNECTIONS_MAX: usize = 10_000;
/// `--pad-config-mb` at most: under the daemon's `DOC_BYTES_MAX` (256 MiB)
/// with room for the workload's own keys.
const PAD_CONFIG_MB_MAX: u64 = 200;
/// Latencies are recorded up to an hour, at 3 significant digits.
const LATENCY_US_MAX: u64 = 3_600_000_000;
/// Error messages kept for the report.
const ERROR_SAMPLES_MAX: usize = 5;
/// Pause after a connection error or a 503, so a client facing a dead or
/// saturated daemon does not spin; the daemon's `Retry-After` (1 s) would
/// stall a benchmark, so it is not honoured.
const ERROR_BACKOFF: Duration = Duration::from_millis(10);

/// Everything a run needs.
#[derive(Debug, Clone)]
pub struct Options {
    pub target: Target,
    /// The bearer token of a daemon started with `--auth-token-file`.
    pub token: Option<crate::auth::Token>,
    pub workload: Workload,
    pub connections: usize,
    pub duration: Duration,
    pub warmup: Duration,
    /// Open loop: operations per second over all connections.
    pub rate: Option<f64>,
    pub params: Params,
    pub seed: u64,
    /// The daemon's pid for the CPU split; found from the listening socket
    /// when None.
    pub daemon_pid: Option<u32>,
    /// MB of untouched document to add under `/pad` before the run.
    pub pad_config_mb: u64,
    /// Ask for a snapshot this often while measuring (the next as soon as
    /// the last is durable if it took longer).
    pub snapshot_every: Option<Duration>,
    /// Print a progress line on stderr once a second.
    pub progress: bool,
}

/// Why a run could not be made (failed operations during the run are not
/// this: they are counted in the report).
#[derive(Debug)]
#[non_exhaustive]
pub enum RunError {
    /// A flag out of range.
    Usage(String),
    /// The daemon could not be reached or refused the set-up.
    Setup(String),
}

impl std::fmt::Display for RunError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RunError::Usage(m) => write!(f, "{m}"),
            RunError::Setup(m) => write!(f, "set-up failed: {m}"),
        }
    }
}

impl std::error::Error for RunError {}

impl Options {
    fn check(&self) -> Result<(), RunError> {
        let bad = |m: &str| Err(RunError::Usage(m.to_string()));
        if !(1..=CONNECTIONS_MAX).contains(&self.connections) {
            return bad("--connections must be 1 to 10,000");
        }
        if self.duration.is_zero() {
            return bad("--duration must be above 0");
        }
        let p = &self.params;
        if p.keys == 0 || p.instances == 0 {
            return bad("--keys and --instances must be at least 1");
        }
        if !(0.0..=1.0).contains(&p.write_ratio) {
            return bad("--write-ratio must be within 0..=1");
        }
        if p.read_whole && self.workload != Workload::Read {
            return bad("--read-whole applies to --workload read only");
        }
        if p.release_before_close && self.workload != Workload::Job {
            return bad("--release-before-close applies to --workload job only");
        }
        if self.rate.is_some_and(|r| !(r > 0.0 && r.is_finite())) {
            return bad("--rate must be above 0");
        }
        if self.pad_config_mb > PAD_CONFIG_MB_MAX {
            return bad(
                "--pad-config-mb must be at most 200 (the daemon's document limit is 256 MiB)",
            );
        }
        if self.snapshot_every.is_some_and(|d| d.is_zero()) {
            return bad("--snapshot-every must be above 0");
        }
        Ok(())
    }
}

/// Counters the progress line reads while clients run.
#[derive(Default)]
struct Live {
    ops: AtomicU64,
    errors: AtomicU64,
}

/// When things happen, shared by every client.
#[derive(Clone, Copy)]
struct Clock {
    start: Instant,
    measure: Instant,
    end: Instant,
    /// Open loop: the time between one client's operations.
    interval: Option<Duration>,
}

/// What one client saw.
struct Tally {
    hist: BTreeMap<OpKind, Histogram<u64>>,
    warmup_ops: u64,
    late_ops: u64,
    unsent_ops: u64,
    changes: u64,
    errors: BTreeMap<ErrorKind, u64>,
    samples: Vec<String>,
    connects: u64,
}

impl Tally {
    fn new() -> Tally {
        Tally {
            hist: BTreeMap::new(),
            warmup_ops: 0,
            late_ops: 0,
            unsent_ops: 0,
            changes: 0,
            errors: BTreeMap::new(),
            samples: Vec::new(),
            connects: 0,
        }
    }

    fn error(&mut self, e: &OpError) {
        *self.errors.entry(e.kind).or_default() += 1;
        if self.samples.len() < ERROR_SAMPLES_MAX {
            self.samples
                .push(format!("{}: {}", e.kind.name(), e.message));
        }
    }

    fn merge(&mut self, other: Tally) {
        for (k, h) in other.hist {
            match self.hist.get_mut(&k) {
                Some(mine) => mine.add(&h).expect("histograms of equal bounds"),
                None => {
                    self.hist.insert(k, h);
                }
            }
        }
        self.warmup_ops += other.warmup_ops;
        self.late_ops += other.late_ops;
        self.unsent_ops += other.unsent_ops;
        self.changes += other.changes;
        for (k, n) in other.errors {
            *self.errors.entry(k).or_default() += n;
        }
        for s in other.samples {
            if self.samples.len() < ERROR_SAMPLES_MAX {
                self.samples.push(s);
            }
        }
        self.connects += other.connects;
    }
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_US_MAX, 3).expect("valid histogram bounds")
}

/// One client's loop until the window closes; then it closes what it
/// opened.
async fn drive(mut client: Client, clock: Clock, connections: usize, live: Arc<Live>) -> Tally {
    let mut t = Tally::new();
    // Open loop: clients are spread evenly over one interval.
    let offset = clock
        .interval
        .map(|iv| iv.mul_f64(client.id as f64 / connections as f64));
    let mut k: u32 = 0;
    loop {
        let scheduled = match (clock.interval, offset) {
            (Some(iv), Some(off)) => {
                let at = clock.start + off + iv * k;
                if at >= clock.end {
                    break;
                }
                let now = Instant::now();
                if now >= clock.end {
                    // Behind schedule when the window closed: what is left
                    // was never sent, and the report says how much.
                    t.unsent_ops +=
                        ((clock.end - at).as_secs_f64() / iv.as_secs_f64()).ceil() as u64;
                    break;
                }
                k += 1;
                sleep_until(at.into()).await;
                at
            }
            _ => {
                let now = Instant::now();
                if now >= clock.end {
                    break;
                }
                now
            }
        };
        match client.op().await {
            Ok(done) => {
                let at = Instant::now();
                t.changes += done.changes;
                live.ops.fetch_add(1, Ordering::Relaxed);
                if at < clock.measure {
                    t.warmup_ops += 1;
                } else if at > clock.end {
                    t.late_ops += 1;
                } else {
                    // From the scheduled start: in open loop, time spent
                    // behind schedule is latency (coordinated omission).
                    let us = (at - scheduled)
                        .as_micros()
                        .clamp(1, LATENCY_US_MAX as u128);
                    t.hist
                        .entry(done.kind)
                        .or_insert_with(histogram)
                        .record(us as u64)
                        .expect("clamped into bounds");
                }
            }
            Err(e) => {
                t.error(&e);
                live.errors.fetch_add(1, Ordering::Relaxed);
                if matches!(e.kind, ErrorKind::Connection | ErrorKind::Busy503) {
                    tokio::time::sleep(ERROR_BACKOFF).await;
                }
            }
        }
    }
    if let Err(e) = client.finish().await {
        t.error(&e);
    }
    t.connects = client.conn.connects;
    t
}

/// GET /metrics, parsed; Err says why there are no figures.
async fn scrape(conn: &mut Conn) -> Result<metrics::Scrape, String> {
    let reply = conn
        .request(Method::GET, "/metrics", None)
        .await
        .map_err(|e| match e.kind {
            ErrorKind::Http4xx if e.message.starts_with("404") => {
                "GET /metrics answered 404".into()
            }
            _ => format!("GET /metrics: {}", e.message),
        })?;
    let text = String::from_utf8_lossy(&reply.body);
    let missing = metrics::missing(&text);
    if !missing.is_empty() {
        return Err(format!("/metrics lacks {}", missing.join(", ")));
    }
    metrics::parse(&text)
}

async fn status(conn: &mut Conn) -> Result<Status, RunError> {
    conn.call(Method::GET, "/v1/status", None::<&()>)
        .await
        .map_err(|e| RunError::Setup(format!("GET /v1/status: {}", e.message)))
}

/// The daemon's figures and the CPU over the measured window: sampled when
/// the window opens and when it closes, on a connection of its own.
async fn observe(
    endpoint: Endpoint,
    clock: Clock,
    daemon_pid: Option<u32>,
) -> (DaemonFigures, CpuSplit) {
    let mut conn = Conn::new(&endpoint);
    sleep_until(clock.measure.into()).await;
    let before = scrape(&mut conn).await;
    let cpu_before = Sample::take(daemon_pid);
    sleep_until(clock.end.into()).await;
    let cpu_after = Sample::take(daemon_pid);
    let after = scrape(&mut conn).await;
    let cpu = CpuSplit::between(&cpu_before, &cpu_after, daemon_pid);
    let daemon = match (before, after) {
        (Ok(b), Ok(a)) => DaemonFigures {
            available: true,
            unavailable_because: None,
            wal: Some(WalDelta::between(&b, &a)),
        },
        (Err(why), _) | (_, Err(why)) => DaemonFigures {
            available: false,
            unavailable_because: Some(why),
            wal: None,
        },
    };
    (daemon, cpu)
}

/// Asks for a snapshot every `every` from the window's opening until it
/// closes, on a connection of its own, and sums up the answers.
async fn snapshot_often(endpoint: Endpoint, clock: Clock, every: Duration) -> SnapshotFigures {
    let mut conn = Conn::new(&endpoint);
    let mut figures = SnapshotFigures::default();
    let mut next = clock.measure;
    while next < clock.end {
        sleep_until(next.into()).await;
        let asked = Instant::now();
        match conn
            .call::<SnapshotTaken>(Method::POST, "/v1/admin/snapshot", None::<&()>)
            .await
        {
            Ok(t) if Instant::now() <= clock.end => {
                figures.taken += 1;
                figures.bytes = t.bytes;
                figures.duration_ms_max = figures.duration_ms_max.max(t.duration_ms);
                figures.stall_us_max = figures.stall_us_max.max(t.stall_us);
            }
            Ok(_) => {}
            Err(_) => figures.failed += 1,
        }
        next = (asked + every).max(Instant::now());
    }
    figures
}

/// Prints a progress line on stderr once a second until aborted.
async fn progress(clock: Clock, live: Arc<Live>, unit: &'static str) {
    let mut last = 0;
    let mut tick = tokio::time::interval_at(
        (clock.start + Duration::from_secs(1)).into(),
        Duration::from_secs(1),
    );
    loop {
        tick.tick().await;
        let now = Instant::now();
        let ops = live.ops.load(Ordering::Relaxed);
        let phase = if now < clock.measure {
            "warm-up"
        } else {
            "measuring"
        };
        eprintln!(
            "[{:>5.1} s] {phase}: {} {unit}/s, {} errors",
            (now - clock.start).as_secs_f64(),
            report::thousands((ops - last) as f64),
            live.errors.load(Ordering::Relaxed)
        );
        last = ops;
    }
}

/// The port of `host:port`, if it is a local address this machine's /proc
/// can name the listener of.
fn local_port(addr: &str) -> Option<u16> {
    let sa: std::net::SocketAddr = addr.parse().ok()?;
    sa.ip().is_loopback().then_some(sa.port())
}

/// Runs the workload and reports it. Builds its own tokio runtime with one
/// worker per core.
pub fn run(opts: &Options) -> Result<Report, RunError> {
    opts.check()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| RunError::Setup(format!("tokio runtime: {e}")))?;
    rt.block_on(run_async(opts))
}

async fn run_async(opts: &Options) -> Result<Report, RunError> {
    let setup_err = |e: OpError| RunError::Setup(e.message);
    let started_unix_s = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let run_s = (opts.warmup + opts.duration).as_secs();
    let plan = Arc::new(Plan {
        workload: opts.workload,
        params: opts.params.clone(),
        run_ttl_ms: (run_s + 60).saturating_mul(1000).min(86_400_000),
        nonce: rand::random(),
    });
    let endpoint = Endpoint::new(&opts.target, opts.token.as_ref().map(|t| t.as_str()))
        .map_err(RunError::Usage)?;
    let mut admin = Conn::new(&endpoint);
    workload::setup(&mut admin, &plan)
        .await
        .map_err(setup_err)?;
    let pad_bytes = if opts.pad_config_mb > 0 {
        workload::pad(&mut admin, opts.pad_config_mb)
            .await
            .map_err(setup_err)?
    } else {
        0
    };
    let serial_before = status(&mut admin).await?.config_serial;

    let mut rng = rand::rngs::StdRng::seed_from_u64(opts.seed);
    let mut clients = Vec::with_capacity(opts.connections);
    for id in 0..opts.connections {
        let seeded = rand::rngs::StdRng::seed_from_u64(rng.gen());
        let mut c = Client::new(id, &endpoint, seeded, plan.clone());
        if let Err(e) = c.start().await {
            // Close the sessions already opened before giving up.
            for mut c in clients {
                let _ = Client::finish(&mut c).await;
            }
            return Err(setup_err(e));
        }
        clients.push(c);
    }

    let start = Instant::now();
    let clock = Clock {
        start,
        measure: start + opts.warmup,
        end: start + opts.warmup + opts.duration,
        interval: opts
            .rate
            .map(|r| Duration::from_secs_f64(opts.connections as f64 / r)),
    };
    let daemon_pid = opts.daemon_pid.or_else(|| match &opts.target {
        Target::Tcp(addr) => local_port(addr).and_then(cpu::listener_pid),
        Target::Unix(path) => cpu::unix_listener_pid(path),
    });
    let live = Arc::new(Live::default());
    let observer = tokio::spawn(observe(endpoint.clone(), clock, daemon_pid));
    let snapshotter = opts
        .snapshot_every
        .map(|every| tokio::spawn(snapshot_often(endpoint.clone(), clock, every)));
    let ticker = (opts.progress && std::io::stderr().is_terminal())
        .then(|| tokio::spawn(progress(clock, live.clone(), opts.workload.unit())));
    let tasks: Vec<_> = clients
        .into_iter()
        .map(|c| tokio::spawn(drive(c, clock, opts.connections, live.clone())))
        .collect();
    let mut tally = Tally::new();
    for task in tasks {
        tally.merge(task.await.expect("a client task panicked"));
    }
    if let Some(t) = ticker {
        t.abort();
    }
    let (daemon, cpu) = observer.await.expect("the observer task panicked");
    let snapshots = match snapshotter {
        Some(t) => Some(t.await.expect("the snapshot task panicked")),
        None => None,
    };
    let serial_after = status(&mut admin).await?.config_serial;

    let secs = opts.duration.as_secs_f64();
    let mut all = histogram();
    let mut by_kind = BTreeMap::new();
    for (kind, h) in &tally.hist {
        all.add(h).expect("histograms of equal bounds");
        by_kind.insert(
            kind.name().to_string(),
            KindReport {
                ops: h.len(),
                per_s: h.len() as f64 / secs,
                latency_us: Latency::of(h),
            },
        );
    }
    let errors = Errors {
        total: tally.errors.values().sum(),
        by_kind: ErrorKind::ALL
            .iter()
            .map(|k| {
                (
                    k.name().to_string(),
                    tally.errors.get(k).copied().unwrap_or(0),
                )
            })
            .collect(),
        samples: tally.samples,
    };
    Ok(Report {
        workload: opts.workload,
        addr: opts.target.to_string(),
        connections: opts.connections,
        duration_s: secs,
        warmup_s: opts.warmup.as_secs_f64(),
        rate: opts.rate,
        params: opts.params.clone(),
        seed: opts.seed,
        started_unix_s,
        unit: opts.workload.unit().to_string(),
        ops: all.len(),
        throughput: all.len() as f64 / secs,
        latency_us: Latency::of(&all),
        by_kind,
        warmup_ops: tally.warmup_ops,
        late_ops: tally.late_ops,
        unsent_ops: tally.unsent_ops,
        changes_acked: tally.changes,
        config_serial_before: serial_before,
        config_serial_after: serial_after,
        errors,
        connects: tally.connects,
        daemon,
        cpu: cpu.per_op(all.len()),
        pad_bytes,
        snapshots,
    })
}
