//! Request deduplication: the outcome of each recent request that carried a
//! `request_id`, so a client retrying after a lost response gets the
//! original answer instead of acting twice.
//!
//! Entries are created by `State::apply` from the records themselves, so
//! they are rebuilt by replay and survive restarts. Each session keeps its
//! last `REQUESTS_PER_SESSION_MAX`, dropped when the session closes; one-shot
//! transactions share one bucket of `TXN_REQUESTS_MAX`. Both evict the oldest
//! entry first.
//!
//! The counts alone do not bound memory: 65,536 sessions of 1,024 entries,
//! each a `Granted` that may list 1,024 names of 256 bytes, is terabytes.
//! So the whole table also has a byte budget, [`DEDUP_BYTES_MAX`], charged
//! per entry by [`entry_bytes`]; past it, the oldest entry of the whole
//! table goes first, whichever session it belongs to. We keep the granted
//! names rather than storing outcomes compactly (a count and the token):
//! for an opportunistic acquire the names taken are a subset the retry
//! cannot know, and even compact entries (a request id alone is up to 128
//! bytes) would need a budget to be bounded. The cost is that G5's "last
//! 1,024 requests of each session" holds while the table is under budget;
//! beyond it, the least recent requests of all sessions are forgotten
//! first, which a client retrying promptly never notices. Eviction happens
//! in `apply`, so replay forgets exactly what the live daemon forgot.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

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
/// The bytes the whole table may be charged, over all sessions and the
/// transaction bucket (see [`entry_bytes`]). At a few hundred bytes for a
/// typical entry that is about a million remembered requests.
pub const DEDUP_BYTES_MAX: usize = 256 << 20;
/// What one entry is charged besides its request id and lock names: the
/// outcome's fixed fields, the map and queue slots and their overhead.
pub const ENTRY_BYTES_OVERHEAD: usize = 128;
/// What each granted lock in an outcome is charged besides its name.
pub const LOCK_BYTES_OVERHEAD: usize = 32;

// The largest single entry must fit many times over, or the budget would
// evict whole sessions' worth of entries for one grant.
const _: () = assert!(
    ENTRY_BYTES_OVERHEAD
        + REQUEST_ID_BYTES_MAX
        + super::locks::LOCKS_PER_REQUEST_MAX
            * (super::locks::LOCK_NAME_BYTES_MAX + LOCK_BYTES_OVERHEAD)
        <= DEDUP_BYTES_MAX / 256
);

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

/// The bytes one remembered outcome is charged against [`DEDUP_BYTES_MAX`]:
/// an estimate of its memory that grows with everything variable in it.
pub fn entry_bytes(request_id: &str, outcome: &Outcome) -> usize {
    let locks = match outcome {
        Outcome::Granted { locks, .. } => locks
            .iter()
            .map(|l| l.name.len() + LOCK_BYTES_OVERHEAD)
            .sum(),
        Outcome::Released { .. } | Outcome::Written { .. } | Outcome::TxnApplied { .. } => 0,
    };
    ENTRY_BYTES_OVERHEAD + request_id.len() + locks
}

/// Where an entry lives: a session's bucket, or (None) the transactions'.
type BucketKey = Option<SessionId>;

