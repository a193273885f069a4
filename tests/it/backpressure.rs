//! Backpressure: when the log's queue is full the daemon answers 503 with
//! `Retry-After` at once, and a refused request changes nothing.

use std::net::TcpListener;
use std::sync::{mpsc, Arc};
use std::time::Duration;

use serde_json::json;
use wconf::client::Client;
use wconf::server::{start_in_process, DaemonOptions};
use wconf::wal::storage::MemStorage;

const QUEUE_MAX: usize = 4;
const CLIENTS: usize = 12;
/// How long to wait for a refusal before calling the test failed.
const REFUSAL_PATIENCE: Duration = Duration::from_secs(30);
/// Client-side bound on one request, so a wrong daemon fails the test
/// instead of hanging it.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// What one client saw: the status, and the `Retry-After` header if any.
type Seen = (u16, Option<String>);

fn txn(base: &str, i: usize) -> Seen {
    let agent = ureq::AgentBuilder::new().timeout(REQUEST_TIMEOUT).build();
    let body = json!({"patch": [{"op": "add", "path": format!("/k{i}"), "value": i}]});
    match agent.post(&format!("{base}/v1/config/txn")).send_json(body) {
        Ok(response) => (response.status(), None),
        Err(ureq::Error::Status(status, response)) => {
            (status, response.header("Retry-After").map(str::to_string))
        }
        Err(e) => panic!("client {i}: no answer: {e}"),
    }
}

#[test]
fn a_full_log_queue_answers_503_at_once_and_refused_requests_write_nothing() {
    // Invariant: with the writer held in a sync, at most the queue's bound
    // (plus what the writer already took) is accepted; every other request
    // gets 503 + Retry-After without waiting for the held sync, and after
    // the sync goes through exactly the accepted requests are applied.
    let mem = MemStorage::new();
    let options = DaemonOptions {
        data_dir: "/wal".into(),
        segment_bytes: 1 << 20,
        wal_queue_len_max: QUEUE_MAX,
        ..DaemonOptions::default()
    };
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    let server = start_in_process(&options, Arc::new(mem.clone()), listener).expect("start");
    let base = format!("http://{}", server.addr());
    let pause = mem.pause_syncs();
    let (tx, rx) = mpsc::channel();
    let threads: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let (tx, base) = (tx.clone(), base.clone());
            std::thread::spawn(move || tx.send(txn(&base, i)).expect("report"))
        })
        .collect();
    drop(tx);
    // The writer holds at most one batch (at most QUEUE_MAX records) and the
    // queue at most QUEUE_MAX more, so at least this many must be refused,
    // and while the sync is still held.
    let refused_min = CLIENTS - 2 * QUEUE_MAX;
    let mut seen: Vec<Seen> = Vec::new();
    while seen.len() < refused_min {
        // A bound on failure, not synchronisation: a daemon that makes a
        // refusal wait for the held sync never answers here.
        let answer = rx.recv_timeout(REFUSAL_PATIENCE).unwrap_or_else(|_| {
            panic!(
                "only {} of {refused_min} refusals came while the sync was held",
                seen.len()
            )
        });
        assert_eq!(answer.0, 503, "answered {} before its sync", answer.0);
        seen.push(answer);
    }
    drop(pause);
    for t in threads {
        t.join().expect("client thread");
    }
    seen.extend(rx.iter());
    assert_eq!(seen.len(), CLIENTS);
    let refused: Vec<&Seen> = seen.iter().filter(|s| s.0 == 503).collect();
    let accepted = seen.iter().filter(|s| s.0 == 200).count();
    assert_eq!(refused.len() + accepted, CLIENTS, "{seen:?}");
    for (_, retry_after) in &refused {
        let secs = retry_after.as_deref().and_then(|s| s.parse::<u32>().ok());
        assert!(
            secs.is_some_and(|n| n > 0),
            "503 without Retry-After: {retry_after:?}"
        );
    }
    let config = Client::new(base).config().expect("config");
    assert_eq!(
        config.serial as usize, accepted,
        "a refused txn was applied"
    );
    server.stop().expect("a clean stop");
}
