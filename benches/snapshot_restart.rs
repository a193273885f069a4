//! Issue 5's snapshot and restart targets:
//!
//! - `snapshot/copy_stall`: what the lock actor spends handing a snapshot
//!   over (`State::snapshot_copy`) with a 100 MB config and full tables: the
//!   stall of request handling while a snapshot is written.
//! - `snapshot/write`: writing and syncing that snapshot (the writer
//!   thread's work; the actor does not wait for it).
//! - `restart/after_snapshot`: `wconfd` from spawn to its ready line, right
//!   after a snapshot of a 100 MB config (target: under 1 s).
//! - `restart/after_snapshot_full_tables`: the same with the full tables
//!   too (and their million records in the log before the snapshot).
//! - `restart/records_after_snapshot`: the same with a 10 MB config and
//!   1,000,000 records since the snapshot (target: under 2 s).
//!
//! Sizes: `WCONF_SNAP_CONFIG_MB` (100), `WCONF_SNAP_TAIL_CONFIG_MB` (10),
//! `WCONF_SNAP_TAIL_RECORDS` (1,000,000), `WCONF_SNAP_SESSIONS` (65,536) with
//! `WCONF_SNAP_LOCKS_PER_SESSION` (15, each grant remembered in dedup). When
//! criterion only smoke-tests (`cargo bench -- --test`) everything is small.
//! Data goes to `$WCONF_BENCH_DIR` (a real disk).

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use wconf::replay::encode_record;
use wconf::state::{LockMode, LockRequest, Record, SessionId, State};
use wconf::wal::storage::StdStorage;
use wconf::wal::{Wal, WalOptions};

fn env_u64(name: &str, default: u64, smoke: u64) -> u64 {
    match std::env::var(name).ok().and_then(|v| v.parse().ok()) {
        Some(v) => v,
        None if common::measuring() => default,
        None => smoke,
    }
}

/// Patches that together add about `mb` MB of document: objects of many
/// short entries, as a real cluster config is, each patch under the
/// 4 MiB patch limit.
fn config_patches(mb: u64) -> Vec<String> {
    const ENTRIES_PER_PATCH: usize = 30_000;
    const VALUE: &str =
        "a value of about one hundred bytes, as a node or instance attribute might be.....";
    let per_patch = ENTRIES_PER_PATCH * (VALUE.len() + 16);
    let patches = (mb as usize * 1_000_000).div_ceil(per_patch);
    (0..patches)
        .map(|p| {
            let entries: serde_json::Map<String, serde_json::Value> = (0..ENTRIES_PER_PATCH)
                .map(|i| (format!("e{i:06}"), serde_json::Value::from(VALUE)))
                .collect();
            serde_json::json!([{"op": "add", "path": format!("/part{p}"), "value": entries}])
                .to_string()
        })
        .collect()
}

fn txn(patch_json: String, request_id: Option<String>) -> Record {
    Record::ConfigWrite {
        session: None,
        patch_json,
        release_config: false,
        request_id,
    }
}

/// A log in `dir` and the state it gives, built record by record.
struct Builder {
    wal: Wal,
    state: State,
    last: Option<wconf::wal::Appended>,
}

impl Builder {
    fn new(dir: &Path) -> Builder {
        let _ = std::fs::remove_dir_all(dir);
        let (wal, _) = Wal::open(dir, WalOptions::default()).unwrap();
        let mut b = Builder {
            wal,
            state: State::new(),
            last: None,
        };
        b.push(Record::Epoch {
            epoch: 1,
            started_unix_ms: 1,
        });
        b
    }

    fn push(&mut self, record: Record) {
        let lsn = self.state.next_lsn();
        self.state.apply(lsn, &record).unwrap();
        let (kind, payload) = encode_record(&record).unwrap();
        self.last = Some(self.wal.append(kind, payload).unwrap());
    }

    fn config(&mut self, mb: u64) {
        for p in config_patches(mb) {
            self.push(txn(p, None));
        }
    }

    /// `sessions` sessions, each holding `locks` locks from one grant per
    /// lock, every grant remembered in dedup.
    fn tables(&mut self, sessions: u64, locks: u64) {
        for s in 0..sessions {
            self.push(Record::SessionOpen {
                session: SessionId(u128::from(s) + 1),
                name: Some(format!("session-{s}")),
                ttl_ms: 60_000,
            });
        }
        for l in 0..locks {
            for s in 0..sessions {
                self.push(Record::Grant {
                    session: SessionId(u128::from(s) + 1),
                    locks: vec![LockRequest::new(
                        format!("node/n{s:05}-{l:02}"),
                        LockMode::Exclusive,
                    )],
                    token: self.state.next_token(),
                    request_id: Some(format!("grant-{s}-{l}")),
                });
            }
        }
    }

