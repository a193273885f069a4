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

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, OnceLock};

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

/// The most entries one bucket holds.
fn bucket_max(key: BucketKey) -> usize {
    match key {
        Some(_) => REQUESTS_PER_SESSION_MAX,
        None => TXN_REQUESTS_MAX,
    }
}

/// Slots per chunk of a bucket's queue (65,536 transaction ids are 64
/// chunks). A copy of the table clones one `Arc` per chunk, on the lock
/// actor, and each is a cache miss: at 256 slots (256 chunks) the hand-over
/// took 8-113 µs per snapshot in `benches/run-big-config.sh`, against
/// 8-15 µs before. Larger chunks cost nothing while unshared (a chunk grows
/// by doubling, and removed slots are compacted, see [`Queue::pop_front`]);
/// while a snapshot shares one, up to `CHUNK_SLOTS - 1` removed slots per
/// bucket stay allocated until the snapshot is done.
const CHUNK_SLOTS: usize = 1_024;

/// One remembered request, with its table-wide arrival number (its age).
#[derive(Clone, Debug)]
struct Slot {
    age: u64,
    id: Arc<str>,
    outcome: Outcome,
}

/// One bucket's entries, oldest first, in chunks that a copy of the table
/// shares. Every removal from a bucket is its oldest entry (the per-bucket
/// cap and the byte budget both evict oldest first) or the whole bucket (a
/// closed session), so a queue only ever appends to its last chunk and
/// consumes its first one:
/// - appending writes the last chunk only while no copy shares it, and
///   otherwise starts a new one;
/// - removing advances `head` over the first chunk, and compacts it only
///   while no copy shares it.
///
/// So after a snapshot's copy neither side ever copies a chunk: the cost of
/// the copy is the chunk list, and the memory it pins is what the snapshot
/// holds anyway. (The persistent maps used before copied a path of nodes on
/// every change after a copy, until the live table had duplicated itself:
/// tens of MiB and most of the p99 under snapshots; see ARCHITECTURE.md.)
#[derive(Clone, Debug, Default)]
struct Queue {
    /// Never an empty chunk; `head < chunks[0].len()`.
    chunks: VecDeque<Arc<Vec<Slot>>>,
    /// Slots of `chunks[0]` already removed.
    head: usize,
    len: usize,
}

impl Queue {
    fn push(&mut self, slot: Slot) {
        match self.chunks.back_mut().and_then(Arc::get_mut) {
            Some(last) if last.len() < CHUNK_SLOTS => last.push(slot),
            _ => self.chunks.push_back(Arc::new(vec![slot])),
        }
        self.len += 1;
    }

    fn front(&self) -> Option<&Slot> {
        self.chunks.front().map(|c| &c[self.head])
    }

    fn back(&self) -> Option<&Slot> {
        self.chunks.back().and_then(|c| c.last())
    }

    /// Removes the oldest entry; answers its age, its id and the bytes it was
    /// charged.
    /// Removed slots stay in the first chunk until it is used up, or until
    /// they are half of it while no copy shares it: then they go (and the
    /// chunk shrinks), so a bucket holds at most as many removed slots as
    /// live ones in that chunk, plus whatever a snapshot in flight pins.
    fn pop_front(&mut self) -> Option<(u64, Arc<str>, usize)> {
        let first = self.chunks.front_mut()?;
        let slot = &first[self.head];
        let popped = (
            slot.age,
            slot.id.clone(),
            entry_bytes(&slot.id, &slot.outcome),
        );
        self.head += 1;
        self.len -= 1;
        if self.head == first.len() {
            self.chunks.pop_front();
            self.head = 0;
        } else if let Some(chunk) = Arc::get_mut(first) {
            if self.head * 2 >= chunk.len() {
                chunk.drain(..self.head);
                if chunk.capacity() >= 4 * chunk.len() {
                    chunk.shrink_to(2 * chunk.len());
                }
                self.head = 0;
            }
        }
        Some(popped)
    }

