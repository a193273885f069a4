//! Request deduplication: the outcome of each recent request that carried a
//! `request_id`, so a client retrying after a lost response gets the
//! original answer instead of acting twice.
//!
//! Entries are created by `State::apply` from the records themselves, so
//! they are rebuilt by replay and survive restarts. Each session keeps its
//! last `REQUESTS_PER_SESSION_MAX`, dropped when the session closes; one-shot
//! transactions share one bucket of `TXN_REQUESTS_MAX`. Both evict the oldest
//! entry first.

use std::collections::{BTreeMap, HashMap, VecDeque};

use serde::{Deserialize, Serialize};

use super::record::{LockRequest, SessionId};
use super::StateError;

/// The longest request id.
pub const REQUEST_ID_BYTES_MAX: usize = 128;
/// Outcomes remembered per session. A client retries only its latest few
/// requests; 1,024 leaves room for pipelining.
pub const REQUESTS_PER_SESSION_MAX: usize = 1_024;
/// Outcomes remembered for session-less transactions, shared by all clients.
pub const TXN_REQUESTS_MAX: usize = 65_536;

/// What a deduplicated request returns. New variants go at the end (the
/// codec encodes the variant index; see `record.rs`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// The locks actually granted (for an opportunistic acquire, the ones
    /// taken), under `token`.
    Granted {
        token: u64,
        lsn: u64,
        locks: Vec<LockRequest>,
    },
    Released {
        lsn: u64,
    },
    /// A session's config write; `released_config` if it also released the
    /// `config` lock.
    Written {
        serial: u64,
        lsn: u64,
        released_config: bool,
    },
    /// A one-shot transaction.
    TxnApplied {
        serial: u64,
        lsn: u64,
    },
}

/// One FIFO of remembered outcomes.
#[derive(Clone, Debug, Default, PartialEq)]
struct Bucket {
    order: VecDeque<String>,
    outcomes: HashMap<String, Outcome>,
}

impl Bucket {
    fn insert(&mut self, request_id: String, outcome: Outcome, max: usize) {
        if self.order.len() >= max {
            if let Some(oldest) = self.order.pop_front() {
                self.outcomes.remove(&oldest);
            }
        }
        self.order.push_back(request_id.clone());
        self.outcomes.insert(request_id, outcome);
    }

    /// Entries oldest first: the persisted form, so eviction order survives.
    fn entries(&self) -> Vec<(&String, &Outcome)> {
        self.order
            .iter()
            .map(|id| (id, &self.outcomes[id]))
            .collect()
    }

    fn from_entries(entries: Vec<(String, Outcome)>, max: usize) -> Result<Self, String> {
        if entries.len() > max {
            return Err(format!("{} dedup entries, at most {max}", entries.len()));
        }
        let mut bucket = Bucket::default();
        for (id, outcome) in entries {
            check_request_id(&id).map_err(|e| e.to_string())?;
            if bucket.outcomes.contains_key(&id) {
                return Err(format!("request id {id:?} listed twice"));
            }
            bucket.insert(id, outcome, max);
        }
        Ok(bucket)
    }
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Dedup {
    sessions: BTreeMap<SessionId, Bucket>,
    txn: Bucket,
}

pub fn check_request_id(request_id: &str) -> Result<(), StateError> {
    if request_id.is_empty() || request_id.len() > REQUEST_ID_BYTES_MAX {
        return Err(StateError::InvalidName {
            what: "request id",
            reason: format!("must be 1 to {REQUEST_ID_BYTES_MAX} bytes"),
        });
    }
    Ok(())
}

impl Dedup {
    /// The remembered outcome of `request_id` from `session` (None: the
    /// session-less transaction bucket).
    pub fn lookup(&self, session: Option<SessionId>, request_id: &str) -> Option<&Outcome> {
        let bucket = match session {
            Some(s) => self.sessions.get(&s)?,
            None => &self.txn,
        };
        bucket.outcomes.get(request_id)
    }

    /// Checks that an outcome may be recorded: the id is well formed and not
    /// already remembered (the daemon looks it up before deciding, so a
    /// repeat reaching `apply` is a bug that would corrupt eviction order).
    pub fn check_insert(
        &self,
        session: Option<SessionId>,
        request_id: &str,
    ) -> Result<(), StateError> {
        check_request_id(request_id)?;
        if self.lookup(session, request_id).is_some() {
            return Err(StateError::DuplicateRequest {
                request_id: request_id.to_string(),
            });
        }
        Ok(())
    }

    /// Records an outcome already checked by `check_insert`, evicting the
    /// bucket's oldest entry if it is full.
    pub fn insert(&mut self, session: Option<SessionId>, request_id: String, outcome: Outcome) {
        match session {
            Some(s) => {
                let bucket = self.sessions.entry(s).or_default();
                bucket.insert(request_id, outcome, REQUESTS_PER_SESSION_MAX);
            }
            None => self.txn.insert(request_id, outcome, TXN_REQUESTS_MAX),
        }
    }

    /// Forgets a closed session's outcomes: its id will never be reused, so
    /// nobody can ask for them again.
    pub fn drop_session(&mut self, session: SessionId) {
        self.sessions.remove(&session);
    }

    /// The number of outcomes remembered for `session` (None: transactions).
    pub fn len(&self, session: Option<SessionId>) -> usize {
        match session {
            Some(s) => self.sessions.get(&s).map_or(0, |b| b.order.len()),
            None => self.txn.order.len(),
        }
    }