/// Writes one representation of the table's entries: a FIFO per bucket, each
/// entry carrying its table-wide arrival number (its age) so the table can
/// find its oldest entry overall, and an age-ordered index of all entries.
/// The id is one allocation shared by a bucket's queue and its map.
///
/// Two representations with one text, so they cannot drift apart: the
/// running daemon's is persistent (imbl), so a snapshot's copy is O(1) and
/// never stalls the lock actor; replay owns its state alone and uses std
/// collections, which make it about three times as fast (a restart with a
/// long log spends most of its time here: `benches/snapshot_restart.rs`).
macro_rules! dedup_tables {
    ($name:ident, $bucket:ident, $map:ty, $sessions:ty, $fifo:ty, $by_age:ty) => {
        #[derive(Clone, Debug, Default)]
        struct $bucket {
            order: $fifo,
            outcomes: $map,
        }

        #[derive(Clone, Debug, Default)]
        struct $name {
            sessions: $sessions,
            txn: $bucket,
            /// Age -> bucket, for every entry: the table-wide FIFO.
            by_age: $by_age,
            next_age: u64,
        }

        impl $name {
            fn bucket(&self, key: BucketKey) -> Option<&$bucket> {
                match key {
                    Some(s) => self.sessions.get(&s),
                    None => Some(&self.txn),
                }
            }

            fn lookup(&self, key: BucketKey, request_id: &str) -> Option<&Outcome> {
                self.bucket(key)?.outcomes.get(request_id)
            }

            fn len(&self, key: BucketKey) -> usize {
                self.bucket(key).map_or(0, |b| b.order.len())
            }

            fn entry_count(&self) -> usize {
                self.by_age.len()
            }

            /// The bucket of the oldest entry of the whole table.
            fn oldest(&self) -> Option<BucketKey> {
                self.by_age.iter().next().map(|(_, key)| *key)
            }

            fn has_age(&self, age: u64) -> bool {
                self.by_age.contains_key(&age)
            }

            /// Appends an entry (the caller evicts); answers its age.
            fn push(&mut self, key: BucketKey, id: Arc<str>, outcome: Outcome) -> u64 {
                let age = self.next_age;
                self.next_age += 1;
                let bucket = match key {
                    Some(s) => self.sessions.entry(s).or_default(),
                    None => &mut self.txn,
                };
                bucket.order.push_back((age, id.clone()));
                bucket.outcomes.insert(id, outcome);
                self.by_age.insert(age, key);
                age
            }

            /// Takes the oldest entry of one bucket out (a session's bucket
            /// left empty goes too).
            fn pop_oldest_of(&mut self, key: BucketKey) -> Option<(Arc<str>, Outcome)> {
                let bucket = match key {
                    Some(s) => self.sessions.get_mut(&s),
                    None => Some(&mut self.txn),
                }?;
                let (age, id) = bucket.order.pop_front()?;
                let outcome = bucket
                    .outcomes
                    .remove(&id)
                    .expect("order and outcomes agree");
                let empty = bucket.order.is_empty();
                self.by_age.remove(&age);
                if let (Some(s), true) = (key, empty) {
                    self.sessions.remove(&s);
                }
                Some((id, outcome))
            }

            /// Drops a session's bucket; answers the bytes it was charged.
            fn drop_session(&mut self, session: SessionId) -> usize {
                let Some(bucket) = self.sessions.remove(&session) else {
                    return 0;
                };
                let mut freed = 0;
                for (age, id) in &bucket.order {
                    self.by_age.remove(age);
                    freed += entry_bytes(id, &bucket.outcomes[&**id]);
                }
                freed
            }

            /// Every entry, oldest first over the whole table.
            fn entries(&self) -> Vec<(BucketKey, &str, &Outcome)> {
                // Each bucket's order is a subsequence of the table-wide
                // one, so a cursor per bucket finds every entry in order.
                let mut cursors: HashMap<BucketKey, usize> = HashMap::new();
                self.by_age
                    .iter()
                    .map(|(age, key)| {
                        let bucket = self.bucket(*key).expect("by_age names live buckets");
                        let cursor = cursors.entry(*key).or_default();
                        let (entry_age, id) = &bucket.order[*cursor];
                        assert_eq!(entry_age, age, "bucket order follows table order");
                        *cursor += 1;
                        (*key, &**id, &bucket.outcomes[&**id])
                    })
                    .collect()
            }

            fn sessions(&self) -> Vec<SessionId> {
                self.sessions.keys().copied().collect()
            }

            /// The same entries in the same order, in this representation.
            fn rebuilt(entries: Vec<(BucketKey, &str, &Outcome)>) -> $name {
                let mut t = $name::default();
                for (key, id, outcome) in entries {
                    t.push(key, id.into(), outcome.clone());
                }
                t
            }
        }
    };
}