    /// The entry of `age`, by binary search (ages grow along the queue).
    fn get(&self, age: u64) -> Option<&Slot> {
        let chunk = self
            .chunks
            .partition_point(|c| c.last().is_some_and(|s| s.age < age));
        let slots = self.chunks.get(chunk)?;
        let from = if chunk == 0 { self.head } else { 0 };
        let i = slots[from..].binary_search_by_key(&age, |s| s.age).ok()?;
        Some(&slots[from + i])
    }

    fn iter(&self) -> impl Iterator<Item = &Slot> {
        let head = self.head;
        self.chunks
            .iter()
            .enumerate()
            .flat_map(move |(i, c)| &c[if i == 0 { head } else { 0 }..])
    }
}

/// Request id -> age, per bucket: what lookups use. Built only for a table
/// that is looked up (the live one); a snapshot's copy never is.
type Index = HashMap<BucketKey, HashMap<Arc<str>, u64>>;

/// The table: a [`Queue`] per bucket, the age of each bucket's oldest entry
/// (so the oldest of the whole table is the first of `heads`), and an id
/// index that only the live table keeps. Persistent maps (imbl) hold one
/// value per bucket, so a copy costs O(chunks) and no change to either side
/// copies more than a path of per-bucket nodes.
#[derive(Debug)]
pub struct Dedup {
    sessions: imbl::OrdMap<SessionId, Queue>,
    txn: Queue,
    /// Age of its oldest entry -> bucket, for every non-empty bucket.
    heads: imbl::OrdMap<u64, BucketKey>,
    next_age: u64,
    entries: usize,
    /// Sum of `entry_bytes` over all entries.
    bytes: usize,
    bytes_max: usize,
    /// Kept up to date once built; a clone starts without it.
    index: OnceLock<Index>,
}

impl Default for Dedup {
    fn default() -> Self {
        Dedup::with_bytes_max(DEDUP_BYTES_MAX)
    }
}

/// A copy shares every chunk and leaves the index behind: O(chunks), which
/// is what a snapshot's copy on the lock actor costs.
impl Clone for Dedup {
    fn clone(&self) -> Self {
        Dedup {
            sessions: self.sessions.clone(),
            txn: self.txn.clone(),
            heads: self.heads.clone(),
            index: OnceLock::new(),
            ..*self
        }
    }
}

