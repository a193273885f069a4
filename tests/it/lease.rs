//! Lease expiry against the real `wconfd` (issue 5, item 2): a session
//! that stops its keepalives loses its locks and its waits after its TTL,
//! the waiters behind it are granted in priority then FIFO order, a restart
//! gives every lease a full grace period, and a write from an expired
//! session changes nothing.
//!
//! Waiting for a TTL to pass is what is under test, so those waits are
//! deadline-bounded polls; the only lower bounds checked on time are that
//! a lease never ends *before* its TTL, which a slow machine cannot break.

use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::json;
use wconf::api::types::*;
use wconf::client::{Client, ClientError};
use wconf::state::sessions::TTL_MS_MIN;

use crate::daemon::{acquire, eventually, lock, start, write};

/// How long the waiting acquires of these tests may wait.
const WAIT_MS: u64 = 30_000;

fn open(c: &Client, name: &str, ttl_ms: u64) -> String {
    c.create_session(Some(name), ttl_ms).unwrap().session
}

fn holders(c: &Client, name: &str) -> Vec<String> {
    c.locks()
        .unwrap()
        .holders
        .into_iter()
        .filter(|h| h.name == name)
        .map(|h| h.session)
        .collect()
}

fn waiters(c: &Client) -> Vec<String> {
    c.locks()
        .unwrap()
        .waiters
        .into_iter()
        .map(|w| w.session)
        .collect()
}

fn is_open(c: &Client, session: &str) -> bool {
    c.sessions()
        .unwrap()
        .sessions
        .iter()
        .any(|s| s.session == session)
}

/// Starts a waiting exclusive acquire of `name` on its own connection.
fn wait_for(
    base: &str,
    session: &str,
    name: &str,
    priority: i64,
) -> JoinHandle<Result<AcquireResponse, ClientError>> {
    let c = Client::new(base.to_string());
    let req = AcquireRequest {
        wait_ms: WAIT_MS,
        priority,
        ..acquire(session, vec![lock(name, Mode::Exclusive)], None)
    };
    std::thread::spawn(move || c.acquire(&req))
}

fn release(c: &Client, session: &str, name: &str) {
    c.release(&ReleaseRequest {
        session: session.into(),
        locks: Some(vec![name.into()]),
        downgrade: None,
        request_id: None,
    })
    .unwrap();
}

#[test]
fn an_idle_session_loses_its_locks_and_waits_and_waiters_go_by_priority_then_fifo() {
    // Invariant: a session that sends no keepalive is closed no sooner than
    // its TTL and then (within the deadline) by a logged record: its lock
    // goes to the waiters, the most urgent first and equals in arrival
    // order, and its own waiting acquire fails with session_closed.
    let dir = tempfile::tempdir().unwrap();
    let d = start(dir.path(), &[]);
    let c = &d.client;
    let before_open = Instant::now();
    let idle = open(c, "idle", TTL_MS_MIN);
    let g = c
        .acquire(&acquire(&idle, vec![lock("x", Mode::Exclusive)], None))
        .unwrap();
    assert!(g.granted);
    assert_eq!(holders(c, "x"), vec![idle.clone()]);

    // The idle session also waits for a lock someone else holds.
    let other = open(c, "other", 60_000);
    c.acquire(&acquire(&other, vec![lock("y", Mode::Exclusive)], None))
        .unwrap();
    let idle_wait = wait_for(&d.base, &idle, "y", 0);
    eventually("idle's wait", || waiters(c).len() == 1);

    // B then D at priority 0, then C more urgent: the queue is C, B, D.
    let [b, cc, dd] = ["b", "c", "d"].map(|n| open(c, n, 60_000));
    let wait_b = wait_for(&d.base, &b, "x", 0);
    eventually("b's wait", || waiters(c).len() == 2);
    let wait_d = wait_for(&d.base, &dd, "x", 0);
    eventually("d's wait", || waiters(c).len() == 3);
    let wait_c = wait_for(&d.base, &cc, "x", -5);
    eventually("c's wait", || waiters(c).len() == 4);
    let queue: Vec<String> = waiters(c).into_iter().filter(|w| *w != idle).collect();
    assert_eq!(queue, [cc.clone(), b.clone(), dd.clone()]);

    eventually("the idle session to expire", || !is_open(c, &idle));
    assert!(
        before_open.elapsed() >= Duration::from_millis(TTL_MS_MIN),
        "the lease ended before its TTL"
    );
    let err = idle_wait.join().unwrap().unwrap_err();
    assert_eq!(err.status(), Some(409), "{err}");
    assert!(err.to_string().contains("session_closed"), "{err}");

    let granted_c = wait_c.join().unwrap().unwrap();
    assert!(granted_c.granted);
    assert_eq!(holders(c, "x"), vec![cc.clone()]);
    assert_eq!(waiters(c), [b.clone(), dd.clone()]);
    release(c, &cc, "x");
    let granted_b = wait_b.join().unwrap().unwrap();
    assert_eq!(holders(c, "x"), vec![b.clone()]);
    assert_eq!(waiters(c), vec![dd.clone()]);
    release(c, &b, "x");
    let granted_d = wait_d.join().unwrap().unwrap();
    assert_eq!(holders(c, "x"), vec![dd.clone()]);
    let tokens = [granted_c.token, granted_b.token, granted_d.token].map(Option::unwrap);
    assert!(tokens[0] < tokens[1] && tokens[1] < tokens[2], "{tokens:?}");
    assert_eq!(holders(c, "y"), [other]);
}

