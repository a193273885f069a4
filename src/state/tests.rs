//! Tests of `State` as a whole: apply's checks and atomicity, and the
//! property that replaying the log gives the live state.

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;
use crate::codec::{decode, encode};
use LockMode::{Exclusive as X, Shared as S};

fn sid(n: u128) -> SessionId {
    SessionId(n)
}

fn req(name: &str, mode: LockMode) -> LockRequest {
    LockRequest::new(name, mode)
}

fn open(id: u128) -> Record {
    Record::SessionOpen {
        session: sid(id),
        name: None,
        ttl_ms: 10_000,
    }
}

/// Applies records at consecutive LSNs, panicking on refusal.
fn run(state: &mut State, records: &[Record]) -> Vec<Applied> {
    records
        .iter()
        .map(|r| state.apply(state.next_lsn(), r).unwrap())
        .collect()
}

fn write(session: Option<u128>, patch: &str, release_config: bool) -> Record {
    Record::ConfigWrite {
        session: session.map(sid),
        patch_json: patch.into(),
        release_config,
        request_id: None,
    }
}

#[test]
fn lsns_must_be_contiguous() {
    // Invariant: apply accepts only applied_lsn + 1 and refuses anything
    // else without changing the state.
    let mut st = State::new();
    let e = st.apply(2, &open(1));
    assert_eq!(
        e,
        Err(StateError::NonContiguousLsn {
            expected: 1,
            got: 2
        })
    );
    st.apply(1, &open(1)).unwrap();
    assert_eq!(
        st.apply(1, &open(2)),
        Err(StateError::NonContiguousLsn {
            expected: 2,
            got: 1
        })
    );
    assert_eq!(st.applied_lsn(), 1);
}

#[test]
fn fencing_tokens_only_increase() {
    // Invariant: a Grant's token must be >= next_token and sets next_token
    // to token + 1; u64::MAX cannot be issued because nothing could follow.
    let mut st = State::new();
    run(&mut st, &[open(1)]);
    let grant = |token| Record::Grant {
        session: sid(1),
        locks: vec![],
        token,
        request_id: None,
    };
    run(&mut st, &[grant(5)]);
    assert_eq!(st.next_token(), 6);
    assert_eq!(
        st.apply(3, &grant(5)),
        Err(StateError::TokenNotIncreasing { next: 6, got: 5 })
    );
    assert_eq!(
        st.apply(3, &grant(u64::MAX)),
        Err(StateError::TokenExhausted)
    );
    run(&mut st, &[grant(6)]);
}

#[test]
fn epochs_strictly_increase() {
    // Invariant: each daemon start logs a larger epoch than the last.
    let mut st = State::new();
    run(
        &mut st,
        &[Record::Epoch {
            epoch: 1,
            started_unix_ms: 10,
        }],
    );
    let e = st.apply(
        2,
        &Record::Epoch {
            epoch: 1,
            started_unix_ms: 20,
        },
    );
    assert_eq!(
        e,
        Err(StateError::EpochNotIncreasing { current: 1, got: 1 })
    );
    assert_eq!((st.epoch(), st.epoch_started_unix_ms()), (1, 10));
}

