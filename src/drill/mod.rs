//! `wconfctl drill`: a recovery drill against a real `wconfd`. It starts the
//! daemon on a scratch (or named) data directory, drives it with job
//! clients, SIGKILLs it at random moments (and, with `--pause`, stops it for
//! longer than a lease), restarts it, and after every restart checks the
//! recovered state and the client-side history against the invariants of
//! [`check`]. The outcome is a [`Report`], printed for a person or as JSON.
//!
//! Module map: [`history`] is the record of requests, [`check`] the pure
//! invariant checker, [`daemon`] the process and the read-only log reader,
//! [`load`] the job clients, [`points`] the kills at named failpoints (a
//! failpoints build of `wconfd`); this file runs the drill and builds the
//! report.

pub mod check;
pub mod daemon;
pub mod history;
pub mod load;
pub mod points;
mod report;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::sys::signal::Signal;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;

use crate::api::types::TxnRequest;
use crate::client::Client;
use check::{Holder, Model, Observed, Violation};
use daemon::{Daemon, Spawner};
use history::{History, OpKind, Outcome};
use load::{Control, Job, Phase, Shared};
pub use points::PointCycle;
pub use report::{InvariantResult, Report, ViolationReport};

/// The file a drill leaves in a data directory it created, so a later
/// drill may reuse that directory without `--force`.
pub const MARKER_FILE: &str = "wconf-drill.marker";

/// The most job clients a drill runs (threads, each with a session).
pub const CLIENTS_MAX: usize = 256;

/// The `wconfd` installed beside the running executable (`wconfctl`).
pub fn wconfd_beside_current_exe() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|d| d.join("wconfd")))
        .unwrap_or_else(|| PathBuf::from("wconfd"))
}

/// How long a client may take to notice the daemon died: its request
/// timeout plus a margin.
const DOWN_WAIT: Duration = Duration::from_secs(15);

/// What to drill.
#[derive(Debug, Clone)]
pub struct DrillOptions {
    /// The `wconfd` binary.
    pub wconfd: PathBuf,
    /// None: a scratch directory, removed after a clean drill.
    pub data_dir: Option<PathBuf>,
    /// Drill a non-empty directory that no drill made.
    pub force: bool,
    pub clients: usize,
    pub kills: usize,
    /// None: drawn from the clock (and printed).
    pub seed: Option<u64>,
    /// Also SIGSTOP the daemon for longer than a lease, now and then.
    pub pause: bool,
    /// The daemon must serve again within this after a restart.
    pub liveness_bound_ms: u64,
    /// A kill lands uniformly in `0..=kill_delay_max_ms` after the load resumed.
    pub kill_delay_max_ms: u64,
    /// Passed to `wconfd` as they are.
    pub wconfd_args: Vec<String>,
    /// Non-empty: one kill cycle each, killing at named failpoints (needs
    /// a `wconfd` built with `--features failpoints`) instead of `kills`
    /// random-time kills.
    pub point_cycles: Vec<PointCycle>,
    /// Every other cycle, fail a storage step (EIO, ENOSPC) of a failpoints
    /// `wconfd` instead of killing it: it must stop by itself.
    pub storage_faults: bool,
}

impl DrillOptions {
    pub const CLIENTS_DEFAULT: usize = 8;
    pub const KILLS_DEFAULT: usize = 20;
    pub const LIVENESS_BOUND_MS_DEFAULT: u64 = 5_000;
    pub const KILL_DELAY_MAX_MS_DEFAULT: u64 = 1_000;
}

/// Why a drill could not be run at all (a violation is not an error: it is
/// in the report).
#[derive(Debug)]
pub enum DrillError {
    /// Bad options or a data directory the drill must not touch.
    Usage(String),
    /// The daemon would not start, or the drill could not set up.
    Setup(String),
}