/// Equal tables remember the same outcomes in the same table-wide order;
/// the arrival numbers themselves are bookkeeping (a loaded snapshot
/// renumbers them).
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
            sessions: imbl::OrdMap::new(),
            txn: Queue::default(),
            heads: imbl::OrdMap::new(),
            next_age: 0,
            entries: 0,
            bytes: 0,
            bytes_max,
            index: OnceLock::new(),
        }
    }

    fn queue(&self, key: BucketKey) -> Option<&Queue> {
        match key {
            Some(s) => self.sessions.get(&s),
            None => Some(&self.txn),
        }
    }

    /// Every bucket, the sessions' in id order, then the transactions'.
    fn buckets(&self) -> impl Iterator<Item = (BucketKey, &Queue)> {
        let sessions = self.sessions.iter().map(|(s, q)| (Some(*s), q));
        sessions.chain([(None, &self.txn)])
    }

    fn index(&self) -> &Index {
        self.index.get_or_init(|| {
            let mut index = Index::new();
            for (key, queue) in self.buckets() {
                let ids = queue.iter().map(|s| (s.id.clone(), s.age)).collect();
                index.insert(key, ids);
            }
            index
        })
    }

    /// The remembered outcome of `request_id` from `session` (None: the
    /// session-less transaction bucket).
    pub fn lookup(&self, session: Option<SessionId>, request_id: &str) -> Option<&Outcome> {
        let age = *self.index().get(&session)?.get(request_id)?;
        let slot = self.queue(session)?.get(age);
        debug_assert!(slot.is_some(), "the index names live entries");
        slot.map(|s| &s.outcome)
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
        if self.len(session) >= bucket_max(session) {
            self.evict_oldest_of(session);
        }
        self.bytes += entry_bytes(&request_id, &outcome);
        let id: Arc<str> = request_id.into();
        let age = self.next_age;
        self.next_age += 1;
        if let Some(index) = self.index.get_mut() {
            index.entry(session).or_default().insert(id.clone(), age);
        }
        let queue = match session {
            Some(s) => self.sessions.entry(s).or_default(),
            None => &mut self.txn,
        };
        if queue.len == 0 {
            self.heads.insert(age, session);
        }
        queue.push(Slot { age, id, outcome });
        self.entries += 1;
        while self.bytes > self.bytes_max {
            let Some((_, oldest)) = self.heads.get_min().copied() else {
                break;
            };
            self.evict_oldest_of(oldest);
        }
        assert!(
            self.queue(session)
                .and_then(Queue::back)
                .is_some_and(|s| s.age == age),
            "an entry larger than the whole dedup budget"
        );
    }

    /// Takes the oldest entry of one bucket out (a session's bucket left
    /// empty goes too).
    fn evict_oldest_of(&mut self, key: BucketKey) {
        let queue = match key {
            Some(s) => self.sessions.get_mut(&s),
            None => Some(&mut self.txn),
        };
        let Some(queue) = queue else { return };
        let Some((head, id, bytes)) = queue.pop_front() else {
            return;
        };
        let next = queue.front().map(|s| s.age);
        self.heads.remove(&head);
        match (next, key) {
            (Some(next), _) => {
                self.heads.insert(next, key);
            }
            (None, Some(s)) => {
                self.sessions.remove(&s);
            }
            (None, None) => {}
        }
        if let Some(index) = self.index.get_mut() {
            let ids = index.get_mut(&key).expect("an indexed bucket");
            ids.remove(&id);
            if ids.is_empty() && key.is_some() {
                index.remove(&key);
            }
        }
        self.entries -= 1;
        self.bytes -= bytes;
    }

    /// Forgets a closed session's outcomes: its id will never be reused, so
    /// nobody can ask for them again.
    pub fn drop_session(&mut self, session: SessionId) {
        let Some(queue) = self.sessions.remove(&session) else {
            return;
        };
        if let Some(head) = queue.front() {
            self.heads.remove(&head.age);
        }
        if let Some(index) = self.index.get_mut() {
            index.remove(&Some(session));
        }
        self.entries -= queue.len;
        self.bytes -= queue
            .iter()
            .map(|s| entry_bytes(&s.id, &s.outcome))
            .sum::<usize>();
    }

    /// The number of outcomes remembered for `session` (None: transactions).
    pub fn len(&self, session: Option<SessionId>) -> usize {
        self.queue(session).map_or(0, |q| q.len)
    }

    /// The bytes charged for everything remembered (see [`entry_bytes`]).
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The sessions with remembered outcomes, for snapshot validation.
    pub(super) fn sessions(&self) -> Vec<SessionId> {
        self.sessions.keys().copied().collect()
    }

    /// Every entry, oldest first over the whole table: the persisted form,
    /// so both the per-bucket and the table-wide eviction order survive.
    fn entries(&self) -> Vec<(BucketKey, &str, &Outcome)> {
        let mut all: Vec<(u64, BucketKey, &Slot)> = self
            .buckets()
            .flat_map(|(key, queue)| queue.iter().map(move |s| (s.age, key, s)))
            .collect();
        // Each bucket is one ascending run, which the stable sort merges.
        all.sort_by_key(|(age, ..)| *age);
        all.into_iter()
            .map(|(_, key, s)| (key, &*s.id, &s.outcome))
            .collect()
    }

    /// Entries remembered over the whole table.
    pub fn entry_count(&self) -> usize {
        self.entries
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
            let max = bucket_max(key);
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

    /// The table's rules stated as plainly as possible: every entry in one
    /// list, oldest first.
    #[derive(Clone, Debug)]
    struct Model {
        entries: VecDeque<(BucketKey, String, Outcome)>,
        bytes: usize,
        bytes_max: usize,
    }

    impl Model {
        fn remove(&mut self, i: usize) {
            let (_, id, o) = self.entries.remove(i).unwrap();
            self.bytes -= entry_bytes(&id, &o);
        }

        fn insert(&mut self, key: BucketKey, id: String, outcome: Outcome) {
            let max = match key {
                Some(_) => REQUESTS_PER_SESSION_MAX,
                None => TXN_REQUESTS_MAX,
            };
            if self.entries.iter().filter(|e| e.0 == key).count() >= max {
                let first = self.entries.iter().position(|e| e.0 == key).unwrap();
                self.remove(first);
            }
            self.bytes += entry_bytes(&id, &outcome);
            self.entries.push_back((key, id, outcome));
            while self.bytes > self.bytes_max {
                self.remove(0);
            }
        }
    }

    /// One step of the model property, on table `table` (modulo how many
    /// there are).
    #[derive(Debug, Clone)]
    enum Step {
        Insert {
            table: usize,
            session: Option<u8>,
            id: u8,
            names: usize,
        },
        /// Many inserts with fresh ids, to fill chunks.
        Burst {
            table: usize,
            session: Option<u8>,
            n: usize,
        },
        DropSession {
            table: usize,
            session: u8,
        },
        /// A snapshot's copy, which goes on changing independently.
        Copy {
            table: usize,
        },
        /// A snapshot written and loaded.
        RoundTrip {
            table: usize,
        },
    }

    fn step() -> impl proptest::strategy::Strategy<Value = Step> {
        use proptest::prelude::*;
        prop_oneof![
            16 => (0usize..4, proptest::option::of(0u8..4), 0u8..60, 0usize..3).prop_map(
                |(table, session, id, names)| Step::Insert { table, session, id, names }
            ),
            2 => (0usize..4, proptest::option::of(0u8..4), 0usize..1_200).prop_map(
                |(table, session, n)| Step::Burst { table, session, n }
            ),
            1 => (0usize..4, 0u8..4).prop_map(|(table, session)| Step::DropSession { table, session }),
            1 => (0usize..4).prop_map(|table| Step::Copy { table }),
            1 => (0usize..4).prop_map(|table| Step::RoundTrip { table }),
        ]
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
        #[test]
        fn the_table_behaves_like_one_list_and_copies_are_independent(
            steps in proptest::collection::vec(step(), 1..100),
            budget_entries in 3usize..2_500,
        ) {
            // Invariant: whatever the inserts, session drops, byte-budget
            // evictions, copies (sharing chunks) and snapshot round trips,
            // each table remembers exactly what the one-list model does, in
            // the same order with the same charge, answers the same lookups,
            // and changing one copy never changes another.
            let budget = budget_entries * entry_bytes("id00", &granted(1));
            let mut tables = vec![(
                Dedup::with_bytes_max(budget),
                Model { entries: VecDeque::new(), bytes: 0, bytes_max: budget },
            )];
            let mut fresh = 0u64;
            for step in steps {
                match step {
                    Step::Insert { table, session, id, names } => {
                        let n = tables.len();
                        let (d, m) = &mut tables[table % n];
                        let session = session.map(|s| SessionId(s.into()));
                        let id = format!("id{id:02}");
                        let known = m.entries.iter().any(|e| e.0 == session && e.1 == id);
                        proptest::prop_assert_eq!(d.check_insert(session, &id).is_err(), known);
                        if !known {
                            d.insert(session, id.clone(), granted(names));
                            m.insert(session, id, granted(names));
                        }
                    }
                    Step::Burst { table, session, n } => {
                        let count = tables.len();
                        let (d, m) = &mut tables[table % count];
                        let session = session.map(|s| SessionId(s.into()));
                        for _ in 0..n {
                            fresh += 1;
                            d.insert(session, format!("b{fresh}"), released(fresh));
                            m.insert(session, format!("b{fresh}"), released(fresh));
                        }
                    }
                    Step::DropSession { table, session } => {
                        let n = tables.len();
                        let (d, m) = &mut tables[table % n];
                        d.drop_session(SessionId(session.into()));
                        m.entries.retain(|e| e.0 != Some(SessionId(session.into())));
                        m.bytes = m.entries.iter().map(|(_, id, o)| entry_bytes(id, o)).sum();
                    }
                    Step::Copy { table } => {
                        let copy = tables[table % tables.len()].clone();
                        tables.push(copy);
                    }
                    Step::RoundTrip { table } => {
                        let n = tables.len();
                        let (d, _) = &mut tables[table % n];
                        let mut back: Dedup = decode(&encode(&*d).unwrap()).unwrap();
                        back.bytes_max = d.bytes_max;
                        *d = back;
                    }
                }
                for (d, m) in &tables {
                    let want: Vec<_> = m.entries.iter().map(|(k, id, o)| (*k, &**id, o)).collect();
                    proptest::prop_assert_eq!(d.entries(), want);
                    proptest::prop_assert_eq!(d.bytes(), m.bytes);
                    proptest::prop_assert!(d.bytes() <= budget);
                    proptest::prop_assert_eq!(d.entry_count(), m.entries.len());
                    for s in [None, Some(SessionId(0)), Some(SessionId(1))] {
                        let n = m.entries.iter().filter(|e| e.0 == s).count();
                        proptest::prop_assert_eq!(d.len(s), n);
                    }
                    for (k, id, o) in &m.entries {
                        proptest::prop_assert_eq!(d.lookup(*k, id), Some(o));
                    }
                    proptest::prop_assert_eq!(d.lookup(None, "absent"), None);
                }
            }
        }
    }

    #[test]
    fn a_copy_shares_chunks_and_changes_copy_none() {
        // Invariant: a copy costs one pointer per chunk, and after it the
        // live table's appends and evictions write no chunk the copy holds
        // (the point of the layout: no copy-on-write after a snapshot).
        let mut d = Dedup::default();
        for i in 0..10 * CHUNK_SLOTS as u64 {
            d.insert(None, format!("t{i}"), released(i));
        }
        let copy = d.clone();
        // The chunks the live table holds that are the copy's own.
        let shared = |d: &Dedup| {
            d.txn
                .chunks
                .iter()
                .filter(|c| copy.txn.chunks.iter().any(|k| Arc::ptr_eq(c, k)))
                .count()
        };
        assert_eq!(shared(&d), 10);
        let evicted = 3 * CHUNK_SLOTS + CHUNK_SLOTS / 2;
        for i in 0..evicted as u64 {
            d.insert(None, format!("u{i}"), released(i));
            d.evict_oldest_of(None);
        }
        // Three chunks used up, half of the fourth consumed in place, the
        // rest untouched: seven still shared, none copied.
        assert_eq!(shared(&d), 7);
        assert_eq!(copy.entry_count(), 10 * CHUNK_SLOTS);
        assert_eq!(copy.lookup(None, "t0"), Some(&released(0)));
        assert_eq!(d.lookup(None, "t0"), None);
        assert_eq!(
            d.lookup(None, &format!("t{evicted}")),
            Some(&released(evicted as u64))
        );
        assert_eq!(d.entry_count(), 10 * CHUNK_SLOTS);
    }

    #[test]
    fn removed_slots_do_not_accumulate_in_an_unshared_bucket() {
        // Invariant: with no copy alive, a bucket that keeps a few entries
        // while many pass through it holds about as many slots as entries.
        let s = Some(SessionId(1));
        let one = entry_bytes("r0000000", &released(0));
        let mut d = Dedup::with_bytes_max(3 * one);
        for i in 0..100_000u64 {
            d.insert(s, format!("r{i:07}"), released(i));
        }
        let q = d.sessions.get(&SessionId(1)).unwrap();
        let slots: usize = q.chunks.iter().map(|c| c.capacity()).sum();
        assert_eq!(q.len, 3);
        assert!(slots <= 16, "{slots} slots held for 3 entries");
    }
}
