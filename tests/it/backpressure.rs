//! Backpressure: when the log's queue is full the daemon answers 503 with
//! `Retry-After` at once, and a refused request changes nothing.

use std::net::TcpListener;
use std::sync::{mpsc, Arc};
use std::time::Duration;

use serde_json::json;
use wconf::api::types::TxnRequest;
use wconf::client::{Client, ClientError};
use wconf::server::{start_in_process, DaemonOptions};
use wconf::wal::storage::MemStorage;

const QUEUE_MAX: usize = 4;
const CLIENTS: usize = 12;
/// How long to wait for a refusal before calling the test failed.
const REFUSAL_PATIENCE: Duration = Duration::from_secs(30);

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
            std::thread::spawn(move || {
                let client = Client::with_timeout(base, Duration::from_secs(60));
                let req = TxnRequest {
                    patch: json!([{"op": "add", "path": format!("/k{i}"), "value": i}]),
                    if_serial: None,
                    wait_ms: 0,
                    request_id: None,
                };
                tx.send(client.txn(&req)).expect("report");
            })
        })
        .collect();
    drop(tx);
    // The writer holds at most one batch (at most QUEUE_MAX records) and the
    // queue at most QUEUE_MAX more, so at least this many must be refused;
    // they arrive while the sync is still held.
    let refused_min = CLIENTS - 2 * QUEUE_MAX;
    let mut refused = 0;
    let mut accepted = Vec::new();
    while refused < refused_min {
        // A bound on failure, not synchronisation: refusals must come while
        // the sync is held, so a daemon that makes them wait never answers.
        let answer = rx.recv_timeout(REFUSAL_PATIENCE).unwrap_or_else(|_| {
            panic!("only {refused} of {refused_min} refusals came while the sync was held")
        });
        match answer {
            Err(ClientError::Api {
                status: 503, code, ..
            }) => {
                assert_eq!(code, "busy");
                refused += 1;
            }
            other => accepted.push(other),
        }
    }
    assert!(
        accepted.is_empty(),
        "answered before its sync: {accepted:?}"
    );
    // The queue stays full while the sync is held: one more request is
    // refused at once, and the refusal says when to come back.
    let body = json!({"patch": [{"op": "add", "path": "/late", "value": 1}]});
    match ureq::post(&format!("{base}/v1/config/txn")).send_json(body) {
        Err(ureq::Error::Status(503, response)) => {
            let retry_after = response.header("Retry-After").map(str::to_string);
            assert!(retry_after.is_some_and(|s| s.parse::<u32>().is_ok_and(|n| n > 0)));
        }
        other => panic!("expected a 503, got {other:?}"),
    }
    drop(pause);
    for t in threads {
        t.join().expect("client thread");
    }
    for answer in rx.iter() {
        match answer {
            Err(ClientError::Api { status: 503, .. }) => refused += 1,
            other => accepted.push(other),
        }
    }
    assert_eq!(refused + accepted.len(), CLIENTS);
    assert!(accepted.iter().all(|a| a.is_ok()), "{accepted:?}");
    let client = Client::new(base);
    let config = client.config().expect("config");
    assert_eq!(
        config.serial as usize,
        accepted.len(),
        "a refused txn was applied"
    );
    server.stop().expect("a clean stop");
}