impl std::fmt::Display for DrillError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DrillError::Usage(m) | DrillError::Setup(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for DrillError {}

/// The directory to drill, checked: a scratch one, an empty or missing
/// one (created and marked), one a drill made, or any with `--force`.
fn prepare_dir(opts: &DrillOptions, drill_id: &str) -> Result<(PathBuf, bool), DrillError> {
    let Some(dir) = &opts.data_dir else {
        let dir = std::env::temp_dir().join(format!("wconf-drill-{drill_id}"));
        create_marked(&dir)?;
        return Ok((dir, true));
    };
    let entries: Vec<String> = match std::fs::read_dir(dir) {
        Ok(e) => e
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => vec![],
        Err(e) => return Err(DrillError::Usage(format!("{}: {e}", dir.display()))),
    };
    let ours = entries.iter().any(|n| n == MARKER_FILE);
    if !entries.is_empty() && !ours && !opts.force {
        return Err(DrillError::Usage(format!(
            "{} is not empty and no drill made it. A drill adds sessions, locks and a \
             /wconf-drill-* key to the config, and leaves them. Drill a copy \
             (cp -a {} /tmp/copy && wconfctl drill --data-dir /tmp/copy --force), \
             or pass --force to drill it in place",
            dir.display(),
            dir.display()
        )));
    }
    if entries.is_empty() {
        create_marked(dir)?;
    }
    Ok((dir.clone(), false))
}

fn create_marked(dir: &Path) -> Result<(), DrillError> {
    std::fs::create_dir_all(dir)
        .and_then(|()| std::fs::write(dir.join(MARKER_FILE), "made by wconfctl drill\n"))
        .map_err(|e| DrillError::Setup(format!("{}: {e}", dir.display())))
}

/// Reads the state the daemon serves, for the checker.
fn observe(
    base: &str,
    root: &str,
    run: u32,
    lsn: Option<u64>,
    quiescent: bool,
) -> Result<Observed, String> {
    let c = Client::with_timeout(base, Duration::from_secs(10));
    let err = |e: crate::client::ClientError| format!("reading the recovered state: {e}");
    let cfg = c.config().map_err(err)?;
    let locks = c.locks().map_err(err)?;
    let sessions = c.sessions().map_err(err)?;
    let lsn = match lsn {
        Some(l) => l,
        None => c.status().map_err(err)?.applied_lsn,
    };
    let counters = cfg
        .config
        .pointer(root)
        .and_then(|v| v.as_object())
        .map(|o| {
            o.iter()
                .filter_map(|(k, v)| v.as_u64().map(|n| (k.clone(), n)))
                .collect()
        })
        .unwrap_or_default();
    Ok(Observed {
        run,
        lsn,
        serial: cfg.serial,
        counters,
        holders: locks
            .holders
            .into_iter()
            .map(|h| Holder {
                name: h.name,
                session: h.session,
                mode: h.mode,
                token: h.token,
            })
            .collect(),
        sessions: sessions.sessions.into_iter().map(|s| s.session).collect(),
        quiescent,
    })
}

/// Everything the drill measured, before it becomes a [`Report`].
#[derive(Default)]
struct Tally {
    kills: usize,
    recovery_kills: usize,
    pauses: usize,
    recoveries_ms: Vec<(u32, u64)>,
    torn_tails: usize,
    last_recovered_lsn: u64,
    violations: Vec<Violation>,
    /// Warning lines of each daemon run (index: run).
    stderr: Vec<Vec<String>>,
    aborted: Option<String>,
    log: daemon::LogReader,
    /// Deaths at each failpoint, serving and recovering.
    point_kills: BTreeMap<String, usize>,
    /// Storage faults injected, each followed by a fail-stop.
    faults: usize,
}

impl Tally {
    fn add(&mut self, found: Vec<Violation>) {
        for v in found {
            let dup = self
                .violations
                .iter()
                .any(|o| o.invariant == v.invariant && o.message == v.message);
            if !dup {
                self.violations.push(v);
            }
        }
    }

    fn daemon_exited(&mut self, run: usize, lines: Vec<String>) {
        self.torn_tails += lines
            .iter()
            .filter(|l| l.contains(daemon::TORN_TAIL_WARNING))
            .count();
        if self.stderr.len() <= run {
            self.stderr.resize(run + 1, vec![]);
        }
        self.stderr[run].extend(lines);
    }
}

/// Runs a drill. `Err` only when it could not run; violations are in the
/// report (`report.passed`).
pub fn run(opts: &DrillOptions) -> Result<Report, DrillError> {
    if opts.clients == 0 || opts.clients > CLIENTS_MAX {
        return Err(DrillError::Usage(format!(
            "--clients must be 1 to {CLIENTS_MAX}"
        )));
    }
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let seed = opts.seed.unwrap_or(nanos % 1_000_000_007);
    let drill_id = format!("{:x}", nanos ^ seed.rotate_left(17));
    let mut rng = StdRng::seed_from_u64(seed);
    let faulty;
    let opts = if opts.storage_faults {
        let mut o = opts.clone();
        o.point_cycles = points::storage_fault_plan(&mut rng, opts.kills);
        if !o
            .wconfd_args
            .iter()
            .any(|a| a.starts_with("--segment-size"))
        {
            o.wconfd_args
                .insert(0, points::FAULT_SEGMENT_ARG.to_string());
        }
        faulty = o;
        &faulty
    } else {
        opts
    };
    let (dir, scratch) = prepare_dir(opts, &drill_id)?;
    let spawner = Spawner {
        wconfd: opts.wconfd.clone(),
        data_dir: dir.clone(),
        extra: opts.wconfd_args.clone(),
    };
    let bound = Duration::from_millis(opts.liveness_bound_ms);
    let mut daemon = spawner
        .spawn_with(&cycle_env(opts, &drill_id, 0))
        .map_err(DrillError::Setup)?;
    let ready = daemon.wait_ready(bound).map_err(|e| {
        if opts.storage_faults && e.contains("without failpoints") {
            DrillError::Usage(format!(
                "--storage-faults needs a wconfd built with --features failpoints; {} is not",
                opts.wconfd.display()
            ))
        } else {
            DrillError::Setup(format!("the first start failed: {e}"))
        }
    })?;
    let root = format!("/wconf-drill-{drill_id}");
    let shared = Shared {
        history: Mutex::new(History::default()),
        control: Mutex::new(Control {
            run: 0,
            base: ready.base.clone(),
            phase: Phase::Hold,
            down: 0,
            resolved: 0,
            run_started: Instant::now(),
        }),
        changed: Condvar::new(),
        started: Instant::now(),
        root: root.clone(),
        drill_id: drill_id.clone(),
    };
    let model = setup(&shared, &ready.base, opts.clients).map_err(DrillError::Setup)?;
    let mut tally = Tally {
        last_recovered_lsn: ready.lsn.saturating_sub(1),
        ..Tally::default()
    };

    std::thread::scope(|scope| {
        for id in 0..opts.clients {
            let shared = &shared;
            scope.spawn(move || Job::new(shared, id, seed).run());
        }
        set_phase(&shared, Phase::Load);
        let mut run = 0u32;
        let kills = match opts.point_cycles.len() {
            0 => opts.kills,
            n => n,
        };
        for _ in 0..kills {
            match kill_cycle(
                opts,
                &spawner,
                &shared,
                &model,
                &mut rng,
                &mut daemon,
                run,
                &mut tally,
            ) {
                Ok(next) => {
                    daemon = next;
                    run += 1;
                }
                Err(why) => {
                    tally.aborted = Some(why);
                    break;
                }
            }
        }
        set_phase(&shared, Phase::Stop);
    });
    // The final state, with every client stopped.
    let base = shared.control.lock().expect("control").base.clone();
    let run = shared.control.lock().expect("control").run;
    if tally.aborted.is_none() {
        match observe(&base, &root, run, None, false) {
            Ok(obs) => {
                let history = shared.history.lock().expect("history");
                tally.add(check::check(&model, &history, &obs));
            }
            Err(e) => tally.aborted = Some(e),
        }
    }
    let lines = daemon.stderr_lines();
    daemon.stop();
    tally.daemon_exited(run as usize, lines);
    let history = shared.history.into_inner().expect("history");
    tally.add(check::liveness(
        &tally.recoveries_ms,
        opts.liveness_bound_ms,
        &history,
        opts.clients,
    ));
    if let Some(why) = &tally.aborted {
        tally.add(vec![Violation {
            invariant: check::Invariant::Liveness,
            run,
            message: format!("the drill stopped early: {why}"),
            ops: vec![],
        }]);
    }
    let report = report::build(opts, seed, &dir, scratch, &history, tally);
    if scratch && report.passed {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(report)
}

/// The environment of the daemon that serves run `run`: a kill at the
/// point of that cycle, armed when the load runs.
fn cycle_env(opts: &DrillOptions, drill_id: &str, run: u32) -> Vec<(String, String)> {
    let arm = points::arm_path(drill_id, run);
    match opts.point_cycles.get(run as usize) {
        Some(PointCycle {
            kill: Some(kill), ..
        }) => points::kill_env(kill, Some(&arm)),
        Some(PointCycle {
            fault: Some(fault), ..
        }) => points::fault_env(fault, &arm),
        _ => vec![],
    }
}

fn set_phase(shared: &Shared, phase: Phase) {
    let mut c = shared.control.lock().expect("control");
    c.phase = phase;
    if phase == Phase::Load {
        c.run_started = Instant::now();
    }
    shared.changed.notify_all();
}

/// Creates the drill's counters with one transaction (the drill's client
/// id is `clients`) and notes the sessions that were there before.
fn setup(shared: &Shared, base: &str, clients: usize) -> Result<Model, String> {
    let c = Client::with_timeout(base, Duration::from_secs(10));
    let foreign: BTreeSet<String> = c
        .sessions()
        .map_err(|e| format!("listing sessions: {e}"))?
        .sessions
        .into_iter()
        .map(|s| s.session)
        .collect();
    let counters: serde_json::Map<String, serde_json::Value> = (0..clients)
        .map(|i| (check::counter_key(i), json!(0)))
        .collect();
    let req = TxnRequest {
        patch: json!([{"op": "add", "path": shared.root, "value": counters}]),
        if_serial: None,
        wait_ms: 10_000,
        request_id: Some(format!("{}-setup", shared.drill_id)),
    };
    let op = shared.begin(
        clients,
        0,
        None,
        OpKind::Setup,
        req.request_id.clone(),
        None,
    );
    let done = c
        .txn(&req)
        .map_err(|e| format!("creating the drill's counters: {e}"));
    let outcome = match &done {
        Ok(r) => Outcome::Ok {
            body: serde_json::to_value(r).unwrap_or_default(),
        },
        Err(e) => Outcome::Unknown { error: e.clone() },
    };
    shared.end(op, outcome);
    Ok(Model {
        serial_after_setup: done?.serial,
        foreign_sessions: foreign,
    })
}

/// One kill: let the load run, (pause,) SIGKILL, check idempotent
/// recovery with a recovery killed part-way, restart, check the recovered
/// state, let the clients resolve, check again. Returns the new daemon;
/// `Err` when the drill cannot go on.
#[allow(clippy::too_many_arguments)]
fn kill_cycle(
    opts: &DrillOptions,
    spawner: &Spawner,
    shared: &Shared,
    model: &Model,
    rng: &mut StdRng,
    daemon: &mut Daemon,
    run: u32,
    tally: &mut Tally,
) -> Result<Daemon, String> {
    let bound = Duration::from_millis(opts.liveness_bound_ms);
    let cycle = opts.point_cycles.get(run as usize);
    if let Some(kill) = cycle.and_then(|c| c.kill.as_ref()) {
        let arm = points::arm_path(&shared.drill_id, run);
        points::await_kill(daemon, kill, &arm)?;
        *tally.point_kills.entry(kill.point.clone()).or_default() += 1;
        tally.kills += 1;
    } else if let Some(fault) = cycle.and_then(|c| c.fault.as_ref()) {
        let arm = points::arm_path(&shared.drill_id, run);
        points::await_fault(daemon, fault, &arm)?;
        tally.faults += 1;
    } else {
        // Not synchronisation: the delay is the moment of the crash.
        std::thread::sleep(Duration::from_millis(
            rng.gen_range(0..=opts.kill_delay_max_ms),
        ));
        if opts.pause && (tally.pauses == 0 || rng.gen_bool(0.1)) {
            pause(shared, daemon, run, opts.clients)?;
            tally.pauses += 1;
            std::thread::sleep(Duration::from_millis(
                rng.gen_range(0..=opts.kill_delay_max_ms),
            ));
        }
        daemon.kill();
        tally.kills += 1;
    }
    tally.daemon_exited(run as usize, daemon.stderr_lines());
    let all_down = {
        let deadline = Instant::now() + DOWN_WAIT;
        let mut c = shared.control.lock().expect("control");
        while c.down < opts.clients && Instant::now() < deadline {
            let left = deadline.saturating_duration_since(Instant::now());
            c = shared.changed.wait_timeout(c, left).expect("control").0;
        }
        c.phase = Phase::Hold;
        c.down >= opts.clients
    };
    if !all_down {
        return Err(format!(
            "not every client noticed the daemon died within {} s",
            DOWN_WAIT.as_secs()
        ));
    }

    if let Some(c) = cycle.filter(|c| c.tear_tail) {
        match &c.kill {
            Some(k) if points::TEARABLE_AFTER.contains(&k.point.as_str()) => {
                points::tear_tail(&spawner.data_dir)?
            }
            _ => return Err("a tear needs a kill between a write and its ack".into()),
        }
    }
    // 7: the log before a recovery killed part-way, and after it.
    if let Some(damage) = tally.log.advance(&spawner.data_dir)? {
        tally.add(vec![Violation {
            invariant: check::Invariant::Prefix,
            run: run + 1,
            message: format!(
                "after a SIGKILL the log has damage that is not a torn tail: {damage}"
            ),
            ops: vec![],
        }]);
    }
    let partial = match cycle.and_then(|c| c.recovery.as_deref()) {
        Some(point) => {
            let hits = points::recovery_hits(point, &spawner.data_dir, tally.log.lsn())?;
            let kill =
                crate::failpoints::KillAt::parse(&format!("{point}:{}", rng.gen_range(1..=hits)))?;
            let mut partial = spawner.spawn_with(&points::kill_env(&kill, None))?;
            points::await_point_death(&mut partial, &kill, bound)?;
            *tally.point_kills.entry(kill.point).or_default() += 1;
            partial
        }
        None => {
            let typical_ms = tally.recoveries_ms.last().map_or(50, |r| r.1).max(1);
            let mut partial = spawner.spawn()?;
            std::thread::sleep(Duration::from_millis(rng.gen_range(0..=typical_ms)));
            partial.kill();
            partial
        }
    };
    tally.recovery_kills += 1;
    tally.daemon_exited(run as usize + 1, partial.stderr_lines());
    let c = tally.log.compare(&spawner.data_dir)?;
    tally.add(check::recovery_digests(
        run + 1,
        c.lsn,
        c.before,
        c.after,
        &c.kinds_after,
    ));

    let mut next = spawner.spawn_with(&cycle_env(opts, &shared.drill_id, run + 1))?;
    let ready = match next.wait_ready(bound) {
        Ok(r) => r,
        Err(e) => {
            tally.daemon_exited(run as usize + 1, next.stderr_lines());
            return Err(e);
        }
    };
    let run = run + 1;
    tally
        .recoveries_ms
        .push((run, ready.elapsed.as_millis() as u64));
    tally.last_recovered_lsn = ready.lsn.saturating_sub(1);
    let obs = observe(
        &ready.base,
        &shared.root,
        run,
        Some(ready.lsn.saturating_sub(1)),
        false,
    )?;
    tally.add(check::check(
        model,
        &shared.history.lock().expect("history"),
        &obs,
    ));

    // The clients retry what they left unknown.
    {
        let mut c = shared.control.lock().expect("control");
        c.run = run;
        c.base = ready.base.clone();
        c.phase = Phase::Resolve;
        c.down = 0;
        c.resolved = 0;
        shared.changed.notify_all();
        let deadline = Instant::now() + bound;
        while c.resolved < opts.clients && Instant::now() < deadline {
            let left = deadline.saturating_duration_since(Instant::now());
            c = shared.changed.wait_timeout(c, left).expect("control").0;
        }
        if c.resolved < opts.clients {
            let late = opts.clients - c.resolved;
            drop(c);
            tally.add(vec![Violation {
                invariant: check::Invariant::Liveness,
                run,
                message: format!(
                    "{late} client(s) could not finish retrying within {} ms of the restart",
                    opts.liveness_bound_ms
                ),
                ops: vec![],
            }]);
            return Err("clients did not resolve their unknown requests".into());
        }
    }
    let obs = observe(&ready.base, &shared.root, run, None, true)?;
    tally.add(check::check(
        model,
        &shared.history.lock().expect("history"),
        &obs,
    ));
    set_phase(shared, Phase::Load);
    Ok(next)
}

/// SIGSTOP for longer than the clients' leases, then SIGCONT.
fn pause(shared: &Shared, daemon: &Daemon, run: u32, drill_client: usize) -> Result<(), String> {
    let ms = load::SESSION_TTL_MS + 1_000;
    let op = shared.begin(drill_client, run, None, OpKind::Pause { ms }, None, None);
    daemon.signal(Signal::SIGSTOP)?;
    // Not synchronisation: the length of the stop is the fault.
    std::thread::sleep(Duration::from_millis(ms));
    daemon.signal(Signal::SIGCONT)?;
    shared.end(op, Outcome::Ok { body: json!({}) });
    Ok(())
}
