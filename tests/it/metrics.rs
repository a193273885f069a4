//! `GET /metrics`: counters move by exactly what a client did, histograms
//! have the Prometheus bucket structure, labels stay bounded whatever the
//! paths, and a scrape answers while the lock actor cannot.

use std::collections::{BTreeMap, BTreeSet};
use std::net::TcpListener;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use serde_json::json;
use wconf::api::types::*;
use wconf::client::Client;
use wconf::server::{start_in_process, DaemonOptions};
use wconf::wal::storage::MemStorage;

use crate::daemon;

/// How long a poll of the scrape waits for a value before the test fails.
/// Polls end as soon as the value shows, so this only bounds a failure.
const POLL_DEADLINE: Duration = Duration::from_secs(20);

/// One sample line of a scrape: `name{label="value",...} value`.
#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// A series' labels other than `le`, in name order.
type Labels = Vec<(String, String)>;

/// A parsed scrape: its samples and the `# TYPE` of each family.
#[derive(Debug)]
struct Scrape {
    samples: Vec<Sample>,
    types: BTreeMap<String, String>,
}

/// Parses the subset of the text format the daemon writes: no escapes
/// inside label values (ours never contain `"`, `\` or newlines), no
/// timestamps.
fn parse(text: &str) -> Scrape {
    let mut samples = Vec::new();
    let mut types = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE line has a kind");
            types.insert(name.to_string(), kind.to_string());
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("sample has a value");
        let value = match value {
            "+Inf" => f64::INFINITY,
            v => v
                .parse()
                .unwrap_or_else(|_| panic!("bad value in {line:?}")),
        };
        let (name, labels) = match series.split_once('{') {
            None => (series, BTreeMap::new()),
            Some((name, rest)) => {
                let body = rest.strip_suffix('}').expect("labels end with }");
                let labels = body
                    .split("\",")
                    .map(|pair| {
                        let (k, v) = pair.split_once("=\"").expect("label is k=\"v\"");
                        (k.to_string(), v.trim_end_matches('"').to_string())
                    })
                    .collect();
                (name, labels)
            }
        };
        samples.push(Sample {
            name: name.to_string(),
            labels,
            value,
        });
    }
    Scrape { samples, types }
}

fn scrape(base: &str) -> Scrape {
    let response = ureq::get(&format!("{base}/metrics"))
        .timeout(Duration::from_secs(5))
        .call()
        .expect("GET /metrics answers 200");
    let content_type = response.header("Content-Type").unwrap_or_default();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    parse(&response.into_string().expect("scrape body is text"))
}

impl Scrape {
    /// The one sample of `name` whose labels include `labels`; 0 if none
    /// (a labelled series exists only once it moved).
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let found: Vec<&Sample> = self
            .samples
            .iter()
            .filter(|s| s.name == name)
            .filter(|s| {
                labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(v))
            })
            .collect();
        assert!(found.len() <= 1, "{name}{labels:?} matches {found:?}");
        found.first().map_or(0.0, |s| s.value)
    }

    fn label_values(&self, name: &str, label: &str) -> BTreeSet<String> {
        self.samples
            .iter()
            .filter(|s| s.name == name)
            .filter_map(|s| s.labels.get(label).cloned())
            .collect()
    }

    /// Checks every histogram: `le` bounds ascending and ending in +Inf,
    /// cumulative counts never falling, `+Inf` equal to `_count`, a `_sum`.
    fn check_histograms(&self) {
        for (family, kind) in &self.types {
            if kind != "histogram" {
                continue;
            }
            let bucket = format!("{family}_bucket");
            let mut series: BTreeMap<Labels, Vec<(f64, f64)>> = BTreeMap::new();
            for s in self.samples.iter().filter(|s| s.name == bucket) {
                let le = s.labels["le"].parse::<f64>().unwrap_or(f64::INFINITY);
                let key = s
                    .labels
                    .iter()
                    .filter(|(k, _)| *k != "le")
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                series.entry(key).or_default().push((le, s.value));
            }
            assert!(!series.is_empty(), "{family} has no buckets");
            for (key, buckets) in series {
                let labels: Vec<(&str, &str)> =
                    key.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                assert!(
                    buckets.windows(2).all(|w| w[0].0 < w[1].0),
                    "{family}{key:?} le order"
                );
                assert!(
                    buckets.windows(2).all(|w| w[0].1 <= w[1].1),
                    "{family}{key:?} cumulative"
                );
                let (last_le, last) = *buckets.last().unwrap();
                assert_eq!(last_le, f64::INFINITY, "{family}{key:?} ends in +Inf");
                assert_eq!(
                    last,
                    self.value(&format!("{family}_count"), &labels),
                    "{family}{key:?}"
                );
                assert!(
                    self.samples
                        .iter()
                        .any(|s| s.name == format!("{family}_sum")),
                    "{family} has no _sum"
                );
            }
        }
    }

    /// The finite `le` bounds of a histogram without labels.
    fn bounds(&self, family: &str) -> Vec<f64> {
        let bucket = format!("{family}_bucket");
        self.samples
            .iter()
            .filter(|s| s.name == bucket)
            .map(|s| s.labels["le"].parse::<f64>().unwrap_or(f64::INFINITY))
            .filter(|le| le.is_finite())
            .collect()
    }
}

