//! The daemon's guarantees, each tested against the real `wconfd` binary:
//! started on a temporary directory, killed with SIGKILL, restarted.

use std::io::{BufRead, BufReader, Read};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};
use wconf::api::types::*;
use wconf::client::{Client, ClientError};

/// Attempts to start when the free port picked was taken in between.
const START_ATTEMPTS: usize = 5;

struct Daemon {
    child: Child,
    client: Client,
    base: String,
    epoch: u64,
}

/// A port nobody listens on right now (another process may still take it
/// before the daemon binds; `start` retries then).
fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("local addr").port()
}

/// Starts `wconfd` on `dir` and returns once it printed its ready line.
fn start(dir: &Path, extra: &[&str]) -> Daemon {
    let mut last = String::new();
    for _ in 0..START_ATTEMPTS {
        let port = free_port();
        let mut child = Command::new(env!("CARGO_BIN_EXE_wconfd"))
            .arg("--data-dir")
            .arg(dir)
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn wconfd");
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
    fn kill(mut self) {
        let pid = Pid::from_raw(self.child.id() as i32);
        kill(pid, Signal::SIGKILL).expect("SIGKILL wconfd");
        self.child.wait().expect("reap wconfd");
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

fn session(c: &Client) -> String {
    c.create_session(Some("test"), 60_000)
        .expect("create session")
        .session
}

fn lock(name: &str, mode: Mode) -> LockSpec {
    LockSpec {
        name: name.into(),
        mode,
    }
}

fn acquire(session: &str, locks: Vec<LockSpec>, request_id: Option<&str>) -> AcquireRequest {
    AcquireRequest {
        session: session.into(),
        locks,
        wait_ms: 0,
        priority: 0,
        min: None,
        request_id: request_id.map(str::to_string),
    }
}

fn write(session: &str, patch: Value, release: bool, request_id: Option<&str>) -> WriteRequest {
    WriteRequest {
        session: session.into(),
        patch,
        release,
        request_id: request_id.map(str::to_string),
    }
}

fn config_holder(c: &Client) -> Option<HolderView> {
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
            }
            acked
        });
        // Not synchronisation: a varying moment for the kill to land.
        std::thread::sleep(std::time::Duration::from_millis(40 + round * 23));
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
    let keepalive = c.keepalive(unknown).unwrap_err();
    assert_eq!(keepalive.status(), Some(404), "{keepalive}");
    let missing = c.config_value("/no/such").unwrap_err();
    assert_eq!(missing.status(), Some(404), "{missing}");
    assert_eq!(c.status().unwrap().applied_lsn, before);
}