dedup_tables!(
    Shared,
    SharedBucket,
    imbl::HashMap<Arc<str>, Outcome>,
    imbl::OrdMap<SessionId, SharedBucket>,
    imbl::Vector<(u64, Arc<str>)>,
    imbl::OrdMap<u64, BucketKey>
);
dedup_tables!(
    Owned,
    OwnedBucket,
    HashMap<Arc<str>, Outcome>,
    HashMap<SessionId, OwnedBucket>,
    VecDeque<(u64, Arc<str>)>,
    BTreeMap<u64, BucketKey>
);

#[derive(Clone, Debug)]
enum Tables {
    Shared(Shared),
    Owned(Owned),
}

/// Runs `$body` on whichever representation `$tables` holds, as `$t`.
macro_rules! each {
    ($tables:expr, $t:ident => $body:expr) => {
        match $tables {
            Tables::Shared($t) => $body,
            Tables::Owned($t) => $body,
        }
    };
}

/// The table: persistent while the daemon serves (see `dedup_tables!`),
/// owned std collections while replay builds it ([`Dedup::for_replay`]).
#[derive(Clone, Debug)]
pub struct Dedup {
    tables: Tables,
    /// Sum of `entry_bytes` over all entries.
    bytes: usize,
    bytes_max: usize,
}

impl Default for Dedup {
    fn default() -> Self {
        Dedup::with_bytes_max(DEDUP_BYTES_MAX)
    }
}

/// Equal tables remember the same outcomes in the same table-wide order;
/// the arrival numbers themselves are bookkeeping (a loaded snapshot
/// renumbers them), and so is the representation.
impl PartialEq for Dedup {
    fn eq(&self, other: &Self) -> bool {
        self.entries() == other.entries()
    }
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
    /// An empty table with its own byte budget; the daemon's is always
    /// [`DEDUP_BYTES_MAX`] (replay must forget what the live daemon forgot).
    pub(crate) fn with_bytes_max(bytes_max: usize) -> Self {
        Dedup {
            tables: Tables::Shared(Shared::default()),
            bytes: 0,
            bytes_max,
        }
    }

    /// Switches to the owned representation, for a replay of `records`
    /// records: O(entries), so only when the replay is long enough to win
    /// it back (each record is at most one insert).
    pub fn for_replay(&mut self, records: u64) {
        if let Tables::Shared(t) = &self.tables {
            if records >= 2 * self.entry_count() as u64 {
                self.tables = Tables::Owned(Owned::rebuilt(t.entries()));
            }
        }
    }

    /// Switches back to the persistent representation, which the running
    /// daemon needs for O(1) snapshot copies. O(entries).
    pub fn for_serving(&mut self) {
        if let Tables::Owned(t) = &self.tables {
            self.tables = Tables::Shared(Shared::rebuilt(t.entries()));
        }
    }

    /// True in the persistent representation (what `clone` copies in O(1)).
    pub fn is_shared(&self) -> bool {
        matches!(self.tables, Tables::Shared(_))
    }