    /// The sessions with remembered outcomes, for snapshot validation.
    pub(super) fn sessions(&self) -> impl Iterator<Item = SessionId> + '_ {
        self.sessions.keys().copied()
    }
}

type SessionEntries = BTreeMap<SessionId, Vec<(String, Outcome)>>;

#[derive(Serialize)]
struct DedupRef<'a> {
    sessions: BTreeMap<SessionId, Vec<(&'a String, &'a Outcome)>>,
    txn: Vec<(&'a String, &'a Outcome)>,
}

#[derive(Deserialize)]
struct DedupRepr {
    sessions: SessionEntries,
    txn: Vec<(String, Outcome)>,
}

impl Serialize for Dedup {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let sessions = self
            .sessions
            .iter()
            .map(|(s, b)| (*s, b.entries()))
            .collect();
        DedupRef {
            sessions,
            txn: self.txn.entries(),
        }
        .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Dedup {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let repr = DedupRepr::deserialize(deserializer)?;
        let mut dedup = Dedup {
            txn: Bucket::from_entries(repr.txn, TXN_REQUESTS_MAX).map_err(D::Error::custom)?,
            ..Dedup::default()
        };
        for (session, entries) in repr.sessions {
            let bucket = Bucket::from_entries(entries, REQUESTS_PER_SESSION_MAX)
                .map_err(D::Error::custom)?;
            if !bucket.order.is_empty() {
                dedup.sessions.insert(session, bucket);
            }
        }
        Ok(dedup)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{decode, encode};

    fn released(lsn: u64) -> Outcome {
        Outcome::Released { lsn }
    }

    #[test]
    fn eviction_is_fifo_at_exactly_the_limit() {
        // Invariant: a session remembers exactly its last 1,024 outcomes;
        // the 1,025th insert evicts the first and only the first.
        let s = Some(SessionId(1));
        let mut d = Dedup::default();
        for i in 0..REQUESTS_PER_SESSION_MAX as u64 {
            d.insert(s, format!("r{i}"), released(i));
        }
        assert_eq!(d.len(s), REQUESTS_PER_SESSION_MAX);
        assert_eq!(d.lookup(s, "r0"), Some(&released(0)));
        d.insert(s, "new".into(), released(9_999));
        assert_eq!(d.len(s), REQUESTS_PER_SESSION_MAX);
        assert_eq!(d.lookup(s, "r0"), None);
        assert_eq!(d.lookup(s, "r1"), Some(&released(1)));
        assert_eq!(d.lookup(s, "new"), Some(&released(9_999)));
        // Eviction order survives a snapshot.
        let mut back: Dedup = decode(&encode(&d).unwrap()).unwrap();
        assert_eq!(back, d);
        back.insert(s, "newer".into(), released(10_000));
        assert_eq!(back.lookup(s, "r1"), None);
        assert_eq!(back.lookup(s, "r2"), Some(&released(2)));
    }

    #[test]
    fn buckets_are_separate_and_dropped_with_their_session() {
        // Invariant: the same request id in different sessions (or the txn
        // bucket) are different requests; closing a session forgets its own.
        let (a, b) = (Some(SessionId(1)), Some(SessionId(2)));
        let mut d = Dedup::default();
        d.insert(a, "r".into(), released(1));
        d.insert(b, "r".into(), released(2));
        d.insert(None, "r".into(), Outcome::TxnApplied { serial: 1, lsn: 3 });
        assert_eq!(d.lookup(a, "r"), Some(&released(1)));
        assert_eq!(
            d.check_insert(a, "r"),
            Err(StateError::DuplicateRequest {
                request_id: "r".into()
            })
        );
        d.drop_session(SessionId(1));
        assert_eq!(d.lookup(a, "r"), None);
        assert_eq!(d.lookup(b, "r"), Some(&released(2)));
        assert_eq!(
            d.lookup(None, "r"),
            Some(&Outcome::TxnApplied { serial: 1, lsn: 3 })
        );
    }

    #[test]
    fn request_ids_are_bounded() {
        // Invariant: empty and over-long ids are refused.
        let d = Dedup::default();
        assert!(d.check_insert(None, "").is_err());
        assert!(d
            .check_insert(None, &"x".repeat(REQUEST_ID_BYTES_MAX + 1))
            .is_err());
        assert!(d
            .check_insert(None, &"x".repeat(REQUEST_ID_BYTES_MAX))
            .is_ok());
    }

    #[test]
    fn hostile_snapshot_is_refused() {
        // Invariant: a snapshot listing a request twice or too many is an
        // error, not a corrupt table.
        let entries = vec![
            ("r".to_string(), released(1)),
            ("r".to_string(), released(2)),
        ];
        let repr = (SessionEntries::new(), entries);
        assert!(decode::<Dedup>(&encode(&repr).unwrap()).is_err());
        let many: Vec<_> = (0..=REQUESTS_PER_SESSION_MAX)
            .map(|i| (i.to_string(), released(1)))
            .collect();
        let repr = (
            SessionEntries::from([(SessionId(1), many)]),
            Vec::<(String, Outcome)>::new(),
        );
        assert!(decode::<Dedup>(&encode(&repr).unwrap()).is_err());
    }
}
