//! Fair queueing in the real `wconfd`: one-shot transactions wait for
//! `config` in the same priority+FIFO queue as sessions, opportunistic
//! acquires may wait for their minimum, and `GET /v1/config` reports the
//! LSN of the last config change across restarts.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::Duration;

use serde_json::json;
use wconf::api::types::*;
use wconf::client::Client;

/// A running `wconfd`, killed on drop (SIGKILL: no shutdown code runs).
struct Daemon {
    child: Child,
    base: String,
    client: Client,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `wconfd` on `dir` and returns once it printed its ready line,
/// retrying when the free port picked was taken in between.
fn start(dir: &Path) -> Daemon {
    for _ in 0..5 {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("pick a port")
            .port();
        let mut child = Command::new(env!("CARGO_BIN_EXE_wconfd"))
            .arg("--data-dir")
            .arg(dir)
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn wconfd");
        let mut line = String::new();
        let _ = BufReader::new(child.stdout.take().expect("piped")).read_line(&mut line);
        if line.starts_with("wconfd ready on ") {
            let base = format!("http://127.0.0.1:{port}");
            let client = Client::new(base.clone());
            return Daemon {
                child,
                base,
                client,
            };
        }
        let _ = child.kill();
        let _ = child.wait();
    }
    panic!("wconfd did not start");
}

fn session(c: &Client) -> String {
    c.create_session(Some("fair"), 60_000).unwrap().session
}

fn spec(name: &str, mode: Mode) -> LockSpec {
    LockSpec {
        name: name.into(),
        mode,
    }
}

fn acquire(
    session: &str,
    locks: Vec<LockSpec>,
    wait_ms: u64,
    min: Option<usize>,
) -> AcquireRequest {
    AcquireRequest {
        session: session.into(),
        locks,
        wait_ms,
        priority: 0,
        min,
        request_id: None,
    }
}

fn release_all(session: &str) -> ReleaseRequest {
    ReleaseRequest {
        session: session.into(),
        locks: None,
        downgrade: None,
        request_id: None,
    }
}

/// Polls `GET /v1/locks` until `n` requests wait: the daemon's own view,
/// not a guess at how long a request takes to arrive.
fn await_waiters(c: &Client, n: usize) -> LocksView {
    for _ in 0..2_000 {
        let view = c.locks().unwrap();
        if view.waiters.len() >= n {
            return view;
        }
        thread::sleep(Duration::from_millis(5));
    }
    panic!("{n} waiters never showed up");
}

#[test]
fn waiting_txn_is_not_overtaken_and_runs_as_one_record() {
    // Invariant (issue 3, "txn": config taken in FIFO order with everyone
    // else, one record): a waiting transaction blocks later shared
    // requests for `config`, shows as a waiter, and when the holder
    // releases it runs as exactly one record right after the release.
    let dir = tempfile::tempdir().unwrap();
    let d = start(dir.path());
    let (holder, late) = (session(&d.client), session(&d.client));
    let got = d
        .client
        .acquire(&acquire(
            &holder,
            vec![spec("config", Mode::Shared)],
            0,
            None,
        ))
        .unwrap();
    assert!(got.granted);

    let base = d.base.clone();
    let txn = thread::spawn(move || {
        Client::new(base).txn(&TxnRequest {
            patch: json!([{"op": "add", "path": "/job", "value": 1}]),
            if_serial: None,
            wait_ms: 30_000,
            request_id: Some("t1".into()),
        })
    });
    let view = await_waiters(&d.client, 1);
    assert_eq!(view.waiters[0].session, "txn");
    assert_eq!(view.waiters[0].locks, vec![spec("config", Mode::Exclusive)]);

    // Shared with the holder, but the transaction waits ahead of it.
    let shared = d
        .client
        .acquire(&acquire(&late, vec![spec("config", Mode::Shared)], 0, None))
        .unwrap();
    assert!(!shared.granted, "a later shared request overtook the txn");
    assert_eq!(shared.blockers, Some(vec!["txn".to_string()]));
    // A try-only transaction is refused while another waits.
    let busy = d.client.txn(&TxnRequest {
        patch: json!([]),
        if_serial: None,
        wait_ms: 0,
        request_id: None,
    });
    assert_eq!(busy.unwrap_err().status(), Some(409));

    let released = d.client.release(&release_all(&holder)).unwrap();
    let done = txn.join().unwrap().unwrap();
    assert!(done.applied);
    assert_eq!(done.lsn, released.lsn + 1, "no Grant or Release for a txn");
    assert_eq!(d.client.status().unwrap().applied_lsn, done.lsn);
    assert!(d.client.locks().unwrap().holders.is_empty());
    assert_eq!(d.client.config().unwrap().lsn, done.lsn);
}

#[test]
fn txn_wait_times_out_and_leaves_the_queue() {
    // Invariant: a transaction whose wait runs out answers 409 and stops
    // blocking: the request behind it is then granted.
    let dir = tempfile::tempdir().unwrap();
    let d = start(dir.path());
    let (holder, late) = (session(&d.client), session(&d.client));
    let x = vec![spec("config", Mode::Exclusive)];
    assert!(
        d.client
            .acquire(&acquire(&holder, x, 0, None))
            .unwrap()
            .granted
    );
    let busy = d.client.txn(&TxnRequest {
        patch: json!([]),
        if_serial: None,
        wait_ms: 100,
        request_id: None,
    });
    assert_eq!(busy.unwrap_err().status(), Some(409));
    assert!(d.client.locks().unwrap().waiters.is_empty());
    d.client.release(&release_all(&holder)).unwrap();
    let s = vec![spec("config", Mode::Shared)];
    assert!(
        d.client
            .acquire(&acquire(&late, s, 0, None))
            .unwrap()
            .granted
    );
}

#[test]
fn opportunistic_acquire_waits_for_its_minimum() {
    // Invariant (WConfD's guardedOpportunisticLockUnion, with waiting):
    // below `min`, nothing is taken; once `min` can be taken, whichever
    // candidates are free then are granted; on timeout, granted:false with
    // the blockers.
    let dir = tempfile::tempdir().unwrap();
    let d = start(dir.path());
    let (holder, opp, other) = (session(&d.client), session(&d.client), session(&d.client));
    let held = vec![spec("a", Mode::Exclusive), spec("b", Mode::Exclusive)];
    assert!(
        d.client
            .acquire(&acquire(&holder, held, 0, None))
            .unwrap()
            .granted
    );

    let timed_out = d
        .client
        .acquire(&acquire(
            &other,
            vec![spec("b", Mode::Shared)],
            100,
            Some(1),
        ))
        .unwrap();
    assert!(!timed_out.granted);
    assert_eq!(timed_out.blockers, Some(vec![holder.clone()]));

    let base = d.base.clone();
    let candidates = vec![
        spec("a", Mode::Exclusive),
        spec("b", Mode::Exclusive),
        spec("c", Mode::Exclusive),
    ];
    let opp2 = opp.clone();
    let waiting = thread::spawn(move || {
        Client::new(base).acquire(&acquire(&opp2, candidates, 30_000, Some(2)))
    });
    await_waiters(&d.client, 1);
    let release_a = ReleaseRequest {
        locks: Some(vec!["a".into()]),
        ..release_all(&holder)
    };
    d.client.release(&release_a).unwrap();
    let got = waiting.join().unwrap().unwrap();
    assert!(got.granted);
    assert_eq!(
        got.locks,
        Some(vec![spec("a", Mode::Exclusive), spec("c", Mode::Exclusive)])
    );
}

#[test]
fn config_lsn_is_the_last_change_across_restarts() {
    // Invariant: GET /v1/config reports the LSN of the record that last
    // changed the config, also after a restart wrote a newer epoch record.
    let dir = tempfile::tempdir().unwrap();
    let d = start(dir.path());
    let done = d
        .client
        .txn(&TxnRequest {
            patch: json!([{"op": "add", "path": "/k", "value": 1}]),
            if_serial: None,
            wait_ms: 0,
            request_id: None,
        })
        .unwrap();
    drop(d);
    let d = start(dir.path());
    let view = d.client.config().unwrap();
    assert!(d.client.status().unwrap().applied_lsn > done.lsn);
    assert_eq!((view.serial, view.lsn), (done.serial, done.lsn));
}