    /// The remembered outcome of `request_id` from `session` (None: the
    /// session-less transaction bucket).
    pub fn lookup(&self, session: Option<SessionId>, request_id: &str) -> Option<&Outcome> {
        each!(&self.tables, t => t.lookup(session, request_id))
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

    /// Records an outcome already checked by `check_insert`. If the bucket
    /// is full its oldest entry goes; then, while the table is over its
    /// byte budget, the oldest entry of the whole table goes.
    pub fn insert(&mut self, session: Option<SessionId>, request_id: String, outcome: Outcome) {
        let max = match session {
            Some(_) => REQUESTS_PER_SESSION_MAX,
            None => TXN_REQUESTS_MAX,
        };
        if self.len(session) >= max {
            self.evict_oldest_of(session);
        }
        self.bytes += entry_bytes(&request_id, &outcome);
        let id: Arc<str> = request_id.into();
        let age = each!(&mut self.tables, t => t.push(session, id, outcome));
        while self.bytes > self.bytes_max {
            let Some(oldest) = each!(&self.tables, t => t.oldest()) else {
                break;
            };
            self.evict_oldest_of(oldest);
        }
        assert!(
            each!(&self.tables, t => t.has_age(age)),
            "an entry larger than the whole dedup budget"
        );
    }

    fn evict_oldest_of(&mut self, key: BucketKey) {
        if let Some((id, outcome)) = each!(&mut self.tables, t => t.pop_oldest_of(key)) {
            self.bytes -= entry_bytes(&id, &outcome);
        }
    }

    /// Forgets a closed session's outcomes: its id will never be reused, so
    /// nobody can ask for them again.
    pub fn drop_session(&mut self, session: SessionId) {
        self.bytes -= each!(&mut self.tables, t => t.drop_session(session));
    }

    /// The number of outcomes remembered for `session` (None: transactions).
    pub fn len(&self, session: Option<SessionId>) -> usize {
        each!(&self.tables, t => t.len(session))
    }

    /// The bytes charged for everything remembered (see [`entry_bytes`]).
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The sessions with remembered outcomes, for snapshot validation.
    pub(super) fn sessions(&self) -> Vec<SessionId> {
        each!(&self.tables, t => t.sessions())
    }

    /// Every entry, oldest first over the whole table: the persisted form,
    /// so both the per-bucket and the table-wide eviction order survive.
    fn entries(&self) -> Vec<(BucketKey, &str, &Outcome)> {
        each!(&self.tables, t => t.entries())
    }

    /// Entries remembered over the whole table.
    pub fn entry_count(&self) -> usize {
        each!(&self.tables, t => t.entry_count())
    }
}

#[derive(Serialize)]
struct DedupRef<'a> {
    entries: Vec<(BucketKey, &'a str, &'a Outcome)>,
}

#[derive(Deserialize)]
struct DedupRepr {
    entries: Vec<(BucketKey, String, Outcome)>,
}

impl Serialize for Dedup {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        DedupRef {
            entries: self.entries(),
        }
        .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Dedup {
    /// Rebuilds the table by inserting the entries oldest first, refusing
    /// (rather than evicting) anything over a limit: a snapshot this
    /// version wrote is always within them.
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let repr = DedupRepr::deserialize(deserializer)?;
        let mut dedup = Dedup::default();
        for (key, id, outcome) in repr.entries {
            check_request_id(&id).map_err(D::Error::custom)?;
            if dedup.lookup(key, &id).is_some() {
                return Err(D::Error::custom(format!("request id {id:?} listed twice")));
            }
            let max = match key {
                Some(_) => REQUESTS_PER_SESSION_MAX,
                None => TXN_REQUESTS_MAX,
            };
            if dedup.len(key) >= max {
                return Err(D::Error::custom(format!(
                    "more than {max} dedup entries in one bucket"
                )));
            }
            if dedup.bytes + entry_bytes(&id, &outcome) > dedup.bytes_max {
                return Err(D::Error::custom(format!(
                    "dedup entries exceed {} bytes",
                    dedup.bytes_max
                )));
            }
            dedup.insert(key, id, outcome);
        }
        Ok(dedup)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{decode, encode};
    use crate::state::LockMode;

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
        // Invariant: a snapshot listing a request twice, too many in one
        // bucket, or a malformed id is an error, not a corrupt table.
        let s = Some(SessionId(1));
        let twice = vec![
            (s, "r".to_string(), released(1)),
            (s, "r".to_string(), released(2)),
        ];
        assert!(decode::<Dedup>(&encode(&(twice,)).unwrap()).is_err());
        let many: Vec<_> = (0..=REQUESTS_PER_SESSION_MAX)
            .map(|i| (s, i.to_string(), released(1)))
            .collect();
        assert!(decode::<Dedup>(&encode(&(many,)).unwrap()).is_err());
        let bad_id: Vec<(BucketKey, String, Outcome)> = vec![(None, String::new(), released(1))];
        assert!(decode::<Dedup>(&encode(&(bad_id,)).unwrap()).is_err());
    }