#[test]
fn config_writes_need_the_config_lock() {
    // Invariant: a session writes only while holding `config` exclusively;
    // a transaction only while nobody holds it; a refused write changes
    // nothing and the release happens in the same record as the write.
    let mut st = State::new();
    run(&mut st, &[open(1), open(2)]);
    let patch = r#"[{"op":"add","path":"/a","value":1}]"#;
    let e = st.apply(3, &write(Some(1), patch, true));
    assert_eq!(e, Err(StateError::ConfigLockNotHeld { session: sid(1) }));
    let grant = st
        .decide_grant(sid(1), vec![req(CONFIG_LOCK, X)], 0, None)
        .unwrap();
    run(&mut st, &[grant]);
    let e = st.apply(4, &write(None, patch, false));
    assert_eq!(
        e,
        Err(StateError::Conflict {
            name: CONFIG_LOCK.into(),
            holder: sid(1)
        })
    );
    assert!(matches!(
        st.decide_txn(patch.into(), 0, None),
        Err(StateError::Blocked { .. })
    ));
    let before = st.clone();
    let bad = r#"[{"op":"add","path":"/b","value":1},{"op":"remove","path":"/zz"}]"#;
    let e = st.apply(4, &write(Some(1), bad, true));
    assert!(matches!(e, Err(StateError::Patch { op_index: 1, .. })));
    assert_eq!(st, before);
    let applied = run(&mut st, &[write(Some(1), patch, true)]).remove(0);
    assert_eq!(applied.released, vec![CONFIG_LOCK.to_string()]);
    assert!(applied.wakes_waiters());
    let written = Outcome::Written {
        serial: 1,
        lsn: 4,
        released_config: true,
    };
    assert_eq!(applied.outcome, Some(written));
    assert!(st.locks().holders_of(CONFIG_LOCK).is_none());
    let txn = st.decide_txn(
        r#"[{"op":"add","path":"/t","value":2}]"#.into(),
        0,
        Some("t1".into()),
    );
    let applied = run(&mut st, &[txn.unwrap()]).remove(0);
    assert_eq!(
        applied.outcome,
        Some(Outcome::TxnApplied { serial: 2, lsn: 5 })
    );
    assert_eq!(st.dedup().lookup(None, "t1"), applied.outcome.as_ref());
    let e = st.apply(
        6,
        &Record::ConfigWrite {
            session: None,
            patch_json: "[]".into(),
            release_config: true,
            request_id: None,
        },
    );
    assert!(matches!(e, Err(StateError::InvalidRecord { .. })));
}

#[test]
fn closing_a_session_releases_everything_it_had() {
    // Invariant: SessionClose drops the session's holds, waiters and dedup
    // entries, and reports them.
    let mut st = State::new();
    run(&mut st, &[open(1), open(2)]);
    let g = st
        .decide_grant(sid(1), vec![req("a", X), req("b", S)], 0, Some("r".into()))
        .unwrap();
    run(&mut st, &[g]);
    let w = Waiter {
        id: WaiterId(7),
        owner: Requester::Session(sid(2)),
        locks: vec![req("a", S)],
        min: None,
        priority: 0,
        seq: 1,
        enqueued_ms: 5,
        request_id: None,
    };
    st.enqueue_waiter(w).unwrap();
    let close2 = Record::SessionClose {
        session: sid(2),
        reason: CloseReason::Expired,
    };
    let applied = run(&mut st, &[close2]).remove(0);
    assert_eq!(applied.cancelled_waiters, vec![WaiterId(7)]);
    let close1 = Record::SessionClose {
        session: sid(1),
        reason: CloseReason::Closed,
    };
    let applied = run(&mut st, &[close1]).remove(0);
    assert_eq!(applied.released, vec!["a".to_string(), "b".to_string()]);
    assert!(st.locks().is_empty());
    assert_eq!(st.dedup().lookup(Some(sid(1)), "r"), None);
    let e = st.apply(
        6,
        &Record::Grant {
            session: sid(1),
            locks: vec![],
            token: 9,
            request_id: None,
        },
    );
    assert_eq!(e, Err(StateError::UnknownSession { session: sid(1) }));
}

#[test]
fn retried_request_ids_are_refused_by_apply() {
    // Invariant: an outcome is remembered once; a record reusing a
    // remembered request id is refused (the daemon answers from dedup).
    let mut st = State::new();
    run(&mut st, &[open(1)]);
    let g = st
        .decide_grant(sid(1), vec![req("a", S)], 0, Some("r".into()))
        .unwrap();
    let applied = run(&mut st, std::slice::from_ref(&g)).remove(0);
    let granted = Outcome::Granted {
        token: 1,
        lsn: 2,
        locks: vec![req("a", S)],
    };
    assert_eq!(applied.outcome, Some(granted.clone()));
    assert_eq!(st.dedup().lookup(Some(sid(1)), "r"), Some(&granted));
    let dup = StateError::DuplicateRequest {
        request_id: "r".into(),
    };
    assert_eq!(
        st.decide_release_all(sid(1), Some("r".into())),
        Err(dup.clone())
    );
    let Record::Grant {
        session,
        locks,
        request_id,
        ..
    } = g
    else {
        unreachable!()
    };
    let again = Record::Grant {
        session,
        locks,
        token: st.next_token(),
        request_id,
    };
    assert_eq!(st.apply(3, &again), Err(dup));
}

