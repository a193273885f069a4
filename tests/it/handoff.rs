//! The lock hand-off (issue 7, early lock release done safely): the grant a
//! release allows is applied in memory in the same step as the release and
//! queued for the log in one piece with it, so both share one group commit,
//! and no client hears of either before both are durable. The daemon runs in
//! this process on `MemStorage`, whose syncs a test can hold and whose crash
//! images show what a power loss at that instant would leave.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use wconf::api::types::*;
use wconf::client::{Client, ClientError};
use wconf::server::DaemonOptions;
use wconf::state::{State, CONFIG_LOCK};
use wconf::wal::storage::{CrashMode, MemStorage};

use super::power_loss::{crash_and_recover, start_with};

/// No test here rolls a segment (a roll syncs too), and a crash image of
/// one stays cheap to copy.
const SEGMENT_BYTES: u64 = 1 << 20;
/// How long a poll or an answer that must come may take.
const PATIENCE: Duration = Duration::from_secs(20);
/// How long a test listens for an answer that must NOT come while a sync is
/// held. Not synchronisation: a correct daemon passes whatever this is; one
/// that answers before the sync answers at once and is caught.
const HELD_PATIENCE: Duration = Duration::from_millis(300);
/// Every way a power loss can treat the unsynced batch.
const CRASH_MODES: [CrashMode; 8] = [
    CrashMode::DropUnsynced,
    CrashMode::KeepUnsyncedWrites,
    CrashMode::KeepEverything,
    CrashMode::Torn { seed: 1 },
    CrashMode::Torn { seed: 2 },
    CrashMode::Torn { seed: 3 },
    CrashMode::Mix { seed: 1 },
    CrashMode::Mix { seed: 2 },
];

fn options() -> DaemonOptions {
    DaemonOptions {
        data_dir: "/wal".into(),
        segment_bytes: SEGMENT_BYTES,
        ..DaemonOptions::default()
    }
}

type Answer<T> = Receiver<Result<T, ClientError>>;

/// Asks for `config` in `mode`, waiting up to a minute, on its own thread.
fn acquire_waiting(
    base: &str,
    session: &str,
    mode: Mode,
    request_id: &str,
) -> Answer<AcquireResponse> {
    let (tx, rx) = mpsc::channel();
    let c = Client::new(base);
    let request = AcquireRequest {
        session: session.into(),
        locks: vec![LockSpec {
            name: CONFIG_LOCK.into(),
            mode,
        }],
        wait_ms: 60_000,
        priority: 0,
        min: None,
        request_id: Some(request_id.into()),
    };
    std::thread::spawn(move || {
        let _ = tx.send(c.acquire(&request));
    });
    rx
}

/// Writes `/handoff` = `value` with `session`'s `config` lock, releasing
/// it, on its own thread.
fn write_releasing(base: &str, session: &str, value: u64) -> Answer<WriteResponse> {
    let (tx, rx) = mpsc::channel();
    let c = Client::new(base);
    let request = WriteRequest {
        session: session.into(),
        patch: json!([{"op": "add", "path": "/handoff", "value": value}]),
        release: true,
        request_id: Some(format!("write-{value}")),
    };
    std::thread::spawn(move || {
        let _ = tx.send(c.write(&request));
    });
    rx
}

/// Polls the lock table until every one of `sessions` waits.
fn until_waiting(c: &Client, sessions: &[&str]) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let locks = c.locks().expect("lock table");
        let waiting: BTreeSet<&str> = locks.waiters.iter().map(|w| w.session.as_str()).collect();
        if sessions.iter().all(|s| waiting.contains(s)) {
            return;
        }
        assert!(Instant::now() < deadline, "{sessions:?} never waited");
        std::thread::yield_now();
    }
}

/// The answer that must come.
fn answered<T: std::fmt::Debug>(rx: &Answer<T>, what: &str) -> T {
    rx.recv_timeout(PATIENCE)
        .unwrap_or_else(|e| panic!("{what}: no answer ({e})"))
        .unwrap_or_else(|e| panic!("{what}: {e}"))
}

/// Fails if `rx`'s answer arrives within `patience`. A test gives the
/// first answer it listens for [`HELD_PATIENCE`] and the others none: they
/// would have been due at the same moment.
fn not_yet<T>(rx: &Answer<T>, patience: Duration, what: &str) {
    assert!(
        matches!(rx.recv_timeout(patience), Err(RecvTimeoutError::Timeout)),
        "{what} was answered while its sync was held"
    );
}

