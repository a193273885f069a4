//! `wal-dump` on logs written by the real daemon: `state --at` checked
//! against the daemon's own answers, the reading subcommands on a live
//! daemon's directory, and `verify`, `repair` and `--salvage` on a log
//! killed mid-load and on copies of it damaged in each way.
//!
//! This binary has no libtest harness. Started as `daemon --serve DIR
//! SEGMENT_BYTES` it *is* the daemon: `wconf::server::run`, the function
//! `wconfd` calls once it has parsed its flags (directory lock, recovery,
//! replay, epoch record, actors, HTTP). The tests start it that way as a
//! child process, so it can be killed with SIGKILL like any `wconfd`
//! (`CARGO_BIN_EXE_wconfd` exists only for the `wconf` package's own
//! tests). Otherwise it runs the tests below in order; positional arguments
//! select tests whose names contain them, `--list` lists them.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};
use wconf::api::types::*;
use wconf::client::Client;
use wconf::server::DaemonOptions;

mod common;

use common::{dump, s, segments};

/// Small segments, so a few hundred records span several of them.
const SEGMENT_BYTES: u64 = 8192;

/// How long a poll waits for the daemon before the test fails.
const DEADLINE: Duration = Duration::from_secs(20);

type Test = fn();

const TESTS: &[(&str, Test)] = &[
    (
        "state_at_every_change_equals_the_daemons_answers",
        state_at_every_change_equals_the_daemons_answers,
    ),
    (
        "state_at_across_snapshots_and_gc_equals_the_daemons_answers",
        state_at_across_snapshots_and_gc_equals_the_daemons_answers,
    ),
    (
        "a_live_daemons_directory_lists_stats_and_verifies",
        a_live_daemons_directory_lists_stats_and_verifies,
    ),
    (
        "a_log_killed_mid_load_keeps_every_acknowledged_record",
        a_log_killed_mid_load_keeps_every_acknowledged_record,
    ),
    (
        "damaged_copies_of_a_daemons_log_report_exact_codes_and_places",
        damaged_copies_of_a_daemons_log_report_exact_codes_and_places,
    ),
];

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--serve") {
        return serve(&args[1..]);
    }
    if args.iter().any(|a| a == "--list") {
        for (name, _) in TESTS {
            println!("{name}: test");
        }
        return ExitCode::SUCCESS;
    }
    let filters: Vec<&String> = args.iter().filter(|a| !a.starts_with('-')).collect();
    let mut passed = 0;
    for (name, test) in TESTS {
        if !filters.is_empty() && !filters.iter().any(|f| name.contains(f.as_str())) {
            continue;
        }
        println!("test {name} ...");
        // A failing test panics, which ends this process with exit 101.
        test();
        println!("test {name} ... ok");
        passed += 1;
    }
    println!("\ntest result: ok. {passed} passed; 0 failed");
    ExitCode::SUCCESS
}

/// The child: `wconf::server::run` on DIR with SEGMENT_BYTES segments, on a
/// port the kernel picks (the ready line names it).
fn serve(args: &[String]) -> ExitCode {
    let opts = DaemonOptions {
        data_dir: PathBuf::from(&args[0]),
        listen: "127.0.0.1:0".into(),
        segment_bytes: args[1].parse().expect("segment bytes"),
        ..DaemonOptions::default()
    };
    match wconf::server::run(opts) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("daemon: {e}");
            ExitCode::from(e.code as u8)
        }
    }
}

struct Daemon {
    child: Child,
    client: Client,
    base: String,
    /// The LSN of the epoch record this start wrote (from the ready line).
    epoch_lsn: u64,
}