#[test]
fn a_waiting_request_id_is_taken() {
    // Invariant: while a request waits, no other request of its session may
    // use its request id, so the waiter's eventual Grant can be recorded.
    // (Found by replay_equals_live.)
    let mut st = State::new();
    run(&mut st, &[open(1), open(2)]);
    let grant = st.decide_grant(sid(1), vec![req("a", X)], 0, None).unwrap();
    run(&mut st, &[grant]);
    let rid = Some("r".to_string());
    let e = st.decide_grant(sid(2), vec![req("a", S)], 0, rid.clone());
    assert!(matches!(e, Err(StateError::Blocked { .. })));
    let w = Waiter {
        id: WaiterId(1),
        owner: Requester::Session(sid(2)),
        locks: vec![req("a", S)],
        min: None,
        priority: 0,
        seq: 1,
        enqueued_ms: 0,
        request_id: rid.clone(),
    };
    st.enqueue_waiter(w.clone()).unwrap();
    assert_eq!(
        st.locks().waiting_request(Requester::Session(sid(2)), "r"),
        Some(WaiterId(1))
    );
    let dup = Err(StateError::DuplicateRequest {
        request_id: "r".into(),
    });
    assert_eq!(st.decide_release_all(sid(2), rid.clone()), dup);
    assert_eq!(
        st.enqueue_waiter(Waiter {
            id: WaiterId(2),
            ..w
        })
        .map(|_| ()),
        dup.map(|_| ())
    );
    let release = st.decide_release_all(sid(1), None).unwrap();
    run(&mut st, &[release]);
    let pass = st.grantable_waiters();
    assert_eq!(pass.grant, vec![WaiterId(1)]);
    let (_, grant) = st.grant_waiter(WaiterId(1), &pass).unwrap();
    let applied = run(&mut st, &[grant]).remove(0);
    assert_eq!(
        st.dedup().lookup(Some(sid(2)), "r"),
        applied.outcome.as_ref()
    );
    assert_eq!(
        st.locks().waiting_request(Requester::Session(sid(2)), "r"),
        None
    );
}

#[test]
fn a_waiting_txn_takes_its_turn_and_runs_as_one_record() {
    // Invariant (issue 3, txn): a transaction waits for `config` in the one
    // queue, blocks later shared requests, and when its turn comes runs as
    // one ConfigWrite that leaves `config` free for the waiter behind it.
    let mut st = State::new();
    run(&mut st, &[open(1), open(2), open(3)]);
    let g = st
        .decide_grant(sid(1), vec![req(CONFIG_LOCK, S)], 0, None)
        .unwrap();
    run(&mut st, &[g]);
    let patch = r#"[{"op":"add","path":"/t","value":1}]"#;
    let blocked = st.decide_txn(patch.into(), 0, Some("t".into()));
    let who = |n| Requester::Session(sid(n));
    assert_eq!(
        blocked,
        Err(StateError::Blocked {
            blockers: vec![who(1)]
        })
    );
    let txn = State::txn_waiter(WaiterId(1), 0, 1, 0, Some("t".into()));
    st.enqueue_waiter(txn.clone()).unwrap();
    assert_eq!(
        st.txn_blockers(0, Some("t")),
        Err(StateError::DuplicateRequest {
            request_id: "t".into()
        })
    );
    let shared = st.decide_grant(sid(2), vec![req(CONFIG_LOCK, S)], 0, None);
    let behind_txn = Err(StateError::Blocked {
        blockers: vec![Requester::Txn],
    });
    assert_eq!(shared, behind_txn);
    // A more urgent request may pass, as with any waiter.
    assert!(st
        .decide_grant(sid(2), vec![req(CONFIG_LOCK, S)], -1, None)
        .is_ok());
    let x = Waiter {
        id: WaiterId(2),
        owner: who(3),
        locks: vec![req(CONFIG_LOCK, X)],
        min: None,
        priority: 0,
        seq: 2,
        enqueued_ms: 0,
        request_id: None,
    };
    st.enqueue_waiter(x).unwrap();
    assert!(st.grantable_waiters().grant.is_empty());
    let release = st.decide_release_all(sid(1), None).unwrap();
    run(&mut st, &[release]);
    let pass = st.grantable_waiters();
    assert_eq!(pass.grant, vec![WaiterId(1), WaiterId(2)]);
    assert!(matches!(
        st.grant_waiter(WaiterId(1), &pass),
        Err(StateError::InvalidRecord { .. })
    ));
    let (w, record) = st.run_txn_waiter(WaiterId(1), patch.into()).unwrap();
    assert_eq!(w, txn);
    let applied = run(&mut st, std::slice::from_ref(&record)).remove(0);
    assert!(applied.released.is_empty() && st.locks().is_empty());
    assert_eq!(st.config().lsn(), applied.lsn);
    assert_eq!(st.dedup().lookup(None, "t"), applied.outcome.as_ref());
    let (_, grant) = st.grant_waiter(WaiterId(2), &pass).unwrap();
    run(&mut st, &[grant]);
    let holders = st.locks().holders_of(CONFIG_LOCK).unwrap();
    assert_eq!(holders[&sid(3)].mode, X);
}

