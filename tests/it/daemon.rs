//! The daemon's guarantees, each tested against the real `wconfd` binary:
//! started on a temporary directory, killed with SIGKILL, restarted.

use std::io::{BufRead, BufReader, Read};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};
use wconf::api::types::*;
use wconf::client::{Client, ClientError};

/// Attempts to start when the free port picked was taken in between.
const START_ATTEMPTS: usize = 5;

/// How long [`eventually`] waits for its condition.
const EVENTUALLY_PATIENCE: std::time::Duration = std::time::Duration::from_secs(20);

/// Polls `cond` until it holds, failing the test after
/// [`EVENTUALLY_PATIENCE`].
pub(crate) fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + EVENTUALLY_PATIENCE;
    while !cond() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

pub(crate) struct Daemon {
    pub(crate) child: Child,
    pub(crate) client: Client,
    pub(crate) base: String,
    pub(crate) epoch: u64,
}

/// A port nobody listens on right now (another process may still take it
/// before the daemon binds; `start` retries then).
pub(crate) fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("local addr").port()
}

/// Starts `wconfd` on `dir` and returns once it printed its ready line.
pub(crate) fn start(dir: &Path, extra: &[&str]) -> Daemon {
    start_with(dir, extra, |_| {})
}

/// The `wconfd` command for `dir`, logging warnings and errors to a pipe.
pub(crate) fn command(dir: &Path, port: u16, extra: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_wconfd"));
    cmd.arg("--data-dir")
        .arg(dir)
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .args(extra)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// As [`start`], with `setup` applied to the command first.
pub(crate) fn start_with(dir: &Path, extra: &[&str], setup: impl Fn(&mut Command)) -> Daemon {
    let mut last = String::new();
    for _ in 0..START_ATTEMPTS {
        let port = free_port();
        let mut cmd = command(dir, port, extra);
        setup(&mut cmd);
        let mut child = cmd.spawn().expect("spawn wconfd");
        let stdout = child.stdout.take().expect("stdout piped");
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        if let Some(rest) = line.strip_prefix("wconfd ready on ") {
            let epoch = rest
                .split("(epoch ")
                .nth(1)
                .and_then(|s| s.split(',').next())
                .and_then(|s| s.parse().ok())
                .expect("ready line names the epoch");
            let base = format!("http://127.0.0.1:{port}");
            return Daemon {
                child,
                client: Client::new(base.clone()),
                base,
                epoch,
            };
        }
        let _ = child.wait();
        last.clear();
        if let Some(mut err) = child.stderr.take() {
            let _ = err.read_to_string(&mut last);
        }
    }
    panic!("wconfd did not start: {last}");
}

impl Daemon {
    /// SIGKILL: no shutdown code runs, as in a crash.
    pub(crate) fn kill(mut self) {
        let pid = Pid::from_raw(self.child.id() as i32);
        kill(pid, Signal::SIGKILL).expect("SIGKILL wconfd");
        self.child.wait().expect("reap wconfd");
    }

    /// SIGKILL, then everything the daemon wrote to stderr.
    pub(crate) fn kill_with_stderr(mut self) -> String {
        let stderr = self.child.stderr.take();
        let pid = Pid::from_raw(self.child.id() as i32);
        kill(pid, Signal::SIGKILL).expect("SIGKILL wconfd");
        self.child.wait().expect("reap wconfd");
        let mut text = String::new();
        if let Some(mut e) = stderr {
            let _ = e.read_to_string(&mut text);
        }
        text
    }
}

/// Runs `wconfd` on `dir` expecting it to refuse to start: its exit status
/// and stderr. Panics if it announces it is ready instead.
pub(crate) fn refused(dir: &Path, extra: &[&str]) -> (ExitStatus, String) {
    let mut child = command(dir, free_port(), extra)
        .spawn()
        .expect("spawn wconfd");
    let mut line = String::new();
    let _ = BufReader::new(child.stdout.take().expect("stdout piped")).read_line(&mut line);
    if line.starts_with("wconfd ready") {
        let _ = child.kill();
        let _ = child.wait();
        panic!("wconfd started on a log it should refuse: {line}");
    }
    let out = child.wait_with_output().expect("reap wconfd");
    (
        out.status,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

pub(crate) fn session(c: &Client) -> String {
    c.create_session(Some("test"), 60_000)
        .expect("create session")
        .session
}

pub(crate) fn lock(name: &str, mode: Mode) -> LockSpec {
    LockSpec {
        name: name.into(),
        mode,
    }
}

pub(crate) fn acquire(
    session: &str,
    locks: Vec<LockSpec>,
    request_id: Option<&str>,
) -> AcquireRequest {
    AcquireRequest {
        session: session.into(),
        locks,
        wait_ms: 0,
        priority: 0,
        min: None,
        request_id: request_id.map(str::to_string),
    }
}

pub(crate) fn write(
    session: &str,
    patch: Value,
    release: bool,
    request_id: Option<&str>,
) -> WriteRequest {
    WriteRequest {
        session: session.into(),
        patch,
        release,
        request_id: request_id.map(str::to_string),
    }
}

pub(crate) fn config_holder(c: &Client) -> Option<HolderView> {
    c.locks()
        .expect("locks")
        .holders
        .into_iter()
        .find(|h| h.name == "config")
}

#[test]
fn g1_an_acknowledged_change_survives_sigkill() {
    // Invariant G1: once a response arrived, its record is on disk: SIGKILL
    // right after it loses nothing.
    let dir = tempfile::tempdir().unwrap();
    let d = start(dir.path(), &[]);
    let s = session(&d.client);
    let granted = d
        .client
        .acquire(&acquire(&s, vec![lock("config", Mode::Exclusive)], None))
        .unwrap();
    assert!(granted.granted);
    let patch = json!([{"op": "add", "path": "/nodes", "value": ["a"]}]);
    let w = d.client.write(&write(&s, patch, false, None)).unwrap();
    assert!(w.applied && w.lock_was_held);
    d.kill();

    let d = start(dir.path(), &[]);
    let v = d.client.config_value("/nodes").unwrap();
    assert_eq!(v.value, json!(["a"]));
    assert_eq!(Some(v.serial), w.serial);
    let holder = config_holder(&d.client).expect("config still held");
    assert_eq!(holder.session, s);
    assert_eq!(Some(holder.token), granted.token);
}

#[test]
fn g2_write_and_release_recover_together() {
    // Invariant G2: a write with release is one record, so after SIGKILL at
    // any moment the session holds `config` only for a cycle whose patch is
    // absent. (Were the patch and the release two records, a kill between
    // them would leave the patch present and the lock still held.)
    let dir = tempfile::tempdir().unwrap();
    for round in 0..6u64 {
        let d = start(dir.path(), &[]);
        let s = session(&d.client);
        // Cycle k is granted token first + k: tokens go up by one a grant.
        let warmup = d
            .client
            .acquire(&acquire(&s, vec![lock("warmup", Mode::Shared)], None))
            .unwrap();
        let first = warmup.token.expect("token") + 1;
        let c = Client::new(d.base.clone());
        let s2 = s.clone();
        let cycles = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counted = cycles.clone();
        let writer = std::thread::spawn(move || {
            let mut acked = 0u64;
            for i in 0.. {
                let req = acquire(&s2, vec![lock("config", Mode::Exclusive)], None);
                if !c.acquire(&req).is_ok_and(|g| g.granted) {
                    break;
                }
                let patch = json!([{"op": "add", "path": format!("/r{round}_{i}"), "value": i}]);
                if !c
                    .write(&write(&s2, patch, true, None))
                    .is_ok_and(|w| w.applied)
                {
                    break;
                }
                acked = i + 1;
                counted.store(acked, std::sync::atomic::Ordering::SeqCst);
            }
            acked
        });
        // The kill lands after the first acknowledged cycle (polled, so a
        // loaded machine cannot make the round vacuous), then at a varying
        // moment after it; the sleep is not synchronisation.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while cycles.load(std::sync::atomic::Ordering::SeqCst) == 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "round {round}: no cycle acknowledged in 30 s"
            );
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        std::thread::sleep(std::time::Duration::from_millis(round * 23));
        d.kill();
        let acked = writer.join().unwrap();

        let d = start(dir.path(), &[]);
        let cfg = d.client.config().unwrap().config;
        let written = (0..)
            .take_while(|i| cfg.get(format!("r{round}_{i}")).is_some())
            .count() as u64;
        assert!(written >= acked, "round {round}: acknowledged write lost");
        assert!(written > 0, "round {round}: the kill came before any cycle");
        if let Some(h) = config_holder(&d.client).filter(|h| h.session == s) {
            assert_eq!(
                h.token - first,
                written,
                "round {round}: config held by cycle {} but {written} patches present",
                h.token - first
            );
        }
        d.client.close_session(&s).unwrap();
        d.kill();
    }
}

#[test]
fn g5_a_retry_after_restart_gets_the_original_outcome() {
    // Invariant G5: a request retried with the same request_id, even after
    // a crash and restart, returns its first outcome and is not applied
    // again.
    let dir = tempfile::tempdir().unwrap();
    let d = start(dir.path(), &[]);
    let s = session(&d.client);
    let req = acquire(&s, vec![lock("config", Mode::Exclusive)], Some("acq-1"));
    let first_grant = d.client.acquire(&req).unwrap();
    let patch = json!([{"op": "add", "path": "/count", "value": 1}]);
    let wreq = write(&s, patch, true, Some("write-1"));
    let first_write = d.client.write(&wreq).unwrap();
    let treq = TxnRequest {
        patch: json!([{"op": "add", "path": "/t", "value": 1}]),
        if_serial: None,
        wait_ms: 0,
        request_id: Some("txn-1".into()),
    };
    let first_txn = d.client.txn(&treq).unwrap();
    d.kill();

    let d = start(dir.path(), &[]);
    let serial = d.client.config().unwrap().serial;
    assert_eq!(d.client.write(&wreq).unwrap(), first_write);
    assert_eq!(d.client.acquire(&req).unwrap(), first_grant);
    assert_eq!(d.client.txn(&treq).unwrap(), first_txn);
    assert_eq!(
        d.client.config().unwrap().serial,
        serial,
        "a retry applied again"
    );
    assert!(
        config_holder(&d.client).is_none(),
        "the retried acquire took the lock again"
    );
}

#[test]
fn g8_epochs_and_fencing_tokens_only_increase_across_restarts() {
    // Invariant G8: every start writes a higher epoch, and a fencing token
    // is never handed out twice, across restarts too.
    let dir = tempfile::tempdir().unwrap();
    let mut last_epoch = 0;
    let mut last_token = 0;
    for _ in 0..4 {
        let d = start(dir.path(), &[]);
        assert!(d.epoch > last_epoch, "epoch {} after {last_epoch}", d.epoch);
        assert_eq!(d.client.status().unwrap().epoch, d.epoch);
        last_epoch = d.epoch;
        let s = session(&d.client);
        for name in ["a", "b"] {
            let g = d
                .client
                .acquire(&acquire(&s, vec![lock(name, Mode::Shared)], None))
                .unwrap();
            let token = g.token.expect("granted with a token");
            assert!(token > last_token, "token {token} after {last_token}");
            last_token = token;
        }
        d.kill();
    }
}

#[test]
fn g9_bad_input_is_a_4xx_with_a_json_error_and_changes_nothing() {
    // Invariant G9: each malformed or refused request gets a 4xx with the
    // error JSON, and no record is written (the applied LSN stays put).
    let dir = tempfile::tempdir().unwrap();
    let d = start(dir.path(), &["--max-body", "4KiB"]);
    let c = &d.client;
    let s = session(c);
    c.acquire(&acquire(&s, vec![lock("config", Mode::Exclusive)], None))
        .unwrap();
    let unknown = "0123456789abcdef0123456789abcdef";
    let long_name = "x".repeat(300);
    let big = format!(r#"{{"ttl_ms": 1000, "name": "{}"}}"#, "n".repeat(8 << 10));
    let raw: Vec<(&str, String, u16)> =
        vec![
        ("/v1/sessions", "{\"ttl_ms\": ".into(), 400),
        ("/v1/sessions", r#"{"ttl_ms": 1000, "color": "red"}"#.into(), 400),
        ("/v1/sessions", r#"{"ttl_ms": "long"}"#.into(), 400),
        ("/v1/sessions", r#"{"ttl_ms": 5}"#.into(), 400),
        ("/v1/sessions", big, 413),
        (
            "/v1/locks/acquire",
            json!({"session": s, "locks": [{"name": "", "mode": "shared"}]}).to_string(),
            400,
        ),
        (
            "/v1/locks/acquire",
            json!({"session": s, "locks": [{"name": long_name, "mode": "shared"}]}).to_string(),
            400,
        ),
        (
            "/v1/locks/acquire",
            json!({"session": s, "locks": [{"name": "a", "mode": "sideways"}]}).to_string(),
            400,
        ),
        (
            "/v1/locks/acquire",
            json!({"session": s, "locks": [{"name": "a", "mode": "shared"}], "priority": 20})
                .to_string(),
            400,
        ),
        (
            "/v1/locks/acquire",
            json!({"session": unknown, "locks": [{"name": "a", "mode": "shared"}]}).to_string(),
            404,
        ),
        (
            "/v1/locks/acquire",
            json!({"session": "not-an-id", "locks": []}).to_string(),
            400,
        ),
        (
            "/v1/config/write",
            json!({"session": s, "patch": [{"op": "replace", "path": "/missing/x", "value": 1}]})
                .to_string(),
            409,
        ),
        (
            "/v1/config/write",
            json!({"session": s, "patch": {"op": "add"}}).to_string(),
            400,
        ),
        (
            "/v1/config/txn",
            json!({"patch": [{"op": "test", "path": "/a", "value": 1}]}).to_string(),
            409,
        ),
        (
            "/v1/config/txn",
            json!({"patch": [], "if_serial": 99}).to_string(),
            409,
        ),
    ];
    let before = c.status().unwrap().applied_lsn;
    for (path, body, status) in raw {
        let err = c
            .post_raw::<Value>(path, body.as_bytes())
            .expect_err(&format!("{path} {body:.80} was accepted"));
        match &err {
            ClientError::Api {
                status: got,
                code,
                message,
            } => {
                assert_eq!(*got, status, "{path} {body:.80}: {err}");
                assert!(!code.is_empty() && code != "unknown", "{err}");
                assert!(!message.is_empty(), "{err}");
            }
            other => panic!("{path} {body:.80}: {other}"),
        }
        assert_eq!(
            c.status().unwrap().applied_lsn,
            before,
            "{path} {body:.80} changed state"
        );
    }
    // Regression (commit 8c8c377 refused a `null` keepalive body, which the
    // typed client sent): a known session's keepalive succeeds, an unknown
    // one is a 404, not a 400.
    c.keepalive(&s).expect("keepalive of a live session");
    let keepalive = c.keepalive(unknown).unwrap_err();
    assert_eq!(keepalive.status(), Some(404), "{keepalive}");
    let missing = c.config_value("/no/such").unwrap_err();
    assert_eq!(missing.status(), Some(404), "{missing}");
    assert_eq!(c.status().unwrap().applied_lsn, before);
}

/// One frame of the log: its segment, offset, LSN and length on disk.
#[derive(Debug, Clone)]
struct FrameAt {
    segment: std::path::PathBuf,
    offset: u64,
    lsn: u64,
    bytes: usize,
}

/// Every frame of the valid log in `dir`, in LSN order, read with the WAL's
/// own reader.
fn frames(dir: &Path) -> Vec<FrameAt> {
    use wconf::wal::reader::{list_segments, scan_segment, Frames};
    let mut out = Vec::new();
    for file in list_segments(&wconf::wal::storage::StdStorage, dir).unwrap() {
        let header = wconf::wal::format::SegmentHeader::decode(&file.view).unwrap();
        let scan = scan_segment(&file.view, header);
        assert!(scan.problem.is_none(), "{}: damaged", file.path.display());
        for frame in Frames::new(&file.view, scan.end as usize) {
            let frame = frame.unwrap();
            out.push(FrameAt {
                segment: file.path.clone(),
                offset: frame.offset,
                lsn: frame.lsn,
                bytes: frame.header.padded_len(),
            });
        }
    }
    out
}

/// Overwrites `data.len()` bytes of `path` at `offset`, in place.
fn overwrite(path: &Path, offset: u64, data: &[u8]) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(data, offset).unwrap();
    f.sync_all().unwrap();
}

fn txn(patch: Value, request_id: Option<String>) -> TxnRequest {
    TxnRequest {
        patch,
        if_serial: None,
        wait_ms: 0,
        request_id,
    }
}

#[test]
fn g3_after_random_kills_the_state_is_a_prefix_holding_every_acked_change() {
    // Invariant G3: after SIGKILL at any moment under concurrent load, the
    // recovered state is the state after a prefix of the log that holds
    // every acknowledged change: each txn adds one key, so the recovered
    // serial counts the keys (no change lost from the middle); every acked
    // key is there with its value; every key there was sent; the serial is
    // at least the highest acknowledged one.
    use rand::{Rng, SeedableRng};
    const CLIENTS: usize = 3;
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x6733);
    let dir = tempfile::tempdir().unwrap();
    // Per client: (sequence number, serial) of every acked txn.
    let mut acked: Vec<Vec<(u64, u64)>> = vec![Vec::new(); CLIENTS];
    let mut next: Vec<u64> = vec![0; CLIENTS];
    // Per client: the txn in flight at each kill, which may or may not be in.
    let mut maybe: Vec<Vec<u64>> = vec![Vec::new(); CLIENTS];
    for round in 0..8 {
        let d = start(dir.path(), &["--segment-size", "1MiB"]);
        let workers: Vec<_> = (0..CLIENTS)
            .map(|t| {
                let c = Client::new(d.base.clone());
                let mut n = next[t];
                std::thread::spawn(move || {
                    let mut got = Vec::new();
                    loop {
                        let patch =
                            json!([{"op": "add", "path": format!("/k{t}_{n}"), "value": n}]);
                        match c.txn(&txn(patch, None)) {
                            Ok(r) => got.push((n, r.serial)),
                            Err(_) => return (got, n),
                        }
                        n += 1;
                    }
                })
            })
            .collect();
        // Not synchronisation: the kill lands at a seeded random moment.
        std::thread::sleep(std::time::Duration::from_millis(rng.gen_range(5..60)));
        d.kill();
        for (t, w) in workers.into_iter().enumerate() {
            let (got, in_flight) = w.join().unwrap();
            acked[t].extend(got);
            // The request in flight may or may not have been logged; the
            // next round starts after it so keys never repeat.
            maybe[t].push(in_flight);
            next[t] = in_flight + 1;
        }

        let d = start(dir.path(), &["--segment-size", "1MiB"]);
        let view = d.client.config().unwrap();
        let doc = view.config.as_object().unwrap();
        assert_eq!(
            doc.len() as u64,
            view.serial,
            "round {round}: serial {} but {} changes",
            view.serial,
            doc.len()
        );
        for (t, list) in acked.iter().enumerate() {
            for (n, serial) in list {
                assert_eq!(
                    doc.get(&format!("k{t}_{n}")),
                    Some(&json!(n)),
                    "round {round}: acked txn k{t}_{n} (serial {serial}) lost"
                );
            }
        }
        for key in doc.keys() {
            let known = (0..CLIENTS).any(|t| {
                acked[t].iter().any(|(n, _)| key == &format!("k{t}_{n}"))
                    || maybe[t].iter().any(|n| key == &format!("k{t}_{n}"))
            });
            assert!(known, "round {round}: {key} was never sent");
        }
        let max_acked = acked.iter().flatten().map(|(_, s)| *s).max().unwrap_or(0);
        assert!(
            view.serial >= max_acked,
            "round {round}: serial {} below acked serial {max_acked}",
            view.serial
        );
        d.kill();
    }
    assert!(
        acked.iter().map(Vec::len).sum::<usize>() > 0,
        "no txn was ever acknowledged"
    );
}

#[test]
fn g6_a_torn_tail_is_cut_with_a_warning() {
    // Invariant G6: when the last record of the last segment is torn (its
    // second half garbage), the daemon starts, warns on stderr that it cut
    // the tail of that segment, and recovers everything before the record.
    let dir = tempfile::tempdir().unwrap();
    let d = start(dir.path(), &[]);
    d.client
        .txn(&txn(
            json!([{"op": "add", "path": "/before", "value": 1}]),
            None,
        ))
        .unwrap();
    d.client
        .txn(&txn(
            json!([{"op": "add", "path": "/torn", "value": 2}]),
            None,
        ))
        .unwrap();
    d.kill();
    let last = frames(dir.path()).pop().expect("a frame");
    let half = last.bytes as u64 / 2;
    overwrite(
        &last.segment,
        last.offset + half,
        &vec![0xa5; half as usize],
    );

    let d = start(dir.path(), &[]);
    let cfg = d.client.config().unwrap().config;
    assert_eq!(
        cfg,
        json!({"before": 1}),
        "not cut exactly at the torn record"
    );
    let stderr = d.kill_with_stderr();
    let name = last
        .segment
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    assert!(
        stderr.contains("torn tail") && stderr.contains("cut") && stderr.contains(&name),
        "no warning naming the cut of {name}: {stderr}"
    );
}

#[test]
fn g6_mid_log_corruption_refuses_to_start_naming_file_offset_and_lsn() {
    // Invariant G6: a damaged record followed by valid records of later
    // batches is not a torn tail: wconfd exits with code 4 and its error
    // names the segment file, the offset and the LSN of the damage.
    let dir = tempfile::tempdir().unwrap();
    let d = start(dir.path(), &[]);
    for i in 0..5 {
        let patch = json!([{"op": "add", "path": format!("/k{i}"), "value": i}]);
        d.client.txn(&txn(patch, None)).unwrap();
    }
    d.kill();
    let early = frames(dir.path())[2].clone();
    let at = early.offset + 24 + 1;
    let mut byte = [0u8];
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::File::open(&early.segment).unwrap();
        f.read_exact_at(&mut byte, at).unwrap();
    }
    overwrite(&early.segment, at, &[byte[0] ^ 0x10]);

    let (status, stderr) = refused(dir.path(), &[]);
    assert_eq!(status.code(), Some(4), "exit status {status}: {stderr}");
    let path = early.segment.display().to_string();
    for part in [
        path.as_str(),
        &format!("offset {}", early.offset),
        &format!("LSN {}", early.lsn),
    ] {
        assert!(
            stderr.contains(part),
            "stderr does not name {part:?}: {stderr}"
        );
    }
}

#[test]
fn g7_a_failing_disk_stops_the_daemon_and_nothing_unsynced_was_acked() {
    // Invariant G7: when a log write fails for real (the file size limit,
    // RLIMIT_FSIZE, with SIGXFSZ ignored, makes pwrite past it fail with
    // EFBIG), wconfd exits with code 3 and never answers success for the
    // request that hit the error or any later one: after a restart without
    // the limit, every change that was answered with success is present.
    use std::os::unix::process::CommandExt;
    let dir = tempfile::tempdir().unwrap();
    // The first run creates the segment (preallocated, so the limited run
    // never needs to grow the file, only to write past the limit).
    let args = ["--segment-size", "1MiB"];
    start(dir.path(), &args).kill();
    let last = frames(dir.path()).pop().expect("the epoch record");
    // The writer keeps 256 KiB of zeros written past its last record
    // (ZERO_AHEAD_BYTES), so the limit lets the restart's first zero write
    // through; the write that fails is a later one, records or zeros, once
    // the log has grown.
    let limit = last.offset + last.bytes as u64 + (256 << 10) + (8 << 10);
    let d = start_with(dir.path(), &args, move |cmd| {
        // SAFETY: between fork and exec only async-signal-safe calls are
        // made (setrlimit, signal), and nothing is allocated.
        unsafe {
            cmd.pre_exec(move || {
                use nix::libc;
                let rl = libc::rlimit {
                    rlim_cur: limit,
                    rlim_max: libc::RLIM_INFINITY,
                };
                if libc::setrlimit(libc::RLIMIT_FSIZE, &rl) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // An ignored disposition survives exec: writes past the
                // limit fail with EFBIG instead of killing the process.
                if libc::signal(libc::SIGXFSZ, libc::SIG_IGN) == libc::SIG_ERR {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    });
    let s = session(&d.client);
    let cycles = {
        let c = Client::new(d.base.clone());
        let s = s.clone();
        std::thread::spawn(move || {
            let mut acked = Vec::new();
            for i in 0u64.. {
                let req = acquire(&s, vec![lock("config", Mode::Exclusive)], None);
                if !c.acquire(&req).is_ok_and(|g| g.granted) {
                    return acked;
                }
                let patch =
                    json!([{"op": "add", "path": format!("/w{i}"), "value": "x".repeat(100)}]);
                match c.write(&write(&s, patch, true, None)) {
                    Ok(w) if w.applied => acked.push(format!("w{i}")),
                    _ => return acked,
                }
            }
            acked
        })
    };
    let txns = {
        let c = Client::new(d.base.clone());
        std::thread::spawn(move || {
            let mut acked = Vec::new();
            for i in 0u64.. {
                let patch =
                    json!([{"op": "add", "path": format!("/t{i}"), "value": "y".repeat(100)}]);
                let mut req = txn(patch, None);
                req.wait_ms = 10_000;
                match c.txn(&req) {
                    Ok(t) if t.applied => acked.push(format!("t{i}")),
                    _ => return acked,
                }
            }
            acked
        })
    };
    let acked: Vec<String> = [cycles, txns]
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    let mut d = d;
    // The daemon must be gone already (its death ended both clients); a
    // bounded wait only turns a daemon that keeps running into a failure.
    let (tx, rx) = std::sync::mpsc::channel();
    let mut child = std::mem::replace(
        &mut d.child,
        Command::new("true").spawn().expect("spawn true"),
    );
    std::thread::spawn(move || {
        let status = child.wait();
        let mut err = String::new();
        if let Some(mut e) = child.stderr.take() {
            let _ = e.read_to_string(&mut err);
        }
        let _ = tx.send((status, err));
    });
    let (status, stderr) = rx
        .recv_timeout(std::time::Duration::from_secs(20))
        .expect("wconfd kept running after its log failed");
    let status = status.unwrap();
    assert_eq!(status.code(), Some(3), "exit status {status}: {stderr}");
    assert!(stderr.contains("fail-stop"), "{stderr}");
    assert!(acked.len() > 2, "the disk failed too early: {acked:?}");

    let d = start(dir.path(), &args);
    let cfg = d.client.config().unwrap().config;
    for key in &acked {
        assert!(cfg.get(key).is_some(), "{key} was acknowledged but is lost");
    }
}

/// One HTTP/1.1 exchange over a Unix socket, written by hand: the status
/// code and the body.
pub(crate) fn unix_http(path: &Path, request: &str) -> (u16, Value) {
    use std::io::Write;
    let mut stream = std::os::unix::net::UnixStream::connect(path).expect("connect the socket");
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {response}"));
    let (head, body) = response.split_once("\r\n\r\n").expect("head and body");
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        // Chunks: a hex size line, that many bytes and CRLF, until size 0.
        let mut data = String::new();
        let mut rest = body;
        while let Some((size, after)) = rest.split_once("\r\n") {
            let size = usize::from_str_radix(size, 16).expect("a chunk size");
            if size == 0 {
                break;
            }
            data.push_str(&after[..size]);
            rest = &after[size + 2..];
        }
        data
    } else {
        body.to_string()
    };
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

#[test]
fn the_unix_socket_is_owner_only_and_serves_the_api() {
    // Invariant: with --socket, the socket is created with mode 0600 and
    // answers API requests like the TCP listener (same daemon, same state).
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("wconfd.sock");
    let data = dir.path().join("data");
    let d = start(&data, &["--socket", sock.to_str().unwrap()]);
    let meta = std::fs::symlink_metadata(&sock).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);

    let (status, body) = unix_http(
        &sock,
        "GET /v1/status HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["epoch"], json!(d.epoch), "{body}");

    let json = r#"{"name": "over-unix", "ttl_ms": 60000}"#;
    let request = format!(
        "POST /v1/sessions HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{json}",
        json.len()
    );
    let (status, body) = unix_http(&sock, &request);
    assert_eq!(status, 201, "{body}");
    let id = body["session"].as_str().expect("a session id").to_string();
    let listed = d.client.sessions().unwrap();
    assert!(
        format!("{listed:?}").contains(&id),
        "session made over the socket not seen over TCP"
    );
}

#[test]
fn lock_order_refuses_an_out_of_order_acquire_with_409() {
    // Invariant: with --lock-order, acquiring a lock of a lower level while
    // holding one of a higher level is refused with 409 and a message that
    // names both locks, and changes nothing; in-order acquires are granted.
    let dir = tempfile::tempdir().unwrap();
    let d = start(dir.path(), &["--lock-order", "cluster,node,instance"]);
    let c = &d.client;
    let s = session(c);
    for name in ["cluster/c1", "node/n1", "instance/i1"] {
        let g = c
            .acquire(&acquire(&s, vec![lock(name, Mode::Exclusive)], None))
            .unwrap();
        assert!(g.granted, "{name}: {g:?}");
    }
    let t = session(c);
    c.acquire(&acquire(
        &t,
        vec![lock("instance/i2", Mode::Exclusive)],
        None,
    ))
    .unwrap();
    let before = c.status().unwrap().applied_lsn;
    let err = c
        .acquire(&acquire(&t, vec![lock("node/n2", Mode::Shared)], None))
        .expect_err("an out-of-order acquire was accepted");
    match &err {
        ClientError::Api {
            status, message, ..
        } => {
            assert_eq!(*status, 409, "{err}");
            assert!(
                message.contains("node/n2") && message.contains("instance/i2"),
                "the message does not name the locks: {err}"
            );
        }
        other => panic!("{other}"),
    }
    assert_eq!(c.status().unwrap().applied_lsn, before, "state changed");
    assert!(!c
        .locks()
        .unwrap()
        .holders
        .iter()
        .any(|h| h.name == "node/n2"));
}

#[test]
fn large_reads_stream_whole_and_abandoned_ones_hold_up_nothing() {
    // Invariant: a whole-document read and a read of a value over the
    // inline limit come back streamed (chunked) and whole: they parse and
    // show every change. Readers that hang up mid-body, more of them than
    // there are encoders, do not hold up the next read.
    use std::io::Write;
    use wconf::actors::stream::ENCODERS_MAX;
    let dir = tempfile::tempdir().unwrap();
    let d = start(dir.path(), &[]);
    let text = "x".repeat(1 << 20);
    d.client
        .txn(&txn(
            json!([{"op": "add", "path": "/big", "value": {}}]),
            None,
        ))
        .unwrap();
    for i in 0..12 {
        let path = format!("/big/k{i}");
        let patch = json!([{"op": "add", "path": path, "value": text}]);
        d.client.txn(&txn(patch, None)).unwrap();
    }
    let whole = format!("{}/v1/config", d.base);
    let value = format!("{}/v1/config/big", d.base);
    for (url, field) in [(&whole, "/config/big"), (&value, "/value")] {
        let r = ureq::get(url).call().unwrap();
        assert_eq!(r.header("transfer-encoding"), Some("chunked"), "{url}");
        let body: Value = serde_json::from_reader(r.into_reader()).unwrap();
        let big = body.pointer(field).and_then(Value::as_object).unwrap();
        assert_eq!(big.len(), 12, "{url}");
        assert!(big.values().all(|v| v.as_str() == Some(text.as_str())));
    }

    let addr = d.base.trim_start_matches("http://");
    for _ in 0..ENCODERS_MAX + 2 {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.write_all(b"GET /v1/config HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .unwrap();
        let mut head = [0u8; 512];
        assert!(s.read(&mut head).unwrap() > 0);
    }
    let agent = ureq::AgentBuilder::new()
        .timeout(std::time::Duration::from_secs(20))
        .build();
    let body: Value = agent.get(&whole).call().unwrap().into_json().unwrap();
    assert_eq!(body["config"]["big"].as_object().unwrap().len(), 12);
}