impl Daemon {
    fn start(dir: &Path) -> Daemon {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .arg("--serve")
            .arg(dir)
            .arg(SEGMENT_BYTES.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn the daemon");
        let mut line = String::new();
        let _ = BufReader::new(child.stdout.take().unwrap()).read_line(&mut line);
        // "wconfd ready on http://127.0.0.1:PORT (epoch E, lsn L)"
        let Some(rest) = line.strip_prefix("wconfd ready on ") else {
            let _ = child.wait();
            let mut err = String::new();
            let _ = child.stderr.take().unwrap().read_to_string(&mut err);
            panic!("the daemon did not start: {line:?} {err}");
        };
        let base = rest.split(' ').next().unwrap().to_string();
        let epoch_lsn = rest
            .split("lsn ")
            .nth(1)
            .and_then(|s| s.trim().trim_end_matches(')').parse().ok())
            .expect("ready line names the LSN");
        Daemon {
            child,
            client: Client::new(base.clone()),
            base,
            epoch_lsn,
        }
    }

    /// SIGKILL: no shutdown code runs, as in a crash.
    fn kill(mut self) {
        kill(Pid::from_raw(self.child.id() as i32), Signal::SIGKILL).unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn lock(name: &str, mode: Mode) -> LockSpec {
    LockSpec {
        name: name.into(),
        mode,
    }
}

fn acquire(session: &str, locks: Vec<LockSpec>, wait_ms: u64) -> AcquireRequest {
    AcquireRequest {
        session: session.into(),
        locks,
        wait_ms,
        priority: 0,
        min: None,
        request_id: None,
    }
}

fn release(session: &str, locks: Option<&[&str]>, downgrade: &[&str]) -> ReleaseRequest {
    let names = |l: &[&str]| l.iter().map(|n| n.to_string()).collect::<Vec<_>>();
    ReleaseRequest {
        session: session.into(),
        locks: locks.map(names),
        downgrade: (!downgrade.is_empty()).then(|| names(downgrade)),
        request_id: None,
    }
}

fn write(session: &str, patch: Value, release: bool) -> WriteRequest {
    WriteRequest {
        session: session.into(),
        patch,
        release,
        request_id: None,
    }
}

fn txn(patch: Value) -> TxnRequest {
    TxnRequest {
        patch,
        if_serial: None,
        wait_ms: 0,
        request_id: None,
    }
}

/// What the daemon answers at one quiet moment: its LSN and epoch
/// (`/v1/status`), `GET /v1/config`, and the holders of `GET /v1/locks` in
/// `wal-dump state`'s shape (lock, then session, then mode and token).
struct Seen {
    what: String,
    lsn: u64,
    epoch: u64,
    config: ConfigView,
    locks: Value,
}

fn observe(c: &Client, what: &str) -> Seen {
    let status = c.status().unwrap();
    // One client, nothing in flight: everything applied is durable.
    assert_eq!(status.applied_lsn, status.durable_lsn, "{what}");
    let config = c.config().unwrap();
    let mut locks: BTreeMap<String, serde_json::Map<String, Value>> = BTreeMap::new();
    for h in c.locks().unwrap().holders {
        let mode = serde_json::to_value(h.mode).unwrap();
        locks
            .entry(h.name)
            .or_default()
            .insert(h.session, json!({"mode": mode, "token": h.token}));
    }
    Seen {
        what: what.into(),
        lsn: status.applied_lsn,
        epoch: status.epoch,
        config,
        locks: serde_json::to_value(locks).unwrap(),
    }
}

/// Polls `check` until it holds, failing the test after `DEADLINE`.
fn wait_until(what: &str, mut check: impl FnMut() -> bool) {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn state_at_every_change_equals_the_daemons_answers() {
    // Invariant: for every change the daemon made (transactions, lock
    // grants and releases, a write with and without release, a downgrade,
    // a waiter granted by a release, session closes, a restart), `wal-dump
    // state --at LSN` rebuilds exactly the config, serial, config LSN, epoch
    // and lock table the daemon answered at that LSN; refused requests
    // write nothing, so the daemon's LSN does not move for them.
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let d = Daemon::start(dir);
    let c = &d.client;
    let mut seen = vec![observe(c, "start")];
    let mut step = |c: &Client, what: &str| seen.push(observe(c, what));

    c.txn(&txn(
        json!([{"op": "add", "path": "/cluster", "value": {"name": "c1"}}]),
    ))
    .unwrap();
    step(c, "txn");
    let a = c.create_session(Some("a"), 60_000).unwrap().session;
    step(c, "open a");
    let g = c
        .acquire(&acquire(
            &a,
            vec![
                lock("config", Mode::Exclusive),
                lock("node/a", Mode::Shared),
            ],
            0,
        ))
        .unwrap();
    assert!(g.granted);
    step(c, "a takes config and node/a");
    let w = c
        .write(&write(
            &a,
            json!([{"op": "add", "path": "/nodes", "value": ["n1"]}]),
            false,
        ))
        .unwrap();
    assert!(w.applied);
    step(c, "a writes");
    c.write(&write(
        &a,
        json!([{"op": "replace", "path": "/cluster/name", "value": "c2"}]),
        true,
    ))
    .unwrap();
    step(c, "a writes and releases config");
    let b = c.create_session(Some("b"), 60_000).unwrap().session;
    step(c, "open b");
    let g = c
        .acquire(&acquire(
            &b,
            vec![
                lock("node/a", Mode::Shared),
                lock("node/b", Mode::Exclusive),
            ],
            0,
        ))
        .unwrap();
    assert!(g.granted);
    step(c, "b shares node/a, takes node/b");
    let g = c
        .acquire(&acquire(&a, vec![lock("node/b", Mode::Exclusive)], 0))
        .unwrap();
    assert!(!g.granted);
    step(c, "a's try for node/b is refused");
    c.acquire(&acquire(&b, vec![lock("config", Mode::Exclusive)], 0))
        .unwrap();
    step(c, "b takes config");
    c.release(&release(&b, Some(&[]), &["config"])).unwrap();
    step(c, "b downgrades config");
    let failed = c.txn(&txn(json!([{"op": "remove", "path": "/missing"}])));
    assert_eq!(failed.unwrap_err().status(), Some(409));
    step(c, "a failing txn");

    // A waiter, granted by the release that unblocks it.
    let waiter = {
        let c = Client::new(d.base.clone());
        let a = a.clone();
        std::thread::spawn(move || {
            c.acquire(&acquire(&a, vec![lock("node/b", Mode::Exclusive)], 20_000))
                .unwrap()
        })
    };
    wait_until("a's acquire to wait", || {
        !c.locks().unwrap().waiters.is_empty()
    });
    c.release(&release(&b, Some(&["node/b"]), &[])).unwrap();
    assert!(waiter.join().unwrap().granted);
    step(c, "b releases node/b, a's wait is granted");

    d.kill();
    let d = Daemon::start(dir);
    let c = &d.client;
    step(c, "restart");
    c.close_session(&a).unwrap();
    step(c, "close a");
    c.release(&release(&b, None, &[])).unwrap();
    step(c, "b releases everything");
    c.txn(&txn(
        json!([{"op": "add", "path": "/nodes/-", "value": "n2"}]),
    ))
    .unwrap();
    step(c, "txn after restart");

    // The daemon is still running: wal-dump reads beside it.
    assert!(seen.len() > 15);
    for want in &seen {
        let out = dump(&["state", s(dir), "--at", &want.lsn.to_string()]);
        assert_eq!(out.code, 0, "{}: {}", want.what, out.stderr);
        let got: Value = serde_json::from_str(&out.stdout).unwrap();
        let at = format!("{} (LSN {})", want.what, want.lsn);
        assert_eq!(got["lsn"], want.lsn, "{at}");
        assert_eq!(got["epoch"], want.epoch, "{at}");
        assert_eq!(got["config"]["doc"], want.config.config, "{at}");
        assert_eq!(got["config"]["serial"], want.config.serial, "{at}");
        assert_eq!(got["config"]["lsn"], want.config.lsn, "{at}");
        assert_eq!(got["locks"], want.locks, "{at}");
    }
    // Not vacuous: the states differ along the way.
    assert_ne!(seen[1].config.config, seen.last().unwrap().config.config);
    assert_ne!(seen[3].locks, seen.last().unwrap().locks);
}

fn state_at_across_snapshots_and_gc_equals_the_daemons_answers() {
    // Invariant: with snapshots on disk and the segments below the oldest
    // kept one collected, `state --at LSN` starts from the newest snapshot
    // at or below LSN, names it in its output, and still rebuilds exactly
    // what the daemon answered at LSN; an LSN whose records were collected
    // is refused (exit 2), not answered wrongly.
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let d = Daemon::start(dir);
    let c = &d.client;
    let sess = c.create_session(Some("s"), 60_000).unwrap().session;
    let mut seen = vec![];
    let mut snapshots = vec![];
    let mut removed = 0;
    for round in 0..4u64 {
        fill(c, dir, segments(dir).len() + 2);
        seen.push(observe(c, &format!("round {round} filled")));
        let name = format!("round/{round}");
        let g = c
            .acquire(&acquire(&sess, vec![lock(&name, Mode::Exclusive)], 0))
            .unwrap();
        assert!(g.granted);
        seen.push(observe(c, &format!("round {round} locked")));
        let taken = c.snapshot().unwrap();
        snapshots.push(taken.lsn);
        removed += taken.segments_removed;
        seen.push(observe(c, &format!("round {round} snapshot")));
        c.release(&release(&sess, Some(&[&name]), &[])).unwrap();
        seen.push(observe(c, &format!("round {round} released")));
    }
    assert!(removed > 0, "no segment was collected");
    let first_kept = first_segment_lsn(dir);
    assert!(first_kept > 1);
    let on_disk: Vec<u64> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().into_string().unwrap();
            wconf::snapshot::parse_snapshot_name(&name)
        })
        .collect();
    assert_eq!(on_disk.len(), wconf::snapshot::SNAPSHOTS_KEPT);

    let mut checked = 0;
    for want in &seen {
        let out = dump(&["state", s(dir), "--at", &want.lsn.to_string()]);
        let base = on_disk.iter().filter(|l| **l <= want.lsn).max();
        if base.is_none() {
            // Its records were collected and no snapshot covers it.
            assert_eq!(out.code, 2, "{}: {}", want.what, out.stderr);
            assert!(out.stderr.contains("needs it from LSN 1"), "{}", out.stderr);
            continue;
        }
        assert_eq!(out.code, 0, "{}: {}", want.what, out.stderr);
        let got: Value = serde_json::from_str(&out.stdout).unwrap();
        let at = format!("{} (LSN {})", want.what, want.lsn);
        assert_eq!(got["snapshot"]["lsn"], json!(base), "{at}");
        assert_eq!(got["config"]["doc"], want.config.config, "{at}");
        assert_eq!(got["config"]["serial"], want.config.serial, "{at}");
        assert_eq!(got["config"]["lsn"], want.config.lsn, "{at}");
        assert_eq!(got["locks"], want.locks, "{at}");
        assert_eq!(got["epoch"], want.epoch, "{at}");
        checked += 1;
    }
    // Both kept snapshots served as a base, and replay after each.
    assert!(checked >= 6, "{checked}");
}

/// The first LSN of the oldest segment left in `dir`.
fn first_segment_lsn(dir: &Path) -> u64 {
    let first = segments(dir).into_iter().next().unwrap();
    first
        .file_stem()
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

/// Runs one-shot transactions of ~100 bytes until the log has `segments`
/// segments; returns the last acknowledged LSN.
fn fill(c: &Client, dir: &Path, segments_min: usize) -> u64 {
    let mut lsn = 0;
    for i in 0.. {
        let value = format!("{i:0>100}");
        lsn = c
            .txn(&txn(
                json!([{"op": "add", "path": format!("/k{}", i % 50), "value": value}]),
            ))
            .unwrap()
            .lsn;
        if segments(dir).len() >= segments_min {
            break;
        }
    }
    lsn
}

/// One record of `wal-dump list --raw --format ndjson`.
#[derive(Clone, Debug)]
struct Frame {
    lsn: u64,
    segment: String,
    offset: u64,
    padded: u64,
    batch_index: u64,
}

fn frames(dir: &Path) -> Vec<Frame> {
    let out = dump(&[s(dir), "--raw", "--format", "ndjson"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    out.stdout
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            Frame {
                lsn: v["lsn"].as_u64().unwrap(),
                segment: v["segment"].as_str().unwrap().to_string(),
                offset: v["offset"].as_u64().unwrap(),
                padded: v["raw"]["padded_len"].as_u64().unwrap(),
                batch_index: v["raw"]["batch_index"].as_u64().unwrap(),
            }
        })
        .collect()
}

fn a_live_daemons_directory_lists_stats_and_verifies() {
    // Invariant: beside a running daemon (directory locked, the last
    // segment preallocated and half written), list, stats and verify read
    // exactly the records the daemon says are durable, in every segment,
    // and call the log clean.
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let d = Daemon::start(dir);
    fill(&d.client, dir, 4);
    let status = d.client.status().unwrap();
    let last = status.applied_lsn;
    let segs = segments(dir);
    assert_eq!(segs.len() as u64, status.segments);
    for seg in &segs {
        assert_eq!(std::fs::metadata(seg).unwrap().len(), SEGMENT_BYTES);
    }

    let out = dump(&["verify", s(dir)]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert_eq!(
        out.stdout,
        format!(
            "clean: {} segments, {last} records, last LSN {last}\n",
            segs.len()
        )
    );
    let listed = frames(dir);
    assert_eq!(
        listed.iter().map(|f| f.lsn).collect::<Vec<_>>(),
        (1..=last).collect::<Vec<_>>()
    );
    let names: std::collections::BTreeSet<&str> =
        listed.iter().map(|f| f.segment.as_str()).collect();
    assert_eq!(names.len(), segs.len());

    let out = dump(&["stats", s(dir), "--format", "json"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let stats: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(stats["records"], last);
    assert_eq!(
        stats["bytes"]["capacity"],
        segs.len() as u64 * SEGMENT_BYTES
    );
    assert_eq!(stats["segments"].as_array().unwrap().len(), segs.len());

    // And later appends show up on the next run.
    d.client
        .txn(&txn(json!([{"op": "add", "path": "/after", "value": 1}])))
        .unwrap();
    assert_eq!(frames(dir).last().unwrap().lsn, last + 1);
}

/// Starts a daemon, runs two clients of transactions until the log spans
/// `segments_min` segments and a little more, SIGKILLs it mid-load, and
/// returns the highest LSN any client saw acknowledged.
fn killed_mid_load(dir: &Path, segments_min: usize) -> u64 {
    let d = Daemon::start(dir);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let clients: Vec<_> = (0..2)
        .map(|t| {
            let c = Client::new(d.base.clone());
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut acked = 0;
                for i in 0u64.. {
                    if stop.load(std::sync::atomic::Ordering::Relaxed) {
                        break;
                    }
                    let patch =
                        json!([{"op": "add", "path": format!("/c{t}_{}", i % 20), "value": i}]);
                    let req = TxnRequest {
                        wait_ms: 1000,
                        ..txn(patch)
                    };
                    match c.txn(&req) {
                        Ok(r) => acked = r.lsn,
                        // The kill: connection refused or reset.
                        Err(_) => break,
                    }
                }
                acked
            })
        })
        .collect();
    wait_until("the log to fill", || segments(dir).len() >= segments_min);
    d.kill();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    clients
        .into_iter()
        .map(|c| c.join().unwrap())
        .max()
        .unwrap()
}

fn a_log_killed_mid_load_keeps_every_acknowledged_record() {
    // Invariant: after SIGKILL under load, verify says clean (0) or torn
    // tail (1), never corrupt; every acknowledged LSN is in the readable
    // log; repair leaves a clean log the daemon starts on, continuing at
    // the next LSN.
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let acked = killed_mid_load(dir, 3);
    assert!(acked > 0);
    let out = dump(&["verify", s(dir)]);
    assert!(out.code == 0 || out.code == 1, "{}", out.stdout);
    let last = frames(dir).last().unwrap().lsn;
    assert!(last >= acked, "acknowledged LSN {acked} lost (last {last})");

    let dry = dump(&["repair", s(dir)]);
    assert_eq!(dry.code, out.code, "{}", dry.stdout);
    let applied = dump(&["repair", s(dir), "--apply"]);
    assert_eq!(applied.code, 0, "{}{}", applied.stdout, applied.stderr);
    let out = dump(&["verify", s(dir)]);
    assert_eq!(out.code, 0, "{}", out.stdout);
    let d = Daemon::start(dir);
    assert_eq!(d.epoch_lsn, frames(dir).last().unwrap().lsn);
    assert_eq!(d.epoch_lsn, last + 1);
}

/// A copy of `from` (segment files only) in a new temporary directory.
fn copy_log(from: &Path) -> tempfile::TempDir {
    let to = tempfile::tempdir().unwrap();
    for seg in segments(from) {
        std::fs::copy(&seg, to.path().join(seg.file_name().unwrap())).unwrap();
    }
    to
}

fn poke(path: &Path, offset: u64, bytes: &[u8]) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(bytes, offset).unwrap();
}

/// Flips every bit of the byte at `offset`.
fn flip(path: &Path, offset: u64) {
    let byte = std::fs::read(path).unwrap()[offset as usize];
    poke(path, offset, &[!byte]);
}

fn damaged_copies_of_a_daemons_log_report_exact_codes_and_places() {
    // Invariant: on a real daemon's log (killed mid-load, then repaired),
    // each kind of damage gets its exit code and the exact file, offset and
    // LSN: a torn last record 1 (at that frame, cut at its batch's start),
    // a bit flip mid-log 2, a deleted segment 3, swapped segments 3,
    // trailing garbage 1 (just past the last frame); repair cuts what the
    // daemon would cut and refuses the rest; --salvage resumes right after
    // the damaged frame.
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path();
    killed_mid_load(base, 4);
    assert_eq!(dump(&["repair", s(base), "--apply"]).code, 0);
    // The kill may land just after a roll, leaving the newest segment
    // empty; one more start puts its epoch record there, so the last
    // record is in the last segment, where a torn write can be.
    Daemon::start(base).kill();
    let all = frames(base);
    let segs = segments(base);
    let last = all.last().unwrap().clone();
    let newest = segs.last().unwrap().file_name().unwrap();
    assert_eq!(last.segment, newest.to_str().unwrap());
    let seg_of = |dir: &Path, f: &Frame| dir.join(&f.segment);

    // A torn last record: its CRC no longer matches.
    let torn = copy_log(base);
    let batch_start = all
        .iter()
        .rev()
        .find(|f| f.lsn == last.lsn - last.batch_index)
        .unwrap()
        .clone();
    let path = seg_of(torn.path(), &last);
    flip(&path, last.offset + 20);
    let out = dump(&["verify", s(torn.path())]);
    assert_eq!(out.code, 1, "{}", out.stdout);
    assert!(
        out.stdout.starts_with(&format!(
            "torn tail: {} at offset {} (LSN {}): frame CRC mismatch",
            path.display(),
            last.offset,
            last.lsn
        )),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains(&format!(
            "the daemon would cut at offset {} and keep LSNs below {}",
            batch_start.offset, batch_start.lsn
        )),
        "{}",
        out.stdout
    );
    let cut = format!(
        "cut: {} at offset {}, dropping ",
        path.display(),
        batch_start.offset
    );
    let dry = dump(&["repair", s(torn.path())]);
    assert_eq!(dry.code, 1, "{}", dry.stdout);
    assert!(
        dry.stdout.contains(&format!("would {cut}")),
        "{}",
        dry.stdout
    );
    let applied = dump(&["repair", s(torn.path()), "--apply"]);
    assert_eq!(applied.code, 0, "{}", applied.stdout);
    assert!(
        applied.stdout.contains(&format!("\n{cut}")),
        "{}",
        applied.stdout
    );
    assert!(path.with_extension("wal.broken").exists());
    let out = dump(&["verify", s(torn.path())]);
    assert_eq!(out.code, 0, "{}", out.stdout);
    assert!(
        out.stdout
            .contains(&format!("last LSN {}", batch_start.lsn - 1)),
        "{}",
        out.stdout
    );
    let d = Daemon::start(torn.path());
    assert_eq!(d.epoch_lsn, batch_start.lsn);
    drop(d);

    // A bit flip in the middle: a frame of the first segment that is not
    // its last, so valid frames follow it.
    let mid = all
        .iter()
        .filter(|f| f.segment == all[0].segment)
        .rev()
        .nth(2)
        .unwrap()
        .clone();
    let flipped = copy_log(base);
    let path = seg_of(flipped.path(), &mid);
    flip(&path, mid.offset + 20);
    let corrupt = format!(
        "{} at offset {} (LSN {}): frame CRC mismatch",
        path.display(),
        mid.offset,
        mid.lsn
    );
    let out = dump(&["verify", s(flipped.path())]);
    assert_eq!(out.code, 2, "{}", out.stdout);
    assert!(
        out.stdout.starts_with(&format!("corrupt: {corrupt}")),
        "{}",
        out.stdout
    );
    let out = dump(&["verify", s(flipped.path()), "--salvage"]);
    assert_eq!(out.code, 2, "{}", out.stdout);
    assert!(
        out.stdout.contains(&format!("damage 1: {corrupt}")),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains(&format!(
            "resumed at offset {} (LSN {})",
            mid.offset + mid.padded,
            mid.lsn + 1
        )),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains(&format!(
            "salvage: 1 damaged regions; {} frames with a valid CRC",
            all.len() - 1
        )),
        "{}",
        out.stdout
    );
    let out = dump(&["repair", s(flipped.path()), "--apply"]);
    assert_eq!(out.code, 2, "{}", out.stdout);
    assert!(out.stdout.contains("refusing"), "{}", out.stdout);
    let out = dump(&["list", s(flipped.path()), "--format", "ndjson"]);
    assert_eq!(out.code, 2, "{}", out.stderr);
    // Up to the end of the last complete batch before the damage: the
    // records of the flipped frame's own batch before it are not shown.
    assert_eq!(
        out.stdout.lines().count() as u64,
        mid.lsn - mid.batch_index - 1
    );

    // A deleted segment: the one after it names the gap.
    let first_lsn =
        |seg: &Path| -> u64 { seg.file_stem().unwrap().to_str().unwrap().parse().unwrap() };
    let deleted = copy_log(base);
    let names: Vec<PathBuf> = segments(deleted.path());
    std::fs::remove_file(&names[1]).unwrap();
    let out = dump(&["verify", s(deleted.path())]);
    assert_eq!(out.code, 3, "{}", out.stdout);
    assert!(
        out.stdout.starts_with(&format!(
            "segment sequence broken: {} at offset 0 (LSN {}): ",
            names[2].display(),
            first_lsn(&names[1])
        )),
        "{}",
        out.stdout
    );
    assert_eq!(dump(&["repair", s(deleted.path())]).code, 3);

    // Swapped segments: the first misplaced file holds the wrong LSNs.
    let swapped = copy_log(base);
    let names = segments(swapped.path());
    let (x, y) = (
        std::fs::read(&names[1]).unwrap(),
        std::fs::read(&names[2]).unwrap(),
    );
    std::fs::write(&names[1], y).unwrap();
    std::fs::write(&names[2], x).unwrap();
    let out = dump(&["verify", s(swapped.path())]);
    assert_eq!(out.code, 3, "{}", out.stdout);
    assert!(
        out.stdout.starts_with(&format!(
            "segment sequence broken: {} at offset 0 (LSN {}): file named for LSN {} holds a segment starting at {}",
            names[1].display(),
            first_lsn(&names[1]),
            first_lsn(&names[1]),
            first_lsn(&names[2])
        )),
        "{}",
        out.stdout
    );

    // Trailing garbage after the last frame (or, when the segment is full,
    // past its end).
    let garbage = copy_log(base);
    let path = seg_of(garbage.path(), &last);
    let end = last.offset + last.padded;
    let len = std::fs::metadata(&path).unwrap().len();
    let at = if end + 16 <= len { end + 8 } else { len };
    poke(&path, at, b"garbage!");
    let out = dump(&["verify", s(garbage.path())]);
    assert_eq!(out.code, 1, "{}", out.stdout);
    assert!(
        out.stdout.starts_with(&format!(
            "torn tail: {} at offset {end} (LSN {}): ",
            path.display(),
            last.lsn + 1
        )),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains(&format!(
            "the daemon would cut at offset {end} and keep LSNs below {}",
            last.lsn + 1
        )),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("garbage!"), "{}", out.stdout);
    let applied = dump(&["repair", s(garbage.path()), "--apply"]);
    assert_eq!(applied.code, 0, "{}", applied.stdout);
    assert_eq!(dump(&["verify", s(garbage.path())]).code, 0);
    assert!(segs.len() >= 4);
}