    fn granted(names: usize) -> Outcome {
        let locks = (0..names)
            .map(|i| LockRequest::new(format!("lock{i:04}"), LockMode::Exclusive))
            .collect();
        Outcome::Granted {
            token: 1,
            lsn: 1,
            locks,
        }
    }

    #[test]
    fn byte_budget_evicts_the_oldest_entry_of_the_whole_table() {
        // Invariant: the bytes charged never exceed the budget; past it the
        // oldest entry overall goes first, whichever session owns it, and
        // the charge returns to 0 when everything is forgotten.
        let (a, b) = (Some(SessionId(1)), Some(SessionId(2)));
        let one = entry_bytes("a0", &released(0));
        let mut d = Dedup::with_bytes_max(4 * one);
        d.insert(a, "a0".into(), released(0));
        d.insert(b, "b0".into(), released(1));
        d.insert(None, "t0".into(), released(2));
        d.insert(a, "a1".into(), released(3));
        assert_eq!(d.bytes(), 4 * one);
        d.insert(b, "b1".into(), released(4));
        assert_eq!(d.lookup(a, "a0"), None, "the oldest overall goes");
        assert_eq!(d.lookup(a, "a1"), Some(&released(3)));
        assert_eq!(d.bytes(), 4 * one);
        // A large grant pushes out as many old entries as it needs.
        let big = granted(2);
        let need = entry_bytes("big", &big);
        let mut d2 = Dedup::with_bytes_max(need + one);
        d2.insert(a, "a0".into(), released(0));
        d2.insert(b, "b0".into(), released(1));
        d2.insert(a, "big".into(), big.clone());
        assert_eq!(d2.lookup(a, "a0"), None);
        assert_eq!(d2.lookup(b, "b0"), Some(&released(1)));
        assert_eq!(d2.lookup(a, "big"), Some(&big));
        assert!(d2.bytes() <= need + one);
        // Closing sessions and evicting give all bytes back.
        d2.drop_session(SessionId(2));
        d2.drop_session(SessionId(1));
        assert_eq!((d2.bytes(), d2.len(a), d2.len(b)), (0, 0, 0));
        assert_eq!(d2.entry_count(), 0);
    }

    #[test]
    fn table_order_survives_a_snapshot() {
        // Invariant: after decode(encode(d)), the next budget eviction
        // removes the same entry it would have removed in `d`.
        let (a, b) = (Some(SessionId(1)), Some(SessionId(2)));
        let mut d = Dedup::default();
        d.insert(b, "b0".into(), released(0));
        d.insert(a, "a0".into(), released(1));
        d.insert(b, "b1".into(), released(2));
        d.insert(None, "t0".into(), released(3));
        let mut back: Dedup = decode(&encode(&d).unwrap()).unwrap();
        assert_eq!(back, d);
        assert_eq!(back.bytes(), d.bytes());
        let bytes = d.bytes();
        d.bytes_max = bytes;
        back.bytes_max = bytes;
        d.insert(a, "a1".into(), released(4));
        back.insert(a, "a1".into(), released(4));
        assert_eq!(back, d);
        assert_eq!(d.lookup(b, "b0"), None);
        assert_eq!(d.lookup(a, "a0"), Some(&released(1)));
    }