/// What a recovered state says about the hand-off: who holds `config`
/// (session → token), which sessions exist, and `/handoff`.
#[derive(Debug, Clone, PartialEq)]
struct Image {
    holders: BTreeMap<String, u64>,
    sessions: BTreeSet<String>,
    handoff: Value,
}

impl Image {
    fn of(state: &State) -> Image {
        Image {
            holders: state
                .locks()
                .holders_of(CONFIG_LOCK)
                .into_iter()
                .flatten()
                .map(|(s, h)| (s.to_string(), h.token))
                .collect(),
            sessions: state
                .sessions()
                .iter()
                .map(|(s, _)| s.to_string())
                .collect(),
            handoff: state.config().doc().to_value()["handoff"].clone(),
        }
    }

    fn holder_sessions(&self) -> BTreeSet<&str> {
        self.holders.keys().map(String::as_str).collect()
    }
}

/// Power loss now, in every mode: each recovered image must be `before` or
/// `after` (judged by `is_after`, as the new tokens are not known yet), and
/// dropping unsynced writes must give `before`, keeping them `after`.
fn crash_images(mem: &MemStorage, before: &Image, is_after: impl Fn(&Image) -> bool) {
    for mode in CRASH_MODES {
        let image = Image::of(&crash_and_recover(mem, mode, &options()));
        let after = is_after(&image);
        assert!(
            after || &image == before,
            "power loss ({mode:?}) recovered a state that is neither before nor after the hand-off: {image:?}"
        );
        match mode {
            CrashMode::DropUnsynced => assert!(!after, "{mode:?} kept the unsynced hand-off"),
            CrashMode::KeepUnsyncedWrites | CrashMode::KeepEverything => {
                assert!(after, "{mode:?} lost the written hand-off")
            }
            CrashMode::Torn { .. } | CrashMode::Mix { .. } => {}
        }
    }
}

/// Power loss now, in every mode, recovers exactly `image`.
fn crash_images_all(mem: &MemStorage, image: &Image, what: &str) {
    for mode in CRASH_MODES {
        let recovered = Image::of(&crash_and_recover(mem, mode, &options()));
        assert_eq!(
            &recovered, image,
            "power loss ({mode:?}) right after {what}"
        );
    }
}

#[test]
fn a_hand_off_of_config_costs_one_sync() {
    // Invariant: handing `config` from a holder's write-with-release to the
    // session waiting for it costs exactly one sync: the write's record and
    // the grant's record share one group commit, and both answers come after
    // it. Counted (MemStorage::sync_count), not timed.
    const HAND_OFFS: usize = 20;
    let mem = MemStorage::new();
    let (server, c) = start_with(&mem, &options());
    let base = format!("http://{}", server.addr());
    let sessions = [
        c.create_session(Some("a"), 600_000).unwrap().session,
        c.create_session(Some("b"), 600_000).unwrap().session,
    ];
    let first = acquire_waiting(&base, &sessions[0], Mode::Exclusive, "acq-first");
    let mut token = answered(&first, "first acquire").token.expect("granted");
    for i in 0..HAND_OFFS {
        let (holder, waiter) = (&sessions[i % 2], &sessions[(i + 1) % 2]);
        let grant = acquire_waiting(&base, waiter, Mode::Exclusive, &format!("acq-{i}"));
        until_waiting(&c, &[waiter]);
        let syncs = mem.sync_count();
        let w = answered(&write_releasing(&base, holder, i as u64), "write");
        assert!(w.applied, "hand-off {i}: {w:?}");
        let g = answered(&grant, "grant");
        let next = g
            .token
            .unwrap_or_else(|| panic!("hand-off {i}: not granted: {g:?}"));
        assert!(
            next > token,
            "hand-off {i}: fencing token {next} after {token}"
        );
        token = next;
        assert_eq!(
            mem.sync_count() - syncs,
            1,
            "hand-off {i}: syncs between the write and both answers"
        );
    }
    assert!(server.fail_stopped().is_none());
    server.stop().unwrap();
}