#[test]
fn an_opportunistic_waiter_takes_what_is_free_once_min_is() {
    // Invariant: below `min` an opportunistic waiter waits; the pass that
    // frees enough grants it exactly the candidates free then.
    let mut st = State::new();
    run(&mut st, &[open(1), open(2)]);
    let g = st
        .decide_grant(sid(1), vec![req("a/0", X), req("a/1", X)], 0, None)
        .unwrap();
    run(&mut st, &[g]);
    let candidates = vec![req("a/0", X), req("a/1", X), req("free", S)];
    assert_eq!(
        st.decide_opportunistic(sid(2), &candidates, 2, 0, None),
        Ok(None)
    );
    let w = Waiter {
        id: WaiterId(1),
        owner: Requester::Session(sid(2)),
        locks: candidates.clone(),
        min: Some(2),
        priority: 0,
        seq: 1,
        enqueued_ms: 0,
        request_id: Some("o".into()),
    };
    assert!(st
        .enqueue_waiter(Waiter {
            min: Some(4),
            ..w.clone()
        })
        .is_err());
    st.enqueue_waiter(w).unwrap();
    let release = st
        .decide_release(sid(1), vec!["a/1".into()], vec![], None)
        .unwrap();
    run(&mut st, &[release]);
    let pass = st.grantable_waiters();
    assert_eq!(pass.grant, vec![WaiterId(1)]);
    let (_, grant) = st.grant_waiter(WaiterId(1), &pass).unwrap();
    let applied = run(&mut st, &[grant]).remove(0);
    let Some(Outcome::Granted { locks, .. }) = applied.outcome else {
        panic!("{applied:?}")
    };
    assert_eq!(locks, vec![req("a/1", X), req("free", S)]);
}