/// Scrapes until `done` holds, failing after [`POLL_DEADLINE`].
fn poll(base: &str, what: &str, done: impl Fn(&Scrape) -> bool) -> Scrape {
    let deadline = Instant::now() + POLL_DEADLINE;
    loop {
        let s = scrape(base);
        if done(&s) {
            return s;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::yield_now();
    }
}

fn txn(c: &Client, i: usize) -> TxnResponse {
    c.txn(&TxnRequest {
        patch: json!([{"op": "add", "path": format!("/k{i}"), "value": i}]),
        if_serial: None,
        wait_ms: 0,
        request_id: None,
    })
    .expect("txn")
}

fn acquire(session: &str, name: &str, wait_ms: u64) -> AcquireRequest {
    AcquireRequest {
        session: session.to_string(),
        locks: vec![LockSpec {
            name: name.to_string(),
            mode: Mode::Exclusive,
        }],
        wait_ms,
        priority: 0,
        min: None,
        request_id: None,
    }
}

const TXN_ROUTE: &str = "/v1/config/txn";

#[test]
fn counters_move_by_exactly_what_the_client_did() {
    // Invariant: N transactions move requests_total{route=txn,POST,200}
    // and the txn latency count by exactly N, the WAL's records by at
    // least N (each txn is one record) in at most N syncs, and the durable
    // LSN with them; every histogram has Prometheus bucket structure, the
    // fsync buckets span 20 µs to 1 s, and the recovery gauges are set.
    const N: usize = 20;
    let dir = tempfile::tempdir().unwrap();
    let d = daemon::start(dir.path(), &[]);
    let before = scrape(&d.base);
    for i in 0..N {
        txn(&d.client, i);
    }
    let after = scrape(&d.base);
    let txn_ok = [("route", TXN_ROUTE), ("method", "POST"), ("status", "200")];
    let delta = |name: &str, labels: &[(&str, &str)]| {
        after.value(name, labels) - before.value(name, labels)
    };
    assert_eq!(delta("wconf_http_requests_total", &txn_ok), N as f64);
    assert_eq!(
        delta(
            "wconf_http_request_duration_seconds_count",
            &[("route", TXN_ROUTE)]
        ),
        N as f64
    );
    // The first scrape is counted by the time of the second, exactly once.
    let scrapes = [("route", "/metrics"), ("method", "GET"), ("status", "200")];
    assert_eq!(after.value("wconf_http_requests_total", &scrapes), 1.0);
    let records = delta("wconf_wal_records_total", &[]);
    let syncs = delta("wconf_wal_syncs_total", &[]);
    assert!(records >= N as f64, "{records} records for {N} txns");
    assert!((1.0..=N as f64).contains(&syncs), "{syncs} syncs");
    assert_eq!(delta("wconf_wal_sync_seconds_count", &[]), syncs);
    assert_eq!(delta("wconf_wal_records_per_sync_sum", &[]), records);
    assert!(delta("wconf_wal_durable_lsn", &[]) >= N as f64);
    assert!(after.value("wconf_wal_log_bytes", &[]) > 0.0);
    assert_eq!(after.value("wconf_recovery_records_replayed", &[]), 0.0);
    assert!(after.value("wconf_recovery_duration_seconds", &[]) > 0.0);
    after.check_histograms();
    let sync_bounds = after.bounds("wconf_wal_sync_seconds");
    assert_eq!(sync_bounds.first(), Some(&0.00002), "{sync_bounds:?}");
    assert_eq!(sync_bounds.last(), Some(&1.0), "{sync_bounds:?}");
    d.kill();

    // A restart replays every record of the first run, and says so.
    let d = daemon::start(dir.path(), &[]);
    let restarted = scrape(&d.base);
    let replayed = restarted.value("wconf_recovery_records_replayed", &[]);
    let durable = after.value("wconf_wal_durable_lsn", &[]);
    assert_eq!(
        replayed, durable,
        "replayed {replayed} of {durable} records"
    );
    d.kill();
}

#[test]
fn labels_stay_bounded_whatever_the_paths_and_lock_names() {
    // Invariant: the route label is the route pattern, never the raw path:
    // 100 lock names, 100 config paths, 100 unknown paths and 10 session
    // ids in paths add one series each, not one per value; lock and session
    // gauges and counters follow what the sessions did.
    const NAMES: usize = 100;
    let dir = tempfile::tempdir().unwrap();
    let d = daemon::start(dir.path(), &[]);
    let c = &d.client;
    let holder = c.create_session(Some("holder"), 60_000).unwrap().session;
    for i in 0..NAMES {
        let granted = c
            .acquire(&acquire(&holder, &format!("lock-{i}"), 0))
            .unwrap();
        assert!(granted.granted, "{granted:?}");
    }
    txn(c, 0);
    for i in 0..NAMES {
        // Misses and hits alike: a 404 from a route is still that route.
        let _ = c.config_value(&format!("/k{i}"));
        let _ = ureq::get(&format!("{}/no/such/path/{i}", d.base)).call();
    }
    let mut sessions = vec![holder.clone()];
    for i in 0..10 {
        let s = c
            .create_session(Some(&format!("s{i}")), 60_000)
            .unwrap()
            .session;
        c.keepalive(&s).unwrap();
        sessions.push(s);
    }
    let s = scrape(&d.base);
    let routes = s.label_values("wconf_http_requests_total", "route");
    let expected: BTreeSet<String> = [
        "/v1/sessions",
        "/v1/locks/acquire",
        "/v1/config/txn",
        "/v1/config/{path:.*}",
        "/v1/sessions/{id}/keepalive",
        "unmatched",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(routes, expected);
    assert_eq!(
        s.label_values("wconf_http_request_duration_seconds_count", "route"),
        expected
    );
    let acquires = [("route", "/v1/locks/acquire"), ("status", "200")];
    assert_eq!(
        s.value("wconf_http_requests_total", &acquires),
        NAMES as f64
    );
    let misses = [("route", "unmatched"), ("status", "404")];
    assert_eq!(s.value("wconf_http_requests_total", &misses), NAMES as f64);
    let reads = [("route", "/v1/config/{path:.*}"), ("status", "200")];
    assert_eq!(s.value("wconf_http_requests_total", &reads), 1.0);
    let series = s
        .samples
        .iter()
        .filter(|x| x.name == "wconf_http_requests_total")
        .count();
    assert!(series <= 8, "{series} request series");
    assert_eq!(s.value("wconf_locks_held", &[]), NAMES as f64);
    assert_eq!(s.value("wconf_sessions", &[]), 11.0);
    assert_eq!(s.value("wconf_lock_waiters", &[]), 0.0);
    d.kill();
}

#[test]
fn lock_waits_and_lease_expiry_are_counted() {
    // Invariant: an acquire that queues counts one wait; its grant adds one
    // observation of the wait time; a waiter shows in the waiters gauge
    // while it waits; a lease that runs out counts one expired session.
    let dir = tempfile::tempdir().unwrap();
    let d = daemon::start(dir.path(), &[]);
    let c = &d.client;
    let a = c.create_session(Some("a"), 60_000).unwrap().session;
    let b = c.create_session(Some("b"), 60_000).unwrap().session;
    assert!(c.acquire(&acquire(&a, "x", 0)).unwrap().granted);
    let waiting = {
        let c = Client::new(d.base.clone());
        let b = b.clone();
        std::thread::spawn(move || c.acquire(&acquire(&b, "x", 60_000)))
    };
    poll(&d.base, "the waiter", |s| {
        s.value("wconf_lock_waiters", &[]) == 1.0
    });
    c.release(&ReleaseRequest {
        session: a.clone(),
        locks: None,
        downgrade: None,
        request_id: None,
    })
    .unwrap();
    assert!(waiting.join().unwrap().unwrap().granted);
    let s = scrape(&d.base);
    assert_eq!(s.value("wconf_lock_waits_total", &[]), 1.0);
    assert_eq!(s.value("wconf_lock_wait_seconds_count", &[]), 1.0);
    assert_eq!(s.value("wconf_lock_waiters", &[]), 0.0);
    assert_eq!(s.value("wconf_sessions_expired_total", &[]), 0.0);

    // The shortest lease, never kept alive. The counter goes up when the
    // expiry is decided and the gauge is set when its step ends, and a
    // scrape is not a snapshot of both: wait for the two to agree. (CI
    // once scraped between them: expired 1, sessions still 3.)
    c.create_session(Some("short"), 1_000).unwrap();
    poll(&d.base, "the lease to expire and the session to go", |s| {
        s.value("wconf_sessions_expired_total", &[]) == 1.0 && s.value("wconf_sessions", &[]) == 2.0
    });
    d.kill();
}

#[test]
fn a_scrape_answers_while_the_lock_actor_is_stuck() {
    // Invariant: /metrics never goes through an actor: with the lock actor
    // stuck handing a grant to a full WAL queue behind a held sync, scrapes
    // answer, count the requests piling up in its mailbox, and the depth
    // falls back to 0 once the sync is let go.
    const READS: usize = 5;
    let mem = MemStorage::new();
    let options = DaemonOptions {
        data_dir: "/wal".into(),
        wal_queue_len_max: 1,
        ..DaemonOptions::default()
    };
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let server = start_in_process(&options, Arc::new(mem.clone()), listener).unwrap();
    let base = format!("http://{}", server.addr());
    let c = Client::new(base.clone());
    let a = c.create_session(Some("a"), 600_000).unwrap().session;
    let b = c.create_session(Some("b"), 600_000).unwrap().session;
    assert!(c.acquire(&acquire(&a, "x", 0)).unwrap().granted);
    let (done_tx, done) = mpsc::channel();
    let spawn = |what: &'static str, call: Box<dyn FnOnce(&Client) -> bool + Send>| {
        let c = Client::new(base.clone());
        let done_tx = done_tx.clone();
        std::thread::spawn(move || {
            let _ = done_tx.send((what, call(&c)));
        });
    };
    let b2 = b.clone();
    spawn(
        "waiter",
        Box::new(move |c| c.acquire(&acquire(&b2, "x", 600_000)).unwrap().granted),
    );
    poll(&base, "the waiter", |s| {
        s.value("wconf_lock_waiters", &[]) == 1.0
    });

    // The writer takes a txn's record and holds in its sync: the queue is
    // empty again, with room for one record.
    let pause = mem.pause_syncs();
    spawn("txn", Box::new(|c| txn(c, 1).applied));
    mem.wait_for_paused_syncs(1);
    // The release takes that room; the grant it wakes cannot be refused
    // (it is applied), so the WAL actor waits for room, and the lock actor
    // waits for the WAL actor.
    let a2 = a.clone();
    spawn(
        "release",
        Box::new(move |c| {
            c.release(&ReleaseRequest {
                session: a2,
                locks: None,
                downgrade: None,
                request_id: None,
            })
            .unwrap()
            .released
        }),
    );
    poll(&base, "the grant", |s| {
        s.value("wconf_lock_waiters", &[]) == 0.0
    });
    for _ in 0..READS {
        spawn("read", Box::new(|c| c.locks().is_ok()));
    }
    let lock = [("actor", "lock")];
    let stuck = poll(&base, "reads queued at the lock actor", |s| {
        s.value("wconf_mailbox_depth", &lock) == READS as f64
    });
    assert_eq!(stuck.value("wconf_locks_held", &[]), 1.0);
    assert!(done.try_recv().is_err(), "something answered while stuck");

    drop(pause);
    for _ in 0..READS + 3 {
        let (what, ok) = done
            .recv_timeout(POLL_DEADLINE)
            .expect("every request answers");
        assert!(ok, "{what}");
    }
    let s = scrape(&base);
    for actor in ["lock", "config", "wal"] {
        assert_eq!(
            s.value("wconf_mailbox_depth", &[("actor", actor)]),
            0.0,
            "{actor}"
        );
    }
    assert_eq!(s.value("wconf_lock_wait_seconds_count", &[]), 1.0);
    server.stop().unwrap();
}

#[test]
fn snapshots_and_recovery_from_them_show_in_the_metrics() {
    // Invariant: a snapshot adds one observation of its duration and sets
    // the newest snapshot LSN to its LSN; a restart from it reports that LSN
    // and replays exactly the records logged after it.
    const TAIL: usize = 7;
    let dir = tempfile::tempdir().unwrap();
    let d = daemon::start(dir.path(), &[]);
    for i in 0..5 {
        txn(&d.client, i);
    }
    let before = scrape(&d.base);
    assert_eq!(before.value("wconf_snapshot_last_lsn", &[]), 0.0);
    let taken = d.client.snapshot().expect("POST /v1/admin/snapshot");
    let after = scrape(&d.base);
    assert_eq!(
        after.value("wconf_snapshot_duration_seconds_count", &[]),
        1.0
    );
    assert_eq!(
        after.value("wconf_snapshot_last_lsn", &[]),
        taken.lsn as f64
    );
    after.check_histograms();
    for i in 0..TAIL {
        txn(&d.client, 100 + i);
    }
    assert_eq!(
        scrape(&d.base).value("wconf_wal_durable_lsn", &[]),
        (taken.lsn + TAIL as u64) as f64,
        "only the tail's records were logged after the snapshot"
    );
    d.kill();

    let d = daemon::start(dir.path(), &[]);
    let restarted = scrape(&d.base);
    assert_eq!(
        restarted.value("wconf_snapshot_last_lsn", &[]),
        taken.lsn as f64
    );
    assert_eq!(
        restarted.value("wconf_recovery_records_replayed", &[]),
        TAIL as f64
    );
    assert_eq!(
        restarted.value("wconf_snapshot_duration_seconds_count", &[]),
        0.0
    );
    d.kill();
}