#[test]
fn no_client_hears_of_a_hand_off_a_crash_takes_back() {
    // Invariant: every answer any client received is reflected in the state
    // a power loss at any instant recovers, whatever it keeps of unsynced
    // writes. While the sync of a write-with-release that lets in waiters is
    // held, neither the writer nor those waiters are answered, and a
    // recovered state has the write exactly when it has the grants (one
    // batch; the log is a prefix, so a durable grant implies a durable
    // release). Once answered, every recovered state shows the write and
    // each session holding what it was told, with the tokens it was told.
    // Covers shared waiters granted together, an exclusive one behind them,
    // and a hand-off from the last of several shared holders.
    let mem = MemStorage::new();
    let (server, c) = start_with(&mem, &options());
    let base = format!("http://{}", server.addr());
    let [a, b, s, x] =
        ["a", "b", "s", "x"].map(|n| c.create_session(Some(n), 600_000).unwrap().session);
    let ta = answered(&acquire_waiting(&base, &a, Mode::Exclusive, "a"), "a")
        .token
        .expect("granted");
    // b and s share `config` after a; x wants it alone, after them.
    let grant_b = acquire_waiting(&base, &b, Mode::Shared, "b");
    until_waiting(&c, &[&b]);
    let grant_s = acquire_waiting(&base, &s, Mode::Shared, "s");
    until_waiting(&c, &[&b, &s]);
    let grant_x = acquire_waiting(&base, &x, Mode::Exclusive, "x");
    until_waiting(&c, &[&b, &s, &x]);
    let all: BTreeSet<String> = [&a, &b, &s, &x].into_iter().cloned().collect();
    let before = Image {
        holders: [(a.clone(), ta)].into(),
        sessions: all.clone(),
        handoff: Value::Null,
    };
    crash_images_all(&mem, &before, "a's grant");

    // 1. a writes and releases; b and s are granted in the same step.
    let pause = mem.pause_syncs();
    let write = write_releasing(&base, &a, 1);
    mem.wait_for_paused_syncs(1);
    let shared = BTreeSet::from([b.as_str(), s.as_str()]);
    crash_images(&mem, &before, |i| {
        i.holder_sessions() == shared && i.handoff == json!(1) && i.sessions == all
    });
    not_yet(&write, HELD_PATIENCE, "a's write");
    not_yet(&grant_b, Duration::ZERO, "b's grant");
    not_yet(&grant_s, Duration::ZERO, "s's grant");
    not_yet(&grant_x, Duration::ZERO, "x's grant");
    drop(pause);
    assert!(answered(&write, "a's write").applied);
    let tb = answered(&grant_b, "b's grant").token.expect("b granted");
    let ts = answered(&grant_s, "s's grant").token.expect("s granted");
    assert!(tb > ta && ts > ta, "fencing tokens {tb}, {ts} after {ta}");
    let both = Image {
        holders: [(b.clone(), tb), (s.clone(), ts)].into(),
        sessions: all.clone(),
        handoff: json!(1),
    };
    crash_images_all(&mem, &both, "a's write and the shared grants");

    // 2. b lets go: s still holds `config` shared, so x still waits.
    let r = c
        .release(&ReleaseRequest {
            session: b.clone(),
            locks: Some(vec![CONFIG_LOCK.into()]),
            downgrade: None,
            request_id: None,
        })
        .unwrap();
    assert!(r.released);
    let only_s = Image {
        holders: [(s.clone(), ts)].into(),
        ..both
    };
    crash_images_all(&mem, &only_s, "b's release");
    assert!(
        grant_x.try_recv().is_err(),
        "x granted while s holds config"
    );

    // 3. s, the last shared holder, closes its session: x is granted.
    let pause = mem.pause_syncs();
    let close = {
        let (tx, rx) = mpsc::channel();
        let (c, s) = (Client::new(base.clone()), s.clone());
        std::thread::spawn(move || {
            let _ = tx.send(c.close_session(&s));
        });
        rx
    };
    mem.wait_for_paused_syncs(1);
    crash_images(&mem, &only_s, |i| {
        i.holder_sessions() == BTreeSet::from([x.as_str()]) && !i.sessions.contains(&s)
    });
    not_yet(&close, HELD_PATIENCE, "s's close");
    not_yet(&grant_x, Duration::ZERO, "x's grant");
    drop(pause);
    assert!(answered(&close, "s's close").released);
    let tx_ = answered(&grant_x, "x's grant").token.expect("x granted");
    assert!(tx_ > ts, "fencing token {tx_} after {ts}");
    let mut sessions = all;
    sessions.remove(&s);
    crash_images_all(
        &mem,
        &Image {
            holders: [(x.clone(), tx_)].into(),
            sessions,
            handoff: json!(1),
        },
        "s's close and x's grant",
    );
    assert!(server.fail_stopped().is_none());
    server.stop().unwrap();
}