#[test]
fn a_streamed_body_is_the_derived_encoding() {
    // Invariant: `State::encode_to_write`, which streams the document's text
    // from the tree, writes exactly the derived encoding (the snapshot format
    // is unchanged), for documents whose length needs each varint width.
    for len in [10, 300, 70_000] {
        let mut st = State::new();
        let value = "v".repeat(len);
        let patch = format!(r#"[{{"op":"add","path":"/x","value":"{value}"}}]"#);
        run(&mut st, &[open(1), write(None, &patch, false)]);
        let mut streamed = vec![];
        let n = st.encode_to_write(&mut streamed).unwrap();
        assert_eq!(n, streamed.len());
        assert!(streamed == encode(&st).unwrap(), "document of {len} bytes");
        assert_eq!(decode::<State>(&streamed).unwrap(), st);
    }
}

#[test]
fn snapshot_round_trips_and_hostile_snapshots_fail() {
    // Invariant: decode(encode(state)) == state with an equal digest, and a
    // snapshot whose holder has no session is refused.
    let mut st = State::new();
    run(&mut st, &[open(1)]);
    let g = st
        .decide_grant(sid(1), vec![req("a", X)], 0, Some("r".into()))
        .unwrap();
    run(
        &mut st,
        &[
            g,
            write(None, r#"[{"op":"add","path":"/x","value":[1]}]"#, false),
        ],
    );
    let bytes = encode(&st).unwrap();
    let back: State = decode(&bytes).unwrap();
    assert_eq!(back, st);
    assert_eq!(back.digest().unwrap(), st.digest().unwrap());
    let mut orphan = st.clone();
    orphan.sessions = Sessions::default();
    orphan.dedup = Dedup::default();
    assert!(decode::<State>(&encode(&orphan).unwrap()).is_err());
    let mut stale = st.clone();
    stale.next_token = 1;
    assert!(decode::<State>(&encode(&stale).unwrap()).is_err());
}

#[test]
fn http_statuses_distinguish_client_errors_from_bugs() {
    // Invariant: client mistakes map to 4xx, full tables to 503, and log or
    // programmer inconsistencies to 500.
    assert_eq!(StateError::NotHeld { name: "a".into() }.http_status(), 409);
    assert_eq!(
        StateError::OrderViolation {
            held: "b".into(),
            requested: "a".into()
        }
        .http_status(),
        409
    );
    assert_eq!(
        StateError::Full {
            what: "sessions",
            max: 1
        }
        .http_status(),
        503
    );
    assert_eq!(
        StateError::NonContiguousLsn {
            expected: 1,
            got: 3
        }
        .http_status(),
        500
    );
    assert_eq!(
        StateError::PatchParse {
            message: String::new()
        }
        .http_status(),
        400
    );
    assert_eq!(
        StateError::UnknownSession { session: sid(1) }.http_status(),
        404
    );
}

// The property: a random workload decided and applied live, then replayed.

const NAMES: [&str; 6] = ["a/0", "a/1", "b/0", "b/1", CONFIG_LOCK, "free"];
const PATCHES: [&str; 6] = [
    r#"[{"op":"add","path":"/k","value":1}]"#,
    r#"[{"op":"add","path":"/k","value":{"n":[1,2]}},{"op":"copy","from":"/k","path":"/c"}]"#,
    r#"[{"op":"remove","path":"/k"}]"#,
    r#"[{"op":"test","path":"/k","value":1},{"op":"replace","path":"/k","value":2}]"#,
    r#"[{"op":"add","path":"/k/n/-","value":3}]"#,
    r#"not json"#,
];

#[derive(Clone, Debug)]
enum Op {
    Open,
    Close {
        s: usize,
        expired: bool,
    },
    Acquire {
        s: usize,
        locks: Vec<(usize, bool)>,
        priority: i8,
        wait: bool,
        rid: Option<u8>,
    },
    Opportunistic {
        s: usize,
        locks: Vec<(usize, bool)>,
        min: usize,
        wait: bool,
        rid: Option<u8>,
    },
    Release {
        s: usize,
        names: Vec<usize>,
        downgrade: Vec<usize>,
        rid: Option<u8>,
    },
    ReleaseAll {
        s: usize,
        rid: Option<u8>,
    },
    Write {
        s: usize,
        patch: usize,
        release_config: bool,
        rid: Option<u8>,
    },
    Txn {
        patch: usize,
        wait: bool,
        rid: Option<u8>,
    },
    Cancel {
        w: u64,
    },
    StaleGrant {
        s: usize,
    },
    Restart,
}

fn op() -> impl Strategy<Value = Op> {
    let s = 0usize..8;
    let rid = proptest::option::of(0u8..3);
    let locks = proptest::collection::vec((0..NAMES.len(), any::<bool>()), 0..4);
    let names = proptest::collection::vec(0..NAMES.len(), 0..3);
    prop_oneof![
        2 => Just(Op::Open),
        1 => (s.clone(), any::<bool>()).prop_map(|(s, expired)| Op::Close { s, expired }),
        6 => (s.clone(), locks.clone(), -2i8..2, any::<bool>(), rid.clone()).prop_map(
            |(s, locks, priority, wait, rid)| Op::Acquire { s, locks, priority, wait, rid }),
        2 => (s.clone(), locks, 0usize..3, any::<bool>(), rid.clone()).prop_map(
            |(s, locks, min, wait, rid)| Op::Opportunistic { s, locks, min, wait, rid }),
        3 => (s.clone(), names.clone(), names, rid.clone())
            .prop_map(|(s, names, downgrade, rid)| Op::Release { s, names, downgrade, rid }),
        2 => (s.clone(), rid.clone()).prop_map(|(s, rid)| Op::ReleaseAll { s, rid }),
        3 => (s.clone(), 0..PATCHES.len(), any::<bool>(), rid.clone()).prop_map(
            |(s, patch, release_config, rid)| Op::Write { s, patch, release_config, rid }),
        2 => (0..PATCHES.len(), any::<bool>(), rid)
            .prop_map(|(patch, wait, rid)| Op::Txn { patch, wait, rid }),
        1 => (0u64..12).prop_map(|w| Op::Cancel { w }),
        1 => s.prop_map(|s| Op::StaleGrant { s }),
        1 => Just(Op::Restart),
    ]
}

/// A stand-in for the daemon: decides with the `decide_*` helpers, applies,
/// and keeps the log.
struct Live {
    state: State,
    log: Vec<(u64, Record)>,
    sessions: Vec<SessionId>,
    next_waiter: u64,
    seq: u64,
    /// The patches of waiting transactions (the daemon keeps them too).
    txn_patches: BTreeMap<WaiterId, String>,
}

impl Live {
    fn new() -> Self {
        let mut live = Live {
            state: State::new(),
            log: Vec::new(),
            sessions: Vec::new(),
            next_waiter: 0,
            seq: 0,
            txn_patches: BTreeMap::new(),
        };
        live.start();
        live
    }

    fn start(&mut self) {
        let order = LockOrder::new(vec!["a".into(), "b".into()]).unwrap();
        self.state.set_lock_order(order);
        let epoch = self.state.epoch() + 1;
        self.commit(Record::Epoch {
            epoch,
            started_unix_ms: epoch * 1_000,
        });
        self.state.grant_grace(0);
    }

    /// Mostly a known session (open or closed), sometimes one never opened.
    fn session(&self, s: usize) -> SessionId {
        match self.sessions.len() {
            0 => SessionId(u128::MAX),
            _ if s == 7 => SessionId(u128::MAX),
            n => self.sessions[s % n],
        }
    }

    /// Applies and logs; a refused record must leave the state unchanged.
    fn commit(&mut self, record: Record) -> Option<Applied> {
        let before = self.state.clone();
        let lsn = self.state.next_lsn();
        match self.state.apply(lsn, &record) {
            Ok(applied) => {
                self.log.push((lsn, record));
                if applied.wakes_waiters() {
                    self.pump();
                }
                Some(applied)
            }
            Err(_) => {
                assert_eq!(self.state, before, "a refused record changed the state");
                assert_eq!(self.state.applied_lsn(), before.applied_lsn());
                None
            }
        }
    }

    /// Grants what the queue allows, as the daemon does after a release.
    fn pump(&mut self) {
        loop {
            let pass = self.state.grantable_waiters();
            for id in &pass.grant {
                let lsn = self.state.next_lsn();
                if let Some(patch) = self.txn_patches.remove(id) {
                    // Taken, patched and released in one record; a failing
                    // patch logs nothing and frees `config` all the same.
                    let (_, record) = self.state.run_txn_waiter(*id, patch).unwrap();
                    if self.state.apply(lsn, &record).is_ok() {
                        self.log.push((lsn, record));
                    }
                    continue;
                }
                let (_, record) = self.state.grant_waiter(*id, &pass).unwrap();
                let applied = self.state.apply(lsn, &record);
                assert!(
                    applied.is_ok(),
                    "a grantable waiter was refused: {applied:?} {record:?}"
                );
                self.log.push((lsn, record));
            }
            if pass.refuse.is_empty() {
                return;
            }
            for (id, _) in pass.refuse {
                self.state.cancel_waiter(id);
            }
        }
    }

    fn enqueue(
        &mut self,
        owner: Requester,
        locks: Vec<LockRequest>,
        min: Option<usize>,
        priority: i8,
        rid: Option<String>,
    ) -> Option<WaiterId> {
        self.next_waiter += 1;
        self.seq += 1;
        let waiter = Waiter {
            id: WaiterId(self.next_waiter),
            owner,
            locks,
            min,
            priority,
            seq: self.seq,
            enqueued_ms: self.seq,
            request_id: rid,
        };
        let id = waiter.id;
        self.state.enqueue_waiter(waiter).ok().map(|()| id)
    }

    fn fresh_rid(&self, session: Option<SessionId>, rid: Option<u8>) -> Result<Option<String>, ()> {
        let rid = rid.map(|r| format!("r{r}"));
        match &rid {
            // Answered from dedup: nothing is decided or logged.
            Some(id) if self.state.dedup().lookup(session, id).is_some() => Err(()),
            _ => Ok(rid),
        }
    }

    fn step(&mut self, op: Op) {
        let locks_of = |v: &[(usize, bool)]| -> Vec<LockRequest> {
            let mut v: Vec<_> = v
                .iter()
                .map(|(n, x)| req(NAMES[*n], if *x { X } else { S }))
                .collect();
            v.sort_by(|a, b| a.name.cmp(&b.name));
            v.dedup_by(|a, b| a.name == b.name);
            v
        };
        let names_of =
            |v: &[usize]| -> Vec<String> { v.iter().map(|n| NAMES[*n].to_string()).collect() };
        match op {
            Op::Open => {
                let session = SessionId(0x5e55_0000 + self.sessions.len() as u128);
                self.sessions.push(session);
                let name = Some(format!("client{}", self.sessions.len()));
                self.commit(Record::SessionOpen {
                    session,
                    name,
                    ttl_ms: 5_000,
                });
            }
            Op::Close { s, expired } => {
                let reason = if expired {
                    CloseReason::Expired
                } else {
                    CloseReason::Closed
                };
                self.commit(Record::SessionClose {
                    session: self.session(s),
                    reason,
                });
            }
            Op::Acquire {
                s,
                locks,
                priority,
                wait,
                rid,
            } => {
                let session = self.session(s);
                let Ok(rid) = self.fresh_rid(Some(session), rid) else {
                    return;
                };
                let locks = locks_of(&locks);
                match self
                    .state
                    .decide_grant(session, locks.clone(), priority, rid.clone())
                {
                    Ok(record) => {
                        self.commit(record).expect("a decided grant applies");
                    }
                    Err(StateError::Blocked { .. }) if wait => {
                        let owner = Requester::Session(session);
                        self.enqueue(owner, locks, None, priority, rid);
                    }
                    Err(_) => {}
                }
            }
            Op::Opportunistic {
                s,
                locks,
                min,
                wait,
                rid,
            } => {
                let session = self.session(s);
                let Ok(rid) = self.fresh_rid(Some(session), rid) else {
                    return;
                };
                let locks = locks_of(&locks);
                match self
                    .state
                    .decide_opportunistic(session, &locks, min, 0, rid.clone())
                {
                    Ok(Some(record)) => {
                        self.commit(record).expect("a decided grant applies");
                    }
                    Ok(None) if wait => {
                        let owner = Requester::Session(session);
                        self.enqueue(owner, locks, Some(min), 0, rid);
                    }
                    _ => {}
                }
            }
            Op::Release {
                s,
                names,
                downgrade,
                rid,
            } => {
                let session = self.session(s);
                let Ok(rid) = self.fresh_rid(Some(session), rid) else {
                    return;
                };
                let decided =
                    self.state
                        .decide_release(session, names_of(&names), names_of(&downgrade), rid);
                if let Ok(record) = decided {
                    self.commit(record).expect("a decided release applies");
                }
            }
            Op::ReleaseAll { s, rid } => {
                let session = self.session(s);
                let Ok(rid) = self.fresh_rid(Some(session), rid) else {
                    return;
                };
                if let Ok(record) = self.state.decide_release_all(session, rid) {
                    self.commit(record).expect("a decided release applies");
                }
            }
            Op::Write {
                s,
                patch,
                release_config,
                rid,
            } => {
                let session = self.session(s);
                let Ok(rid) = self.fresh_rid(Some(session), rid) else {
                    return;
                };
                let patch_json = PATCHES[patch].to_string();
                if let Ok(record) =
                    self.state
                        .decide_config_write(session, patch_json, release_config, rid)
                {
                    self.commit(record);
                }
            }
            Op::Txn { patch, wait, rid } => {
                let Ok(rid) = self.fresh_rid(None, rid) else {
                    return;
                };
                let patch = PATCHES[patch].to_string();
                match self.state.decide_txn(patch.clone(), 0, rid.clone()) {
                    Ok(record) => {
                        self.commit(record);
                    }
                    Err(StateError::Blocked { .. }) if wait => {
                        let config = vec![req(CONFIG_LOCK, X)];
                        if let Some(id) = self.enqueue(Requester::Txn, config, None, 0, rid) {
                            self.txn_patches.insert(id, patch);
                        }
                    }
                    Err(_) => {}
                }
            }
            Op::Cancel { w } => {
                if self.state.cancel_waiter(WaiterId(w)).is_some() {
                    self.pump();
                }
            }
            Op::StaleGrant { s } => {
                let token = self.state.next_token().saturating_sub(1);
                let locks = vec![req("free", S)];
                self.commit(Record::Grant {
                    session: self.session(s),
                    locks,
                    token,
                    request_id: None,
                });
            }
            Op::Restart => {
                // A restart keeps exactly what a snapshot keeps: waiters die.
                self.state = decode(&encode(&self.state).unwrap()).unwrap();
                self.txn_patches.clear();
                self.start();
            }
        }
    }
}

fn assert_mutual_exclusion(state: &State) {
    for (name, holders) in state.locks().held() {
        let exclusive = holders.values().any(|h| h.mode == X);
        assert!(
            !exclusive || holders.len() == 1,
            "{name} held by {holders:?}"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn replay_equals_live(ops in proptest::collection::vec(op(), 1..150)) {
        check_replay_equals_live(ops)?;
    }
}

fn check_replay_equals_live(ops: Vec<Op>) -> Result<(), TestCaseError> {
    // Invariant: replaying the log into a fresh State gives a state equal
    // to the live one (and equal digests); along the way no two sessions
    // hold conflicting modes and logged fencing tokens strictly increase.
    let mut live = Live::new();
    for op in ops {
        live.step(op);
        assert_mutual_exclusion(&live.state);
    }
    let mut replayed = State::new();
    for (lsn, record) in &live.log {
        replayed.apply(*lsn, record).unwrap();
    }
    prop_assert_eq!(&replayed, &live.state);
    prop_assert_eq!(replayed.digest().unwrap(), live.state.digest().unwrap());
    let tokens: Vec<u64> = live
        .log
        .iter()
        .filter_map(|(_, r)| match r {
            Record::Grant { token, .. } => Some(*token),
            _ => None,
        })
        .collect();
    prop_assert!(tokens.windows(2).all(|w| w[0] < w[1]), "{:?}", tokens);
    // The log itself survives the codec.
    for (_, record) in &live.log {
        prop_assert_eq!(&decode::<Record>(&encode(record).unwrap()).unwrap(), record);
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn snapshot_plus_tail_equals_full_replay(
        ops in proptest::collection::vec(op(), 1..150),
        at in any::<proptest::sample::Index>(),
    ) {
        check_snapshot_plus_tail(ops, at)?;
    }
}

fn check_snapshot_plus_tail(
    ops: Vec<Op>,
    at: proptest::sample::Index,
) -> Result<(), TestCaseError> {
    // Invariant: a snapshot of the live state taken between any two steps
    // (through `snapshot_copy` and the snapshot file format), plus the log
    // records after its LSN, gives the state a full replay of the log gives,
    // and that equals the live state.
    use crate::snapshot;
    use crate::wal::storage::{MemStorage, Storage};
    let steps = ops.len();
    let at = at.index(steps + 1);
    let mut live = Live::new();
    let mut copy = live.state.snapshot_copy();
    for (i, op) in ops.into_iter().enumerate() {
        if i == at {
            copy = live.state.snapshot_copy();
        }
        live.step(op);
    }
    if at == steps {
        copy = live.state.snapshot_copy();
    }
    let mem = MemStorage::new();
    let dir = std::path::Path::new("/s");
    mem.create_dir_all(dir).unwrap();
    let written = snapshot::write(&mem, dir, &copy, 0).unwrap();
    let mut streamed = vec![];
    copy.encode_to_write(&mut streamed).unwrap();
    prop_assert!(streamed == encode(&copy).unwrap(), "streamed body differs");
    let mut state = snapshot::load_with(&mem, &written.path).unwrap().state;
    prop_assert_eq!(state.applied_lsn(), copy.applied_lsn());
    for (lsn, record) in live.log.iter().filter(|(lsn, _)| *lsn > written.lsn) {
        state.apply(*lsn, record).unwrap();
    }
    let mut full = State::new();
    for (lsn, record) in &live.log {
        full.apply(*lsn, record).unwrap();
    }
    prop_assert_eq!(&state, &full);
    prop_assert_eq!(&state, &live.state);
    prop_assert_eq!(state.digest().unwrap(), full.digest().unwrap());
    Ok(())
}
