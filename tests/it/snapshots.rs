//! Snapshots and start-up against the real `wconfd`: the admin endpoint,
//! segment collection, restart from a snapshot after SIGKILL, fallback from
//! a corrupt newest snapshot, the refusal when nothing valid is left,
//! `/healthz` while a long recovery runs, and the snapshot writer's nice
//! value.

use std::path::{Path, PathBuf};

use serde_json::json;
use wconf::api::types::*;

use crate::daemon::{eventually, refused, start, Daemon};

/// Small segments and no automatic snapshots, so a test decides when
/// snapshots happen and a few hundred records span several segments.
const ARGS: &[&str] = &[
    "--segment-size",
    "64KiB",
    "--snapshot-every-records",
    "0",
    "--snapshot-every-bytes",
    "0",
];

fn files(dir: &Path, suffix: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(suffix))
        .collect();
    v.sort();
    v
}

/// `count` acknowledged transactions of about 2 KB each.
fn txns(d: &Daemon, from: usize, count: usize) {
    for i in from..from + count {
        let patch = json!([{"op": "add", "path": format!("/k{i}"), "value": "v".repeat(2000)}]);
        let done = d
            .client
            .txn(&TxnRequest {
                patch,
                if_serial: None,
                wait_ms: 0,
                request_id: Some(format!("t{i}")),
            })
            .unwrap();
        assert!(done.applied);
    }
}

/// What must survive every restart: the document and the lock table.
fn observable(d: &Daemon) -> (serde_json::Value, u64, Vec<(String, String, u64)>) {
    let config = d.client.config().unwrap();
    let holders = d
        .client
        .locks()
        .unwrap()
        .holders
        .into_iter()
        .map(|h| (h.name, h.session, h.token))
        .collect();
    (config.config, config.serial, holders)
}

/// A daemon with three snapshots taken between batches of writes, a held
/// lock, and more writes after the last snapshot; returns what it shows.
fn three_snapshots(dir: &Path) -> (Daemon, Vec<SnapshotTaken>) {
    let d = start(dir, ARGS);
    let s = crate::daemon::session(&d.client);
    let granted = d
        .client
        .acquire(&crate::daemon::acquire(
            &s,
            vec![crate::daemon::lock("node/a", Mode::Exclusive)],
            Some("g1"),
        ))
        .unwrap();
    assert!(granted.granted);
    let mut taken = Vec::new();
    for round in 0..3 {
        txns(&d, round * 40, 40);
        taken.push(d.client.snapshot().unwrap());
    }
    txns(&d, 120, 10);
    (d, taken)
}

#[test]
fn admin_snapshot_collects_segments_and_a_restart_keeps_everything() {
    // Invariant: POST /v1/admin/snapshot answers with a durable snapshot at
    // the current LSN; two snapshots and the segments back to the older one
    // are kept; after SIGKILL the daemon restarts from the newest snapshot
    // plus the tail with every acknowledged change.
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (d, taken) = three_snapshots(dir);
    let status = d.client.status().unwrap();
    let last = taken.last().unwrap();
    assert!(last.lsn < status.applied_lsn && last.bytes > 0);
    assert!(Path::new(&last.path).exists());
    assert!(
        taken[1].segments_removed > 0 && taken[2].snapshots_removed == 1,
        "{taken:?}"
    );
    let snaps = files(dir, ".snap");
    assert_eq!(snaps.len(), 2, "{snaps:?}");
    let first_segment = files(dir, ".wal")[0].clone();
    let first_lsn: u64 = first_segment
        .file_stem()
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        first_lsn > 1 && first_lsn <= taken[1].lsn + 1,
        "{first_lsn}"
    );
    let before = observable(&d);
    d.kill();
    let d = start(dir, ARGS);
    assert_eq!(observable(&d), before);
    // A retried request id is still remembered across the snapshot.
    let again = d
        .client
        .txn(&TxnRequest {
            patch: json!([{"op": "add", "path": "/k0", "value": "other"}]),
            if_serial: None,
            wait_ms: 0,
            request_id: Some("t0".into()),
        })
        .unwrap();
    assert!(again.applied);
    assert_eq!(observable(&d).0, before.0);
}

#[test]
fn a_corrupt_newest_snapshot_falls_back_to_the_older_one() {
    // Invariant: with the newest snapshot damaged, wconfd starts from the
    // older one plus a longer replay, warns, and loses nothing.
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (d, _) = three_snapshots(dir);
    let before = observable(&d);
    d.kill();
    let newest = files(dir, ".snap").pop().unwrap();
    let mut bytes = std::fs::read(&newest).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&newest, bytes).unwrap();
    let d = start(dir, ARGS);
    assert_eq!(observable(&d), before);
    let stderr = d.kill_with_stderr();
    assert!(stderr.contains("older snapshot"), "{stderr}");
}

#[test]
fn no_valid_snapshot_and_a_collected_log_start_refuse_to_start() {
    // Invariant: when both snapshots are damaged and the log no longer
    // starts at LSN 1, wconfd refuses with exit code 4 and says why, rather
    // than serving a state missing the collected records.
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (d, _) = three_snapshots(dir);
    d.kill();
    for snap in files(dir, ".snap") {
        let mut bytes = std::fs::read(&snap).unwrap();
        bytes[70] ^= 0xff;
        std::fs::write(&snap, bytes).unwrap();
    }
    let (status, stderr) = refused(dir, ARGS);
    assert_eq!(status.code(), Some(4), "{stderr}");
    assert!(stderr.contains("no snapshot that loads"), "{stderr}");
}