#[test]
fn a_lease_that_runs_out_hands_config_over_in_one_durable_step() {
    // Invariant: when the holder's lease runs out, the record that closes
    // its session and the grant to the waiter become durable together, and
    // the waiter is not answered before: a power loss while that sync is
    // held recovers either the holder still in its session or the waiter
    // holding `config`, never the waiter told of a grant that is lost.
    let mem = MemStorage::new();
    let (server, c) = start_with(&mem, &options());
    let base = format!("http://{}", server.addr());
    let short = c
        .create_session(Some("short"), wconf::state::sessions::TTL_MS_MIN)
        .unwrap()
        .session;
    let waiter = c.create_session(Some("waiter"), 600_000).unwrap().session;
    let token = answered(
        &acquire_waiting(&base, &short, Mode::Exclusive, "short"),
        "short",
    )
    .token
    .expect("granted");
    let grant = acquire_waiting(&base, &waiter, Mode::Exclusive, "waiter");
    until_waiting(&c, &[&waiter]);
    // The lease runs TTL_MS_MIN from here; the expiry is the next sync.
    c.keepalive(&short).unwrap();
    let pause = mem.pause_syncs();
    let before = Image {
        holders: [(short.clone(), token)].into(),
        sessions: [short.clone(), waiter.clone()].into(),
        handoff: Value::Null,
    };
    mem.wait_for_paused_syncs(1);
    crash_images(&mem, &before, |i| {
        i.holder_sessions() == BTreeSet::from([waiter.as_str()])
            && i.sessions == BTreeSet::from([waiter.clone()])
    });
    not_yet(&grant, HELD_PATIENCE, "the waiter's grant");
    drop(pause);
    let t = answered(&grant, "the waiter's grant")
        .token
        .expect("granted");
    assert!(t > token, "fencing token {t} after {token}");
    crash_images_all(
        &mem,
        &Image {
            holders: [(waiter.clone(), t)].into(),
            sessions: [waiter.clone()].into(),
            handoff: Value::Null,
        },
        "the expiry and the grant",
    );
    assert!(server.fail_stopped().is_none());
    server.stop().unwrap();
}

#[test]
fn waits_end_at_their_own_deadlines_whatever_the_arrival_order() {
    // Invariant: with one deadline timer for all waiters, each waiting
    // acquire that is not granted is answered `granted: false` no sooner
    // than its `wait_ms`, a later waiter with a shorter wait is answered
    // while an earlier, longer one still waits, and a waiter granted before
    // its deadline is not timed out afterwards.
    let mem = MemStorage::new();
    let (server, c) = start_with(&mem, &options());
    let base = format!("http://{}", server.addr());
    let [holder, long, short, middle] = ["holder", "long", "short", "middle"]
        .map(|n| c.create_session(Some(n), 600_000).unwrap().session);
    answered(
        &acquire_waiting(&base, &holder, Mode::Exclusive, "holder"),
        "holder",
    );
    let waits = |session: &str, wait_ms: u64| {
        let (tx, rx) = mpsc::channel();
        let c = Client::new(base.clone());
        let request = AcquireRequest {
            session: session.into(),
            locks: vec![LockSpec {
                name: CONFIG_LOCK.into(),
                mode: Mode::Exclusive,
            }],
            wait_ms,
            priority: 0,
            min: None,
            request_id: None,
        };
        std::thread::spawn(move || {
            let started = Instant::now();
            let _ = tx.send((c.acquire(&request), started.elapsed()));
        });
        rx
    };
    let long_rx = waits(&long, 600_000);
    until_waiting(&c, &[&long]);
    let middle_rx = waits(&middle, 400);
    until_waiting(&c, &[&long, &middle]);
    let short_rx = waits(&short, 200);
    for (rx, wait_ms, who) in [(&short_rx, 200, "short"), (&middle_rx, 400, "middle")] {
        let (answer, waited) = rx.recv_timeout(PATIENCE).expect("timed out");
        let answer = answer.unwrap_or_else(|e| panic!("{who}: {e}"));
        assert!(!answer.granted, "{who}: {answer:?}");
        assert!(
            waited >= Duration::from_millis(wait_ms),
            "{who} gave up after {waited:?}, before its {wait_ms} ms"
        );
    }
    until_waiting(&c, &[&long]);
    assert_eq!(c.locks().unwrap().waiters.len(), 1, "only long still waits");
    let w = answered(&write_releasing(&base, &holder, 1), "holder's write");
    assert!(w.applied);
    let (granted, _) = long_rx.recv_timeout(PATIENCE).expect("long answered");
    assert!(granted.expect("long's acquire").granted);
    assert!(server.fail_stopped().is_none());
    server.stop().unwrap();
}