#[test]
fn after_a_restart_every_lease_gets_a_full_ttl_of_grace() {
    // Invariant: sessions recovered from the log are not expired at start
    // even though more than their TTL of wall-clock time passed while the
    // daemon was down (leases run on the monotonic clock of the running
    // process, never on timestamps): one that keeps alive right after the
    // restart keeps its locks; one that does not expires only after a full
    // TTL from the restart.
    let ttl_keeper_ms = 2_000;
    let dir = tempfile::tempdir().unwrap();
    let d = start(dir.path(), &[]);
    let keeper = open(&d.client, "keeper", ttl_keeper_ms);
    let idle = open(&d.client, "idle", TTL_MS_MIN);
    for (s, name) in [(&keeper, "k"), (&idle, "i")] {
        let g = d
            .client
            .acquire(&acquire(s, vec![lock(name, Mode::Exclusive)], None))
            .unwrap();
        assert!(g.granted);
    }
    d.kill();
    // The daemon is down for longer than either TTL.
    let down = Instant::now();
    eventually("both TTLs to pass while the daemon is down", || {
        down.elapsed() > Duration::from_millis(ttl_keeper_ms + 500)
    });

    let before_start = Instant::now();
    let d = start(dir.path(), &[]);
    let c = &d.client;
    assert!(is_open(c, &keeper) && is_open(c, &idle));
    assert_eq!(holders(c, "k"), vec![keeper.clone()]);
    assert_eq!(holders(c, "i"), vec![idle.clone()]);
    // The keeper keeps alive for longer than its TTL after the restart;
    // keepalives are paced at a tenth of the TTL.
    while before_start.elapsed() < Duration::from_millis(ttl_keeper_ms + 1_000) {
        let view = c.keepalive(&keeper).unwrap();
        assert!(view.lease_remaining_ms.is_some_and(|ms| ms > 0));
        assert_eq!(holders(c, "k"), vec![keeper.clone()]);
        std::thread::sleep(Duration::from_millis(ttl_keeper_ms / 10));
    }
    // The idle one got its grace, then expired.
    eventually("the idle session to expire", || !is_open(c, &idle));
    assert!(before_start.elapsed() >= Duration::from_millis(TTL_MS_MIN));
    assert!(holders(c, "i").is_empty());
    assert_eq!(holders(c, "k"), [keeper]);
}

#[test]
fn a_write_from_an_expired_session_answers_lock_was_held_false_and_changes_nothing() {
    // Invariant (regression, issue 5): a session whose lease ran out holds
    // nothing, so its write answers {applied: false, lock_was_held: false}
    // (it used to be 404 unknown_session) and logs nothing; before that,
    // every write of the session applied, and none applied after the first
    // refusal, even in the moments between the deadline and the next
    // expiry tick.
    let dir = tempfile::tempdir().unwrap();
    let d = start(dir.path(), &[]);
    let c = &d.client;
    let s = open(c, "writer", TTL_MS_MIN);
    let g = c
        .acquire(&acquire(&s, vec![lock("config", Mode::Exclusive)], None))
        .unwrap();
    assert!(g.granted);
    let mut applied = 0u64;
    let mut refused = None;
    eventually("the writer's lease to run out", || {
        let patch = json!([{"op": "add", "path": format!("/w{applied}"), "value": applied}]);
        let w = c.write(&write(&s, patch, false, None)).unwrap();
        if w.applied {
            assert!(w.lock_was_held);
            applied += 1;
            false
        } else {
            refused = Some(w);
            true
        }
    });
    let refused = refused.unwrap();
    assert!(!refused.lock_was_held, "{refused:?}");
    assert_eq!((refused.serial, refused.lsn), (None, None));
    assert!(applied > 0);

    let serial = c.config().unwrap().serial;
    let lsn = c.status().unwrap().applied_lsn;
    let again = c
        .write(&write(
            &s,
            json!([{"op": "add", "path": "/late", "value": 1}]),
            true,
            None,
        ))
        .unwrap();
    assert_eq!(again, refused);
    assert_eq!(c.config().unwrap().serial, serial);
    assert_eq!(c.status().unwrap().applied_lsn, lsn);
    assert!(c.config_value("/late").is_err());
    assert!(holders(c, "config").is_empty());
    assert!(!is_open(c, &s));
    // Every applied write is there, and nothing after.
    let config = c.config().unwrap().config;
    assert_eq!(config.as_object().unwrap().len() as u64, applied);
}