    fn snapshot(&mut self) {
        self.sync();
        wconf::snapshot::write(&StdStorage, self.wal.dir(), &self.state, 0).unwrap();
    }

    fn sync(&mut self) {
        if let Some(a) = self.last.take() {
            a.wait().unwrap();
        }
    }

    fn finish(mut self) -> State {
        self.sync();
        self.wal.close().unwrap();
        self.state
    }
}

/// Spawns `wconfd` on `dir` and returns the time to its ready line; kills
/// it with SIGKILL after.
fn restart(dir: &Path) -> Duration {
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_wconfd"))
        .arg("--data-dir")
        .arg(dir)
        .arg("--listen")
        .arg("127.0.0.1:0")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let took = started.elapsed();
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(line.starts_with("wconfd ready"), "no ready line: {line:?}");
    took
}

fn dir(name: &str) -> PathBuf {
    common::bench_dir().join(name)
}

fn benches(c: &mut Criterion) {
    let config_mb = env_u64("WCONF_SNAP_CONFIG_MB", 100, 2);
    let tail_config_mb = env_u64("WCONF_SNAP_TAIL_CONFIG_MB", 10, 1);
    let tail_records = env_u64("WCONF_SNAP_TAIL_RECORDS", 1_000_000, 20_000);
    let sessions = env_u64("WCONF_SNAP_SESSIONS", 65_536, 100);
    let locks = env_u64("WCONF_SNAP_LOCKS_PER_SESSION", 15, 3);

    // A 100 MB config with full tables, snapshotted: the restart right
    // after a snapshot, and the state the stall and write benches copy.
    let big = dir("snapshot-big");
    let built = Instant::now();
    let mut b = Builder::new(&big);
    b.config(config_mb);
    b.tables(sessions, locks);
    b.snapshot();
    let state = b.finish();
    let snap_bytes = wconf::snapshot::list(&big).unwrap()[0]
        .path
        .metadata()
        .unwrap()
        .len();
    common::report(
        "snapshot/state",
        &[
            ("config_bytes", &state.config().doc_bytes()),
            ("sessions", &state.sessions().len()),
            ("locks", &state.locks().len()),
            ("dedup_bytes", &state.dedup().bytes()),
            ("snapshot_bytes", &snap_bytes),
            ("build_s", &built.elapsed().as_secs()),
        ],
    );

    // One hand-over timed by hand too, so a smoke run shows its size.
    let copied = Instant::now();
    let copy = state.snapshot_copy();
    let copy_us = copied.elapsed().as_micros();
    drop(copy);
    common::report("snapshot/copy_stall", &[("once_us", &copy_us)]);

    let mut g = c.benchmark_group("snapshot");
    g.sample_size(10);
    g.bench_function("copy_stall", |bench| {
        bench.iter_with_large_drop(|| state.snapshot_copy())
    });
    let out = dir("snapshot-write");
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out).unwrap();
    g.bench_function("write", |bench| {
        bench.iter(|| wconf::snapshot::write(&StdStorage, &out, &state, 0).unwrap())
    });
    g.finish();
    drop(state);

    let config_only = dir("snapshot-config");
    let mut b = Builder::new(&config_only);
    b.config(config_mb);
    b.snapshot();
    b.finish();

    let mut g = c.benchmark_group("restart");
    g.sample_size(10);
    g.bench_function("after_snapshot", |bench| {
        bench.iter_custom(|iters| (0..iters).map(|_| restart(&config_only)).sum())
    });
    g.bench_function("after_snapshot_full_tables", |bench| {
        bench.iter_custom(|iters| (0..iters).map(|_| restart(&big)).sum())
    });

    let tail = dir("snapshot-tail");
    let mut b = Builder::new(&tail);
    b.config(tail_config_mb);
    b.snapshot();
    for i in 0..tail_records {
        b.push(txn(
            format!(r#"[{{"op":"add","path":"/counter","value":{i}}}]"#),
            Some(format!("t{i}")),
        ));
    }
    b.finish();
    common::report(
        "restart/records_after_snapshot",
        &[("config_mb", &tail_config_mb), ("records", &tail_records)],
    );
    g.bench_function("records_after_snapshot", |bench| {
        bench.iter_custom(|iters| (0..iters).map(|_| restart(&tail)).sum())
    });
    g.finish();
}

criterion_group!(snapshot_restart, benches);
criterion_main!(snapshot_restart);
