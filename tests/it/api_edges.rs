//! Edges of the API where a request used to be accepted, or logged, though
//! it asked for nothing or was malformed: each must answer without writing
//! a record, or answer what really happened.

use serde_json::{json, Value};
use wconf::api::types::*;
use wconf::client::ClientError;

use crate::daemon::{acquire, lock, session, start, write};

fn status_of<T: std::fmt::Debug>(r: Result<T, ClientError>) -> (u16, String) {
    match r {
        Err(ClientError::Api { status, code, .. }) => (status, code),
        other => panic!("expected an API error, got {other:?}"),
    }
}

#[test]
fn requests_for_nothing_are_refused_or_answered_without_a_record() {
    // Invariant: an acquire naming no lock is a 400 and spends no fencing
    // token; an opportunistic min of 0 is a 400; releasing nothing answers
    // without logging a record.
    let dir = tempfile::tempdir().unwrap();
    let d = start(dir.path(), &[]);
    let s = session(&d.client);
    let lsn = d.client.status().unwrap().applied_lsn;
    let empty = status_of(d.client.acquire(&acquire(&s, vec![], None)));
    assert_eq!(empty, (400, "no_locks".to_string()));
    let mut opportunistic = acquire(&s, vec![lock("a", Mode::Exclusive)], None);
    opportunistic.min = Some(0);
    let min0 = status_of(d.client.acquire(&opportunistic));
    assert_eq!(min0, (400, "min_out_of_range".to_string()));
    let all = ReleaseRequest {
        session: s.clone(),
        locks: None,
        downgrade: None,
        request_id: None,
    };
    assert!(d.client.release(&all).unwrap().released);
    let none = ReleaseRequest {
        locks: Some(vec![]),
        ..all
    };
    assert!(d.client.release(&none).unwrap().released);
    assert_eq!(
        d.client.status().unwrap().applied_lsn,
        lsn,
        "a record was written"
    );
    // The first real grant still gets the first token.
    let granted = d
        .client
        .acquire(&acquire(&s, vec![lock("a", Mode::Exclusive)], None))
        .unwrap();
    assert_eq!(granted.token, Some(1));
}

#[test]
fn a_reacquire_answers_the_mode_actually_held() {
    // Invariant: asking for shared what the session holds exclusively keeps
    // it exclusive, and the answer says exclusive.
    let dir = tempfile::tempdir().unwrap();
    let d = start(dir.path(), &[]);
    let s = session(&d.client);
    d.client
        .acquire(&acquire(&s, vec![lock("n", Mode::Exclusive)], None))
        .unwrap();
    let again = d
        .client
        .acquire(&acquire(&s, vec![lock("n", Mode::Shared)], None))
        .unwrap();
    assert!(again.granted);
    let modes: Vec<Mode> = again.locks.unwrap().iter().map(|l| l.mode).collect();
    assert_eq!(modes, vec![Mode::Exclusive]);
    let held = d.client.locks().unwrap().holders;
    assert_eq!(held.len(), 1);
    assert_eq!(held[0].mode, Mode::Exclusive);
}

#[test]
fn a_malformed_patch_is_a_400_even_without_the_config_lock() {
    // Invariant: bad input is refused as bad input, not answered
    // "applied: false", and writes nothing.
    let dir = tempfile::tempdir().unwrap();
    let d = start(dir.path(), &[]);
    let s = session(&d.client);
    let lsn = d.client.status().unwrap().applied_lsn;
    let bad = json!([{"op": "frob", "path": "/x"}]);
    let (status, code) = status_of(d.client.write(&write(&s, bad.clone(), true, None)));
    assert_eq!((status, code.as_str()), (400, "bad_patch"));
    let txn = TxnRequest {
        patch: bad,
        if_serial: None,
        wait_ms: 0,
        request_id: None,
    };
    assert_eq!(status_of(d.client.txn(&txn)).0, 400);
    assert_eq!(d.client.status().unwrap().applied_lsn, lsn);
}

#[test]
fn a_patch_is_taken_as_sent_and_only_as_an_array() {
    // Invariant: the daemon reads a patch as the client's text. Any JSON
    // layout of an array of ops applies, and survives a restart, which
    // parses the logged text again. Anything but an array is a 400
    // bad_patch that writes nothing.
    let dir = tempfile::tempdir().unwrap();
    let d = start(dir.path(), &[]);
    let lsn = d.client.status().unwrap().applied_lsn;
    for patch in [
        r#"{"op":"add","path":"/a","value":1}"#,
        "null",
        r#""[]""#,
        "7",
    ] {
        let body = format!(r#"{{"patch": {patch}}}"#);
        let refused: Result<Value, _> = d.client.post_raw("/v1/config/txn", body.as_bytes());
        assert_eq!(
            status_of(refused),
            (400, "bad_patch".to_string()),
            "{patch}"
        );
    }
    assert_eq!(d.client.status().unwrap().applied_lsn, lsn);
    let body = b"{ \"patch\" :\n  [ { \"value\" : {\"b\" : [1, 2.5, \"x\"]},\n     \"path\":\"/a\", \"op\":\"add\" } ]\n}";
    let applied: Value = d.client.post_raw("/v1/config/txn", body).unwrap();
    assert_eq!(applied["applied"], json!(true), "{applied}");
    let want = json!({"b": [1, 2.5, "x"]});
    assert_eq!(d.client.config_value("/a").unwrap().value, want);
    d.kill();
    let d = start(dir.path(), &[]);
    assert_eq!(d.client.config_value("/a").unwrap().value, want);
}

#[test]
fn keepalive_takes_no_body_or_an_empty_object() {
    // Invariant: G9 holds for keepalive too: a malformed body is a 400.
    let dir = tempfile::tempdir().unwrap();
    let d = start(dir.path(), &[]);
    let s = session(&d.client);
    let path = format!("/v1/sessions/{s}/keepalive");
    let ok: Result<Value, _> = d.client.post_raw(&path, b"");
    ok.unwrap();
    let ok: Result<Value, _> = d.client.post_raw(&path, b"{}");
    ok.unwrap();
    let bad: Result<Value, _> = d.client.post_raw(&path, b"{\"ttl_ms\":5}");
    assert_eq!(status_of(bad).0, 400);
    let bad: Result<Value, _> = d.client.post_raw(&path, b"{not json");
    assert_eq!(status_of(bad).0, 400);
}