/// Writes a log of `records` small config transactions straight through
/// the library's WAL (group-committed, so it is quick to build), for a
/// recovery that takes a while.
fn big_log(dir: &Path, records: u64) {
    use wconf::replay::encode_record;
    use wconf::state::Record;
    let (wal, _) = wconf::wal::Wal::open(dir, wconf::wal::WalOptions::default()).unwrap();
    let mut last = None;
    let epoch = Record::Epoch {
        epoch: 1,
        started_unix_ms: 1,
    };
    let (kind, payload) = encode_record(&epoch).unwrap();
    wal.append(kind, payload).unwrap().wait().unwrap();
    for i in 0..records {
        let record = Record::ConfigWrite {
            session: None,
            patch_json: format!(r#"[{{"op":"add","path":"/n","value":{i}}}]"#),
            release_config: false,
            request_id: None,
        };
        let (kind, payload) = encode_record(&record).unwrap();
        last = Some(wal.append(kind, payload).unwrap());
    }
    last.unwrap().wait().unwrap();
    wal.close().unwrap();
}

#[test]
fn healthz_answers_503_with_progress_until_recovery_is_done() {
    // Invariant: from the moment wconfd listens until its state is
    // recovered, /healthz answers 503 {"state":"recovering","progress":..}
    // and other routes 503 `recovering`; then /healthz answers 200 and the
    // recovered state is served. The recovery is slow because the log is
    // big, not because anything sleeps.
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    const RECORDS: u64 = 40_000;
    big_log(dir, RECORDS);
    let port = crate::daemon::free_port();
    let mut child = crate::daemon::command(dir, port, &[]).spawn().unwrap();
    let guard = scopeguard(&mut child);
    let agent = ureq::AgentBuilder::new()
        .timeout(std::time::Duration::from_secs(5))
        .build();
    let base = format!("http://127.0.0.1:{port}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    let (mut recovering, mut refused_status) = (0, false);
    let ready = loop {
        assert!(std::time::Instant::now() < deadline, "never ready");
        // Pacing, not synchronisation: leave the CPU to the recovery.
        std::thread::sleep(std::time::Duration::from_millis(2));
        match agent.get(&format!("{base}/healthz")).call() {
            Ok(resp) => break resp.into_json::<serde_json::Value>().unwrap(),
            Err(ureq::Error::Status(503, resp)) => {
                let body: serde_json::Value = resp.into_json().unwrap();
                assert_eq!(body["state"], "recovering", "{body}");
                assert!(body["progress"]["phase"].is_string(), "{body}");
                recovering += 1;
                if !refused_status {
                    match agent.get(&format!("{base}/v1/status")).call() {
                        Err(ureq::Error::Status(503, resp)) => {
                            let body: serde_json::Value = resp.into_json().unwrap();
                            assert_eq!(body["error"]["code"], "recovering", "{body}");
                            refused_status = true;
                        }
                        // Recovery ended in between.
                        Ok(_) => {}
                        Err(e) => panic!("status during recovery: {e}"),
                    }
                }
            }
            // Not listening yet.
            Err(ureq::Error::Transport(_)) => {}
            Err(e) => panic!("healthz: {e}"),
        }
    };
    assert!(
        recovering > 0,
        "no 503 seen: recovery was too quick to observe"
    );
    assert!(refused_status, "no route answered 503 recovering");
    assert_eq!(ready["ok"], true, "{ready}");
    let value: serde_json::Value = agent
        .get(&format!("{base}/v1/config/n"))
        .call()
        .unwrap()
        .into_json()
        .unwrap();
    assert_eq!(value["value"], RECORDS - 1, "{value}");
    drop(guard);
}

/// Kills the child when the test ends, however it ends.
fn scopeguard(child: &mut std::process::Child) -> impl Drop + '_ {
    struct Kill<'a>(&'a mut std::process::Child);
    impl Drop for Kill<'_> {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    Kill(child)
}

/// Each thread of process `pid`, as (name, nice value), from /proc; a
/// thread that exits while it is read is left out.
fn thread_nice(pid: u32) -> Vec<(String, i64)> {
    let mut out = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let task = task.unwrap().path();
        let (Ok(name), Ok(stat)) = (
            std::fs::read_to_string(task.join("comm")),
            std::fs::read_to_string(task.join("stat")),
        ) else {
            continue;
        };
        // The name in `stat` may hold spaces; the fields after its closing
        // parenthesis start at field 3, so field 19 (nice) is index 16.
        let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
        out.push((name.trim().to_string(), fields[16].parse().unwrap()));
    }
    out
}

#[test]
fn the_snapshot_writer_runs_below_the_request_threads() {
    // Invariant: the snapshot writer thread runs SNAPSHOT_NICE_INCREMENT
    // above the daemon's nice value, so encoding a large document yields
    // the CPU to requests; every other thread keeps the daemon's own.
    let tmp = tempfile::tempdir().unwrap();
    let d = start(tmp.path(), ARGS);
    // A new thread names itself, and then lowers its priority, once it
    // runs: poll until both are done, with a deadline.
    let pid = d.child.id();
    let own = thread_nice(pid)
        .into_iter()
        .find(|(name, _)| name == "wconfd")
        .expect("the main thread")
        .1;
    let want = (own + i64::from(wconf::snapshot::writer::SNAPSHOT_NICE_INCREMENT)).min(19);
    let mut threads = Vec::new();
    eventually(&format!("a snapshot-writer thread at nice {want}"), || {
        threads = thread_nice(pid);
        let snapshot: Vec<i64> = threads
            .iter()
            .filter(|(name, _)| name == "snapshot-writer")
            .map(|(_, nice)| *nice)
            .collect();
        snapshot == [want]
    });
    for (name, nice) in &threads {
        if name != "snapshot-writer" {
            assert_eq!(*nice, own, "{name} in {threads:?}");
        }
    }
}