    #[test]
    fn per_session_cap_and_budget_agree_on_bytes() {
        // Invariant: evicting by the per-bucket cap gives back exactly the
        // bytes the evicted entry was charged.
        let s = Some(SessionId(1));
        let mut d = Dedup::default();
        for i in 0..REQUESTS_PER_SESSION_MAX + 10 {
            d.insert(s, format!("r{i}"), granted(i % 3));
        }
        let expected: usize = (10..REQUESTS_PER_SESSION_MAX + 10)
            .map(|i| entry_bytes(&format!("r{i}"), &granted(i % 3)))
            .sum();
        assert_eq!(d.bytes(), expected);
        assert_eq!(d.entry_count(), REQUESTS_PER_SESSION_MAX);
    }

    /// One step of the representation-equivalence property.
    #[derive(Debug, Clone)]
    enum Step {
        Insert {
            session: Option<u8>,
            id: u8,
            names: usize,
        },
        DropSession(u8),
        /// Switch the second table's representation (replay ends, or a
        /// new replay starts).
        Switch,
    }

    fn step() -> impl proptest::strategy::Strategy<Value = Step> {
        use proptest::prelude::*;
        prop_oneof![
            8 => (proptest::option::of(0u8..4), 0u8..40, 0usize..3)
                .prop_map(|(session, id, names)| Step::Insert { session, id, names }),
            1 => (0u8..4).prop_map(Step::DropSession),
            1 => Just(Step::Switch),
        ]
    }

    proptest::proptest! {
        #[test]
        fn owned_and_shared_tables_behave_alike(
            steps in proptest::collection::vec(step(), 1..300),
            budget_entries in 3usize..30,
        ) {
            // Invariant: replay's owned representation and the daemon's
            // persistent one remember and forget exactly the same entries,
            // in the same order, with the same byte charge, whatever the
            // inserts, session drops, bucket limits, byte-budget evictions
            // and switches between them.
            let budget = budget_entries * entry_bytes("id00", &granted(1));
            let mut shared = Dedup::with_bytes_max(budget);
            let mut other = Dedup::with_bytes_max(budget);
            other.for_replay(u64::MAX);
            proptest::prop_assert!(!other.is_shared());
            for step in steps {
                match step {
                    Step::Insert { session, id, names } => {
                        let session = session.map(|s| SessionId(s.into()));
                        let id = format!("id{id:02}");
                        let outcome = granted(names);
                        let a = shared.check_insert(session, &id);
                        proptest::prop_assert_eq!(&a, &other.check_insert(session, &id));
                        if a.is_ok() {
                            shared.insert(session, id.clone(), outcome.clone());
                            other.insert(session, id, outcome);
                        }
                    }
                    Step::DropSession(s) => {
                        shared.drop_session(SessionId(s.into()));
                        other.drop_session(SessionId(s.into()));
                    }
                    Step::Switch => match other.is_shared() {
                        true => other.for_replay(u64::MAX),
                        false => other.for_serving(),
                    },
                }
                proptest::prop_assert_eq!(shared.entries(), other.entries());
                proptest::prop_assert_eq!(shared.bytes(), other.bytes());
                proptest::prop_assert!(shared.bytes() <= budget);
                for s in [None, Some(SessionId(0)), Some(SessionId(1))] {
                    proptest::prop_assert_eq!(shared.len(s), other.len(s));
                }
            }
        }
    }

    #[test]
    fn replay_switches_only_when_the_replay_outweighs_the_table() {
        // Invariant: switching costs O(entries), so a short replay onto a
        // large table keeps the persistent form; a long one switches; and
        // either way the table is unchanged.
        let mut d = Dedup::default();
        for i in 0..100 {
            d.insert(None, format!("t{i}"), released(i));
        }
        let before = d.clone();
        d.for_replay(199);
        assert!(d.is_shared());
        d.for_replay(200);
        assert!(!d.is_shared());
        assert_eq!(d, before);
        d.for_serving();
        assert!(d.is_shared());
        assert_eq!(d, before);
    }
}
