//! The lock manager: who holds which named lock in which mode under which
//! fencing token (persisted), and who waits for what (live only).
//!
//! Semantics follow Ganeti's WConfD. Names are created on first use and
//! dropped when nobody holds or waits for them. Shared holders coexist, an
//! exclusive holder is alone. Requests are all-or-nothing. Waiters are served
//! by priority (-20 first, 19 last), then by arrival, and a waiter blocks every
//! later conflicting request, so a stream of shared requests cannot starve an
//! exclusive one. A one-shot config transaction waits in the same queue as
//! [`Requester::Txn`], so it takes `config` in its turn like any session.
//!
//! The decision functions (`try_acquire`, `try_acquire_opportunistic`,
//! `grantable_waiters`) read the live queue and the lock order; the apply
//! functions (`check_grant`/`grant`, `check_release`/`release`,
//! `release_session`) read only what the log knows, so replay needs neither.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};

use super::record::{LockMode, LockRequest, SessionId};
use super::StateError;

/// The longest lock name. Names are keys in every listing and record.
pub const LOCK_NAME_BYTES_MAX: usize = 256;
/// The most locks one request may ask for (or release at once explicitly,
/// other than "release all").
pub const LOCKS_PER_REQUEST_MAX: usize = 1_024;
/// The most distinct names held at once, over all sessions.
pub const LOCK_TABLE_LEN_MAX: usize = 1_000_000;
/// The most requests waiting at once.
pub const WAITERS_MAX: usize = 65_536;
/// The most lock requests summed over all waiters. Each release scans the
/// queue once, so this bounds the cost of that scan as well as memory.
pub const WAITING_LOCKS_MAX: usize = 1_000_000;
/// The most levels a [`LockOrder`] may name.
pub const LOCK_ORDER_LEVELS_MAX: usize = 64;
/// The most urgent priority, Unix-nice style: lower wins.
pub const PRIORITY_MIN: i8 = -20;
/// The least urgent priority.
pub const PRIORITY_MAX: i8 = 19;

/// How a session holds one lock.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hold {
    pub mode: LockMode,
    /// The token of the grant that last gave this lock to this session. It
    /// increases every time any lock changes hands, so a storage service can
    /// refuse writes carrying an older token.
    pub token: u64,
}

/// Identifies a waiting request; chosen by the caller (the daemon's request
/// counter), so the lock table stays free of hidden counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct WaiterId(pub u64);

/// Who asks for locks: a session, or the daemon itself on behalf of a
/// one-shot transaction (`POST /v1/config/txn`), which takes `config`,
/// applies its patch and releases in one record. A transaction is nobody's
/// session: it conflicts with every other requester, other transactions
/// included, and never holds anything between records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Requester {
    Session(SessionId),
    Txn,
}

impl Requester {
    pub fn session(self) -> Option<SessionId> {
        match self {
            Requester::Session(s) => Some(s),
            Requester::Txn => None,
        }
    }

    /// Whether `self` and `other` are different requesters, whose requests
    /// may conflict. Two transactions are always different.
    fn other_than(self, other: Requester) -> bool {
        self == Requester::Txn || self != other
    }
}

impl From<Option<SessionId>> for Requester {
    fn from(session: Option<SessionId>) -> Requester {
        session.map_or(Requester::Txn, Requester::Session)
    }
}

/// A session as its id; a transaction as `txn` (never a session id, which
/// is 32 hex digits).
impl fmt::Display for Requester {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Requester::Session(s) => s.fmt(f),
            Requester::Txn => f.write_str("txn"),
        }
    }
}

/// A request waiting for its locks. Live only: never in a record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Waiter {
    pub id: WaiterId,
    pub owner: Requester,
    /// All of these, or with `min`, the candidates.
    pub locks: Vec<LockRequest>,
    /// Opportunistic: granted as soon as at least `min` of `locks` can be
    /// taken, with whichever can be taken then.
    pub min: Option<usize>,
    /// -20 (most urgent) to 19.
    pub priority: i8,
    /// Arrival order, from the caller's counter; FIFO within a priority.
    pub seq: u64,
    /// When it started waiting (monotonic ms), for listings.
    pub enqueued_ms: u64,
    /// Carried so the Grant logged for it can be deduplicated.
    pub request_id: Option<String>,
}

/// Queue position: priority, then arrival, then id (ties are a caller bug
/// but must still order deterministically).
type WaitKey = (i8, u64, WaiterId);

/// Levels for names of the form `level/rest`: a session holding a lock at
/// level i may not newly acquire one at a level below i (Ganeti's lock
/// levels, which make deadlocks between ordered sessions impossible).
/// Names whose prefix is not a level, or without a `/`, are unconstrained.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LockOrder(Vec<String>);

impl LockOrder {
    pub fn new(levels: Vec<String>) -> Result<Self, StateError> {
        if levels.len() > LOCK_ORDER_LEVELS_MAX {
            return Err(StateError::RequestTooLarge {
                what: "lock order levels",
                len: levels.len(),
                max: LOCK_ORDER_LEVELS_MAX,
            });
        }
        let mut seen = BTreeSet::new();
        for level in &levels {
            check_lock_name(level)?;
            if level.contains('/') || !seen.insert(level.as_str()) {
                return Err(StateError::InvalidName {
                    what: "lock level",
                    reason: format!("{level:?} contains '/' or is listed twice"),
                });
            }
        }
        Ok(LockOrder(levels))
    }

    /// The level index of a name, if its prefix is a known level.
    pub fn level_of(&self, name: &str) -> Option<usize> {
        let (prefix, _) = name.split_once('/')?;
        self.0.iter().position(|l| l == prefix)
    }
}

/// The outcome of one pass over the waiters after locks were freed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GrantPass {
    /// Waiters that can be granted now, in the order to grant them. A
    /// [`Requester::Txn`] waiter is not granted but run: it takes and
    /// releases `config` in one record, so it holds nothing afterwards.
    pub grant: Vec<WaiterId>,
    /// For the opportunistic waiters in `grant`: the locks they take.
    pub taken: BTreeMap<WaiterId, Vec<LockRequest>>,
    /// Waiters that can never be granted as asked (their session meanwhile
    /// took a lock at a higher level); the caller fails them.
    pub refuse: Vec<(WaiterId, StateError)>,
}

#[derive(Clone, Debug, Default)]
pub struct LockTable {
    /// Persisted: name -> holders. An entry always has at least one holder.
    /// Persistent maps (here and below), so a snapshot's copy is O(1) and
    /// the lock actor never stalls on it; a holder set is small and cloned
    /// with its node on the first write after a copy.
    held: imbl::OrdMap<String, BTreeMap<SessionId, Hold>>,
    /// Derived from `held`: the names each session holds.
    by_session: imbl::OrdMap<SessionId, imbl::OrdSet<String>>,
    // Live only from here on.
    order: LockOrder,
    queue: BTreeMap<WaitKey, Waiter>,
    keys: BTreeMap<WaiterId, WaitKey>,
    /// name -> the waiters asking for it, in queue order, with their mode.
    waiting: BTreeMap<String, BTreeMap<WaitKey, (Requester, LockMode)>>,
    waiting_locks: usize,
    /// (requester, request id) -> the waiter carrying it, so a retry of a
    /// request that is still waiting is recognised instead of queued twice.
    waiting_requests: BTreeMap<(Requester, String), WaiterId>,
}

impl PartialEq for LockTable {
    fn eq(&self, other: &Self) -> bool {
        self.held == other.held
    }
}

/// Checks a lock name: non-empty UTF-8, bounded, no control characters (they
/// would corrupt logs and listings).
pub fn check_lock_name(name: &str) -> Result<(), StateError> {
    let reason = if name.is_empty() {
        "is empty".to_string()
    } else if name.len() > LOCK_NAME_BYTES_MAX {
        format!("is longer than {LOCK_NAME_BYTES_MAX} bytes")
    } else if name.chars().any(char::is_control) {
        "contains a control character".to_string()
    } else {
        return Ok(());
    };
    Err(StateError::InvalidName {
        what: "lock name",
        reason,
    })
}

pub fn check_priority(priority: i8) -> Result<(), StateError> {
    if (PRIORITY_MIN..=PRIORITY_MAX).contains(&priority) {
        Ok(())
    } else {
        Err(StateError::PriorityOutOfRange {
            priority,
            min: PRIORITY_MIN,
            max: PRIORITY_MAX,
        })
    }
}

/// Checks the shape of one request: bounded, valid names, each name once.
pub fn check_request(locks: &[LockRequest]) -> Result<(), StateError> {
    check_len("locks in a request", locks.len(), LOCKS_PER_REQUEST_MAX)?;
    check_names(locks.iter().map(|l| l.name.as_str()))
}

/// Checks a new acquire: its shape, and that it names at least one lock (an
/// empty one would log a Grant and spend a fencing token for nothing).
/// Replay checks only the shape, so logs from before this rule still load.
pub fn check_new_request(locks: &[LockRequest]) -> Result<(), StateError> {
    if locks.is_empty() {
        return Err(StateError::NoLocks);
    }
    check_request(locks)
}

fn check_len(what: &'static str, len: usize, max: usize) -> Result<(), StateError> {
    if len > max {
        return Err(StateError::RequestTooLarge { what, len, max });
    }
    Ok(())
}

fn check_names<'a>(names: impl Iterator<Item = &'a str>) -> Result<(), StateError> {
    let mut seen = BTreeSet::new();
    for name in names {
        check_lock_name(name)?;
        if !seen.insert(name) {
            return Err(StateError::DuplicateLock {
                name: name.to_string(),
            });
        }
    }
    Ok(())
}

impl LockTable {
    /// The persisted part only (holders); no waiters, no lock order.
    pub(crate) fn persisted_copy(&self) -> LockTable {
        LockTable {
            held: self.held.clone(),
            by_session: self.by_session.clone(),
            ..LockTable::default()
        }
    }

    /// Sets the lock order used by later decisions. Live configuration:
    /// records already granted are not re-checked.
    pub fn set_order(&mut self, order: LockOrder) {
        self.order = order;
    }

    pub fn order(&self) -> &LockOrder {
        &self.order
    }

    /// The number of distinct names held.
    pub fn len(&self) -> usize {
        self.held.len()
    }

    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    /// Every held name with its holders, in name order.
    pub fn held(&self) -> impl Iterator<Item = (&str, &BTreeMap<SessionId, Hold>)> {
        self.held.iter().map(|(n, h)| (n.as_str(), h))
    }

    pub fn holders_of(&self, name: &str) -> Option<&BTreeMap<SessionId, Hold>> {
        self.held.get(name)
    }

    /// What `session` holds, in name order.
    pub fn held_by(&self, session: SessionId) -> impl Iterator<Item = (&str, Hold)> + '_ {
        let names = self.by_session.get(&session).into_iter().flatten();
        names.map(move |n| (n.as_str(), self.held[n][&session]))
    }

    /// The waiters in the order they would be served.
    pub fn waiters(&self) -> impl Iterator<Item = &Waiter> {
        self.queue.values()
    }

    /// The number of waiters, without walking the queue.
    pub fn waiter_count(&self) -> usize {
        self.keys.len()
    }

    pub fn waiter(&self, id: WaiterId) -> Option<&Waiter> {
        self.keys.get(&id).map(|k| &self.queue[k])
    }

    /// The waiter carrying `request_id` of `owner`, if it is still waiting.
    pub fn waiting_request(&self, owner: Requester, request_id: &str) -> Option<WaiterId> {
        self.waiting_requests
            .get(&(owner, request_id.to_string()))
            .copied()
    }

    fn own_hold(&self, session: SessionId, name: &str) -> Option<Hold> {
        self.held.get(name).and_then(|h| h.get(&session)).copied()
    }

    /// Whether `session` already has at least `lock.mode` on `lock.name`, so
    /// asking again changes nothing and conflicts with nobody.
    fn covered(&self, session: SessionId, lock: &LockRequest) -> bool {
        self.own_hold(session, &lock.name)
            .is_some_and(|h| h.mode.covers(lock.mode))
    }

    /// Other sessions holding `lock.name` in a mode that conflicts with
    /// `lock.mode`.
    fn holder_conflicts<'a>(
        &'a self,
        session: Option<SessionId>,
        lock: &'a LockRequest,
    ) -> impl Iterator<Item = SessionId> + 'a {
        let holders = self.held.get(&lock.name).into_iter().flatten();
        holders
            .filter(move |(s, h)| Some(**s) != session && !h.mode.compatible(lock.mode))
            .map(|(s, _)| *s)
    }

    /// Refuses a request that would take a lock at a level below one the
    /// session holds. Locks already covered are not acquisitions and pass.
    fn check_order(&self, session: SessionId, locks: &[LockRequest]) -> Result<(), StateError> {
        self.check_order_with(session, locks, &[], &|l| self.covered(session, l))
    }

    /// `check_order` for a pass that has granted more than the table shows:
    /// `also_held` are levels granted earlier in the pass, and `covered`
    /// knows those grants too.
    fn check_order_with(
        &self,
        session: SessionId,
        locks: &[LockRequest],
        also_held: &[(usize, &str)],
        covered: &dyn Fn(&LockRequest) -> bool,
    ) -> Result<(), StateError> {
        let held_levels = self
            .by_session
            .get(&session)
            .into_iter()
            .flatten()
            .filter_map(|n| Some((self.order.level_of(n)?, n.as_str())));
        let Some((top, top_name)) = held_levels.chain(also_held.iter().copied()).max() else {
            return Ok(());
        };
        for lock in locks.iter().filter(|l| !covered(l)) {
            if let Some(level) = self.order.level_of(&lock.name) {
                if level < top {
                    return Err(StateError::OrderViolation {
                        held: top_name.to_string(),
                        requested: lock.name.clone(),
                    });
                }
            }
        }
        Ok(())
    }

    /// Waiters queued ahead of a new request of `owner` at `priority`
    /// whose locks conflict with `lock`. Everyone already waiting at the
    /// same or a more urgent priority is ahead of a newcomer.
    fn queued_conflicts<'a>(
        &'a self,
        owner: Requester,
        lock: &'a LockRequest,
        priority: i8,
    ) -> impl Iterator<Item = Requester> + 'a {
        let waiting = self.waiting.get(&lock.name).into_iter().flatten();
        let ahead = waiting
            .take_while(move |(key, _)| key.0 <= priority)
            .map(|(_, v)| *v);
        ahead
            .filter(move |(w, m)| w.other_than(owner) && !m.compatible(lock.mode))
            .map(|(w, _)| w)
    }

    /// Who would block `locks` for `owner` arriving now at `priority`:
    /// conflicting holders and conflicting waiters ahead (a waiting
    /// transaction shows as [`Requester::Txn`]). Sorted, without repeats;
    /// empty exactly when nothing blocks.
    pub fn blockers(
        &self,
        owner: Requester,
        locks: &[LockRequest],
        priority: i8,
    ) -> Vec<Requester> {
        let mut out = BTreeSet::new();
        for lock in locks {
            if owner.session().is_some_and(|s| self.covered(s, lock)) {
                continue;
            }
            let holders = self.holder_conflicts(owner.session(), lock);
            out.extend(holders.map(Requester::Session));
            out.extend(self.queued_conflicts(owner, lock, priority));
        }
        out.into_iter().collect()
    }

    /// Decides an all-or-nothing acquire: `Ok` if the caller may log a Grant
    /// for exactly `locks` now; `Blocked` if it must wait (or give up).
    pub fn try_acquire(
        &self,
        session: SessionId,
        locks: &[LockRequest],
        priority: i8,
    ) -> Result<(), StateError> {
        check_new_request(locks)?;
        check_priority(priority)?;
        self.check_order(session, locks)?;
        let blockers = self.blockers(Requester::Session(session), locks, priority);
        if !blockers.is_empty() {
            return Err(StateError::Blocked { blockers });
        }
        self.check_grant(session, locks)
    }

    /// Decides an opportunistic acquire: the candidates grantable right now
    /// (each judged alone, in the given order), or `None` if fewer than
    /// `min` are. Malformed requests are still errors.
    pub fn try_acquire_opportunistic(
        &self,
        session: SessionId,
        candidates: &[LockRequest],
        min: usize,
        priority: i8,
    ) -> Result<Option<Vec<LockRequest>>, StateError> {
        check_new_request(candidates)?;
        check_priority(priority)?;
        if min == 0 {
            return Err(StateError::MinOutOfRange {
                min,
                candidates: candidates.len(),
            });
        }
        let taken: Vec<LockRequest> = candidates
            .iter()
            .filter(|l| {
                let one = std::slice::from_ref(*l);
                self.check_order(session, one).is_ok()
                    && self
                        .blockers(Requester::Session(session), one, priority)
                        .is_empty()
            })
            .cloned()
            .collect();
        if taken.len() < min {
            return Ok(None);
        }
        self.check_grant(session, &taken)?;
        Ok(Some(taken))
    }

    /// Queues a request that could not be granted. It is checked as
    /// `try_acquire` would check it (except for blocking, of course); an
    /// opportunistic one as `try_acquire_opportunistic` would, and its
    /// `min` must not exceed its candidates.
    pub fn enqueue_waiter(&mut self, waiter: Waiter) -> Result<(), StateError> {
        check_new_request(&waiter.locks)?;
        check_priority(waiter.priority)?;
        match (waiter.owner, waiter.min) {
            (_, Some(min)) if min > waiter.locks.len() => {
                return Err(StateError::RequestTooLarge {
                    what: "minimum locks of an opportunistic request",
                    len: min,
                    max: waiter.locks.len(),
                })
            }
            (Requester::Txn, Some(_)) => {
                let reason = "a transaction waits for all its locks".to_string();
                return Err(StateError::InvalidRecord { reason });
            }
            (Requester::Session(s), None) => self.check_order(s, &waiter.locks)?,
            (Requester::Session(_), Some(_)) | (Requester::Txn, None) => {}
        }
        if self.keys.contains_key(&waiter.id) {
            return Err(StateError::WaiterExists { waiter: waiter.id });
        }
        if let Some(id) = &waiter.request_id {
            if self.waiting_request(waiter.owner, id).is_some() {
                return Err(StateError::DuplicateRequest {
                    request_id: id.clone(),
                });
            }
        }
        if self.queue.len() >= WAITERS_MAX {
            return Err(StateError::Full {
                what: "waiters",
                max: WAITERS_MAX,
            });
        }
        if self.waiting_locks + waiter.locks.len() > WAITING_LOCKS_MAX {
            return Err(StateError::Full {
                what: "waiting locks",
                max: WAITING_LOCKS_MAX,
            });
        }
        let key = (waiter.priority, waiter.seq, waiter.id);
        for lock in &waiter.locks {
            let by_name = self.waiting.entry(lock.name.clone()).or_default();
            by_name.insert(key, (waiter.owner, lock.mode));
        }
        self.waiting_locks += waiter.locks.len();
        if let Some(request_id) = &waiter.request_id {
            self.waiting_requests
                .insert((waiter.owner, request_id.clone()), waiter.id);
        }
        self.keys.insert(waiter.id, key);
        self.queue.insert(key, waiter);
        Ok(())
    }

    /// Removes a waiter (granted, timed out, or its client went away) and
    /// returns it. After a cancel the caller runs `grantable_waiters` again:
    /// the cancelled waiter may have been blocking later ones.
    pub fn cancel_waiter(&mut self, id: WaiterId) -> Option<Waiter> {
        let key = self.keys.remove(&id)?;
        let waiter = self.queue.remove(&key).expect("keys and queue agree");
        for lock in &waiter.locks {
            if let Some(by_name) = self.waiting.get_mut(&lock.name) {
                by_name.remove(&key);
                if by_name.is_empty() {
                    self.waiting.remove(&lock.name);
                }
            }
        }
        self.waiting_locks -= waiter.locks.len();
        if let Some(request_id) = &waiter.request_id {
            self.waiting_requests
                .remove(&(waiter.owner, request_id.clone()));
        }
        Some(waiter)
    }

    /// One pass over the queue in service order: a waiter is grantable if no
    /// other requester holds a conflicting lock and no waiter ahead of it
    /// (of another requester) asks for a conflicting one; an opportunistic
    /// waiter if at least `min` of its candidates are free in that sense,
    /// and it takes those. Waiters granted earlier in the pass count as
    /// granted for later ones (as holders, and as making a re-ask a no-op),
    /// so the caller can log and apply the Grants in the returned order,
    /// each passes `check_grant`, and granting never frees anything: one
    /// pass after each release, downgrade, close or cancel finds everything
    /// grantable. A transaction granted in the pass holds nothing after its
    /// one record, so it blocks nobody behind it.
    pub fn grantable_waiters(&self) -> GrantPass {
        let mut pass = GrantPass::default();
        // name -> (requester, mode) of the waiters seen so far, as they
        // still want or now hold them.
        let mut ahead: BTreeMap<&str, Vec<(Requester, LockMode)>> = BTreeMap::new();
        // What this pass granted, per session: modes by name, and levels.
        let mut granted: BTreeMap<(SessionId, &str), LockMode> = BTreeMap::new();
        let mut granted_levels: BTreeMap<SessionId, Vec<(usize, &str)>> = BTreeMap::new();
        for w in self.queue.values() {
            let session = w.owner.session();
            let covered = |l: &LockRequest| {
                session.is_some_and(|s| {
                    self.covered(s, l)
                        || granted
                            .get(&(s, l.name.as_str()))
                            .is_some_and(|m| m.covers(l.mode))
                })
            };
            let also = session
                .and_then(|s| granted_levels.get(&s))
                .map(Vec::as_slice)
                .unwrap_or(&[]);
            let order_ok = |locks: &[LockRequest]| match session {
                Some(s) => self.check_order_with(s, locks, also, &covered),
                None => Ok(()),
            };
            let free = |l: &LockRequest| {
                covered(l)
                    || (self.holder_conflicts(session, l).next().is_none()
                        && !ahead.get(l.name.as_str()).is_some_and(|v| {
                            v.iter()
                                .any(|(o, m)| o.other_than(w.owner) && !m.compatible(l.mode))
                        }))
            };
            let taken: Option<Vec<&LockRequest>> = match w.min {
                None => {
                    if let Err(e) = order_ok(&w.locks) {
                        pass.refuse.push((w.id, e));
                        continue;
                    }
                    w.locks.iter().all(free).then(|| w.locks.iter().collect())
                }
                Some(min) => {
                    let taken: Vec<&LockRequest> = w
                        .locks
                        .iter()
                        .filter(|l| order_ok(std::slice::from_ref(*l)).is_ok() && free(l))
                        .collect();
                    (taken.len() >= min).then_some(taken)
                }
            };
            let still_wants: Vec<&LockRequest> = match taken {
                None => w.locks.iter().collect(),
                Some(_) if w.owner == Requester::Txn => {
                    pass.grant.push(w.id);
                    continue;
                }
                Some(taken) => {
                    pass.grant.push(w.id);
                    if w.min.is_some() {
                        let locks = taken.iter().map(|l| (*l).clone()).collect();
                        pass.taken.insert(w.id, locks);
                    }
                    let s = session.expect("only transactions have no session");
                    for l in &taken {
                        let mode = granted.entry((s, l.name.as_str())).or_insert(l.mode);
                        *mode = (*mode).max(l.mode);
                        if let Some(level) = self.order.level_of(&l.name) {
                            granted_levels.entry(s).or_default().push((level, &l.name));
                        }
                    }
                    taken
                }
            };
            for l in still_wants {
                ahead
                    .entry(l.name.as_str())
                    .or_default()
                    .push((w.owner, l.mode));
            }
        }
        pass
    }

    /// Checks that a Grant of `locks` to `session` is consistent with what
    /// is held: nothing conflicts and the table has room. Used by apply.
    pub fn check_grant(&self, session: SessionId, locks: &[LockRequest]) -> Result<(), StateError> {
        check_request(locks)?;
        let mut new_names = 0;
        for lock in locks {
            if let Some(holder) = self.holder_conflicts(Some(session), lock).next() {
                return Err(StateError::Conflict {
                    name: lock.name.clone(),
                    holder,
                });
            }
            new_names += usize::from(!self.held.contains_key(&lock.name));
        }
        if self.held.len() + new_names > LOCK_TABLE_LEN_MAX {
            return Err(StateError::Full {
                what: "lock table",
                max: LOCK_TABLE_LEN_MAX,
            });
        }
        Ok(())
    }

    /// Applies a Grant already checked by `check_grant`. A lock held in a
    /// mode that covers the request keeps its mode; every lock in the grant
    /// takes the new token.
    pub fn grant(&mut self, session: SessionId, locks: &[LockRequest], token: u64) {
        for lock in locks {
            let holders = self.held.entry(lock.name.clone()).or_default();
            let mode = match holders.get(&session) {
                Some(h) if h.mode.covers(lock.mode) => h.mode,
                _ => lock.mode,
            };
            holders.insert(session, Hold { mode, token });
            self.by_session
                .entry(session)
                .or_default()
                .insert(lock.name.clone());
        }
    }

    /// Checks a Release: every name is held by `session`, appears once
    /// across both lists, and every downgraded one is held exclusively.
    /// Releasing what one does not hold is refused rather than ignored: it
    /// means the client's idea of its locks is wrong, which it must learn.
    pub fn check_release(
        &self,
        session: SessionId,
        release: &[String],
        downgrade: &[String],
    ) -> Result<(), StateError> {
        check_len(
            "locks to release",
            release.len() + downgrade.len(),
            LOCK_TABLE_LEN_MAX,
        )?;
        check_names(release.iter().chain(downgrade).map(String::as_str))?;
        for name in release.iter().chain(downgrade) {
            if self.own_hold(session, name).is_none() {
                return Err(StateError::NotHeld { name: name.clone() });
            }
        }
        for name in downgrade {
            if self
                .own_hold(session, name)
                .is_some_and(|h| h.mode != LockMode::Exclusive)
            {
                return Err(StateError::NotExclusive { name: name.clone() });
            }
        }
        Ok(())
    }

    /// Applies a Release already checked by `check_release`. A downgrade
    /// keeps the token: the lock did not change hands.
    pub fn release(&mut self, session: SessionId, release: &[String], downgrade: &[String]) {
        for name in release {
            self.drop_hold(session, name);
        }
        for name in downgrade {
            if let Some(h) = self.held.get_mut(name).and_then(|h| h.get_mut(&session)) {
                h.mode = LockMode::Shared;
            }
        }
    }

    fn drop_hold(&mut self, session: SessionId, name: &str) {
        if let Some(holders) = self.held.get_mut(name) {
            holders.remove(&session);
            if holders.is_empty() {
                self.held.remove(name);
            }
        }
        if let Some(names) = self.by_session.get_mut(&session) {
            names.remove(name);
            if names.is_empty() {
                self.by_session.remove(&session);
            }
        }
    }

    /// Drops everything of a closing session: its holds (returned, in name
    /// order) and its waiters (returned, in queue order; their requests fail).
    pub fn release_session(&mut self, session: SessionId) -> (Vec<String>, Vec<WaiterId>) {
        let names: Vec<String> = self
            .by_session
            .get(&session)
            .into_iter()
            .flatten()
            .cloned()
            .collect();
        for name in &names {
            self.drop_hold(session, name);
        }
        let waiters: Vec<WaiterId> = self
            .queue
            .values()
            .filter(|w| w.owner == Requester::Session(session))
            .map(|w| w.id)
            .collect();
        for id in &waiters {
            self.cancel_waiter(*id);
        }
        (names, waiters)
    }

    /// The largest token of any hold, for snapshot validation.
    pub(super) fn max_token(&self) -> Option<u64> {
        self.held
            .values()
            .flat_map(|h| h.values())
            .map(|h| h.token)
            .max()
    }

    /// The sessions holding anything, for snapshot validation.
    pub(super) fn sessions(&self) -> impl Iterator<Item = SessionId> + '_ {
        self.by_session.keys().copied()
    }
}

// Only holds are persisted. Loading re-checks what `grant` guarantees, so a
// hostile snapshot cannot create conflicting holders or an oversized table.
impl Serialize for LockTable {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.held.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for LockTable {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let held = BTreeMap::<String, BTreeMap<SessionId, Hold>>::deserialize(deserializer)?;
        if held.len() > LOCK_TABLE_LEN_MAX {
            return Err(D::Error::custom(
                "lock table longer than LOCK_TABLE_LEN_MAX",
            ));
        }
        let mut table = LockTable::default();
        for (name, holders) in held {
            check_lock_name(&name).map_err(D::Error::custom)?;
            let exclusive = holders.values().any(|h| h.mode == LockMode::Exclusive);
            if holders.is_empty() || (exclusive && holders.len() > 1) {
                return Err(D::Error::custom(format!(
                    "lock {name:?} has impossible holders"
                )));
            }
            for session in holders.keys() {
                table
                    .by_session
                    .entry(*session)
                    .or_default()
                    .insert(name.clone());
            }
            table.held.insert(name, holders);
        }
        Ok(table)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use LockMode::{Exclusive as X, Shared as S};

    fn sid(n: u128) -> SessionId {
        SessionId(n)
    }

    fn req(name: &str, mode: LockMode) -> LockRequest {
        LockRequest::new(name, mode)
    }

    fn who(n: u128) -> Requester {
        Requester::Session(sid(n))
    }

    /// Decides and applies at once, the way the daemon does.
    fn acquire(
        t: &mut LockTable,
        s: u128,
        locks: &[LockRequest],
        token: u64,
    ) -> Result<(), StateError> {
        t.try_acquire(sid(s), locks, 0)?;
        t.grant(sid(s), locks, token);
        Ok(())
    }

    fn waiter(id: u64, s: u128, locks: Vec<LockRequest>, priority: i8, seq: u64) -> Waiter {
        Waiter {
            id: WaiterId(id),
            owner: Requester::Session(sid(s)),
            locks,
            min: None,
            priority,
            seq,
            enqueued_ms: 0,
            request_id: None,
        }
    }

    #[test]
    fn shared_coexists_exclusive_is_alone() {
        // Invariant: shared holders coexist; exclusive excludes everyone else.
        let mut t = LockTable::default();
        acquire(&mut t, 1, &[req("a", S)], 1).unwrap();
        acquire(&mut t, 2, &[req("a", S)], 2).unwrap();
        let e = acquire(&mut t, 3, &[req("a", X)], 3);
        assert_eq!(
            e,
            Err(StateError::Blocked {
                blockers: vec![who(1), who(2)]
            })
        );
        acquire(&mut t, 3, &[req("b", X)], 3).unwrap();
        assert!(acquire(&mut t, 1, &[req("b", S)], 4).is_err());
    }

    #[test]
    fn all_or_nothing() {
        // Invariant: a refused request takes none of its locks.
        let mut t = LockTable::default();
        acquire(&mut t, 1, &[req("b", X)], 1).unwrap();
        assert!(acquire(&mut t, 2, &[req("a", X), req("b", X)], 2).is_err());
        assert!(t.holders_of("a").is_none());
    }

    #[test]
    fn reacquire_is_noop_and_upgrade_needs_sole_holder() {
        // Invariant: re-asking for a covered mode succeeds; shared->exclusive
        // succeeds only for the sole holder.
        let mut t = LockTable::default();
        acquire(&mut t, 1, &[req("a", X)], 1).unwrap();
        acquire(&mut t, 1, &[req("a", S)], 2).unwrap();
        assert_eq!(
            t.holders_of("a").unwrap()[&sid(1)],
            Hold { mode: X, token: 2 }
        );
        acquire(&mut t, 1, &[req("b", S)], 3).unwrap();
        acquire(&mut t, 1, &[req("b", X)], 4).unwrap();
        acquire(&mut t, 2, &[req("c", S)], 5).unwrap();
        acquire(&mut t, 1, &[req("c", S)], 6).unwrap();
        let e = acquire(&mut t, 1, &[req("c", X)], 7);
        assert_eq!(
            e,
            Err(StateError::Blocked {
                blockers: vec![who(2)]
            })
        );
    }

    #[test]
    fn malformed_requests_are_refused() {
        // Invariant: bad names, duplicates, oversized lists and priorities
        // are errors, never panics, and take nothing.
        let t = LockTable::default();
        let long = "n".repeat(LOCK_NAME_BYTES_MAX + 1);
        for bad in [
            vec![req("", S)],
            vec![req(&long, S)],
            vec![req("a\u{7}", S)],
        ] {
            assert!(matches!(
                t.try_acquire(sid(1), &bad, 0),
                Err(StateError::InvalidName { .. })
            ));
        }
        let dup = t.try_acquire(sid(1), &[req("a", S), req("a", X)], 0);
        assert_eq!(dup, Err(StateError::DuplicateLock { name: "a".into() }));
        let many: Vec<_> = (0..=LOCKS_PER_REQUEST_MAX)
            .map(|i| req(&i.to_string(), S))
            .collect();
        assert!(matches!(
            t.try_acquire(sid(1), &many, 0),
            Err(StateError::RequestTooLarge { .. })
        ));
        let prio = t.try_acquire(sid(1), &[req("a", S)], 20);
        assert!(matches!(prio, Err(StateError::PriorityOutOfRange { .. })));
        assert!(t
            .try_acquire(sid(1), &[req("ünïcode/名前", S)], PRIORITY_MIN)
            .is_ok());
    }

    #[test]
    fn release_and_downgrade_rules() {
        // Invariant: release/downgrade of what one does not hold (or hold
        // only shared, for downgrade) is refused and changes nothing.
        let mut t = LockTable::default();
        acquire(&mut t, 1, &[req("a", X), req("b", S)], 1).unwrap();
        let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let e = t.check_release(sid(1), &names(&["a", "z"]), &[]);
        assert_eq!(e, Err(StateError::NotHeld { name: "z".into() }));
        assert_eq!(
            t.check_release(sid(2), &names(&["a"]), &[]),
            Err(StateError::NotHeld { name: "a".into() })
        );
        let e = t.check_release(sid(1), &[], &names(&["b"]));
        assert_eq!(e, Err(StateError::NotExclusive { name: "b".into() }));
        let e = t.check_release(sid(1), &names(&["a"]), &names(&["a"]));
        assert_eq!(e, Err(StateError::DuplicateLock { name: "a".into() }));
        t.check_release(sid(1), &names(&["b"]), &names(&["a"]))
            .unwrap();
        t.release(sid(1), &names(&["b"]), &names(&["a"]));
        assert_eq!(
            t.holders_of("a").unwrap()[&sid(1)],
            Hold { mode: S, token: 1 }
        );
        assert!(t.holders_of("b").is_none());
        acquire(&mut t, 2, &[req("a", S)], 2).unwrap();
    }

    #[test]
    fn waiting_exclusive_blocks_later_shared() {
        // Invariant: no starvation: once an exclusive request waits, later
        // shared requests at the same or lower urgency wait behind it, while
        // a more urgent one may pass.
        let mut t = LockTable::default();
        acquire(&mut t, 1, &[req("a", S)], 1).unwrap();
        t.enqueue_waiter(waiter(10, 2, vec![req("a", X)], 0, 1))
            .unwrap();
        let e = t.try_acquire(sid(3), &[req("a", S)], 0);
        assert_eq!(
            e,
            Err(StateError::Blocked {
                blockers: vec![who(2)]
            })
        );
        assert!(t.try_acquire(sid(3), &[req("a", S)], 5).is_err());
        assert!(t.try_acquire(sid(3), &[req("a", S)], -1).is_ok());
        // The holder itself re-asking is a no-op and is not blocked.
        assert!(t.try_acquire(sid(1), &[req("a", S)], 0).is_ok());
        assert_eq!(t.grantable_waiters(), GrantPass::default());
        t.release(sid(1), &["a".to_string()], &[]);
        assert_eq!(t.grantable_waiters().grant, vec![WaiterId(10)]);
    }

    #[test]
    fn pass_grants_compatible_waiters_in_order() {
        // Invariant: one pass grants every waiter not blocked by a holder or
        // by a conflicting waiter ahead, and later grants see earlier ones.
        let mut t = LockTable::default();
        acquire(&mut t, 9, &[req("a", X)], 1).unwrap();
        t.enqueue_waiter(waiter(1, 1, vec![req("a", S)], 0, 1))
            .unwrap();
        t.enqueue_waiter(waiter(2, 2, vec![req("a", S)], 0, 2))
            .unwrap();
        t.enqueue_waiter(waiter(3, 3, vec![req("a", X)], 0, 3))
            .unwrap();
        t.enqueue_waiter(waiter(4, 4, vec![req("a", S)], 0, 4))
            .unwrap();
        t.enqueue_waiter(waiter(5, 5, vec![req("b", X)], 0, 5))
            .unwrap();
        t.enqueue_waiter(waiter(6, 6, vec![req("a", S)], -5, 6))
            .unwrap();
        let pass = t.grantable_waiters();
        assert_eq!(pass.grant, vec![WaiterId(5)]);
        t.release(sid(9), &["a".to_string()], &[]);
        let pass = t.grantable_waiters();
        assert_eq!(
            pass.grant,
            vec![WaiterId(6), WaiterId(1), WaiterId(2), WaiterId(5)]
        );
        for id in pass.grant {
            let w = t.cancel_waiter(id).unwrap();
            let s = w.owner.session().unwrap();
            t.check_grant(s, &w.locks).unwrap();
            t.grant(s, &w.locks, 10 + id.0);
        }
        assert!(t.grantable_waiters().grant.is_empty());
        let (names, waiters) = t.release_session(sid(1));
        assert_eq!((names, waiters), (vec!["a".to_string()], vec![]));
    }

    #[test]
    fn reask_made_noop_earlier_in_the_same_pass_is_granted_in_that_pass() {
        // Invariant: one pass finds everything grantable, even a waiter that
        // a conflicting waiter ahead would block but whose locks its own
        // session was granted earlier in the pass. (Found by the proptest.)
        let mut t = LockTable::default();
        acquire(&mut t, 9, &[req("a", X)], 1).unwrap();
        t.enqueue_waiter(waiter(1, 1, vec![req("a", S)], -1, 1))
            .unwrap();
        t.enqueue_waiter(waiter(2, 2, vec![req("a", X)], 0, 2))
            .unwrap();
        t.enqueue_waiter(waiter(3, 1, vec![req("a", S)], 0, 3))
            .unwrap();
        t.release(sid(9), &["a".to_string()], &[]);
        assert_eq!(t.grantable_waiters().grant, vec![WaiterId(1), WaiterId(3)]);
    }

    #[test]
    fn cancelling_a_blocking_waiter_unblocks_later_ones() {
        // Invariant: a cancelled waiter stops blocking; its names are
        // forgotten when nobody else waits for them.
        let mut t = LockTable::default();
        acquire(&mut t, 1, &[req("a", S)], 1).unwrap();
        t.enqueue_waiter(waiter(1, 2, vec![req("a", X), req("b", X)], 0, 1))
            .unwrap();
        t.enqueue_waiter(waiter(2, 3, vec![req("b", S)], 0, 2))
            .unwrap();
        assert!(t.grantable_waiters().grant.is_empty());
        assert_eq!(t.cancel_waiter(WaiterId(1)).unwrap().owner, who(2));
        assert_eq!(t.cancel_waiter(WaiterId(1)), None);
        assert_eq!(t.grantable_waiters().grant, vec![WaiterId(2)]);
        t.cancel_waiter(WaiterId(2));
        assert!(t.waiting.is_empty() && t.waiting_locks == 0);
    }

    #[test]
    fn waiter_limits_and_ids() {
        // Invariant: duplicate waiter ids are refused; queue is bounded.
        let mut t = LockTable::default();
        t.enqueue_waiter(waiter(1, 1, vec![req("a", X)], 0, 1))
            .unwrap();
        let e = t.enqueue_waiter(waiter(1, 1, vec![req("a", X)], 0, 2));
        assert_eq!(
            e,
            Err(StateError::WaiterExists {
                waiter: WaiterId(1)
            })
        );
        for i in 2..=WAITERS_MAX as u64 {
            t.enqueue_waiter(waiter(i, 1, vec![req("a", S)], 0, i))
                .unwrap();
        }
        let e = t.enqueue_waiter(waiter(0, 1, vec![req("a", S)], 0, 0));
        assert_eq!(
            e,
            Err(StateError::Full {
                what: "waiters",
                max: WAITERS_MAX
            })
        );
    }

    #[test]
    fn opportunistic_takes_free_or_nothing() {
        // Invariant: opportunistic acquire returns exactly the individually
        // grantable candidates, or None when fewer than `min`.
        let mut t = LockTable::default();
        acquire(&mut t, 1, &[req("b", X)], 1).unwrap();
        let c = [req("a", X), req("b", S), req("c", S)];
        let got = t.try_acquire_opportunistic(sid(2), &c, 2, 0).unwrap();
        assert_eq!(got, Some(vec![req("a", X), req("c", S)]));
        assert_eq!(t.try_acquire_opportunistic(sid(2), &c, 3, 0).unwrap(), None);
    }

    #[test]
    fn lock_order_is_enforced_across_requests() {
        // Invariant: holding a lock at level i forbids newly taking one at a
        // level below i; several levels in one request, same level, covered
        // re-asks and unknown prefixes are fine.
        let mut t = LockTable::default();
        let order =
            LockOrder::new(vec!["cluster".into(), "node".into(), "instance".into()]).unwrap();
        t.set_order(order);
        acquire(&mut t, 1, &[req("instance/i1", X), req("cluster/c", S)], 1).unwrap();
        let e = acquire(&mut t, 1, &[req("node/n1", S)], 2);
        let violation = StateError::OrderViolation {
            held: "instance/i1".into(),
            requested: "node/n1".into(),
        };
        assert_eq!(e, Err(violation));
        acquire(
            &mut t,
            1,
            &[req("instance/i2", X), req("other/x", X), req("plain", X)],
            3,
        )
        .unwrap();
        acquire(&mut t, 1, &[req("cluster/c", S)], 4).unwrap();
        assert!(acquire(&mut t, 1, &[req("cluster/c", X)], 5).is_err());
        assert!(LockOrder::new(vec!["a".into(), "a".into()]).is_err());
        assert!(LockOrder::new(vec!["a/b".into()]).is_err());
    }

    #[test]
    fn waiter_refused_when_order_became_violated() {
        // Invariant: a waiter whose session meanwhile took a higher level is
        // refused by the pass, not granted.
        let mut t = LockTable::default();
        t.set_order(LockOrder::new(vec!["node".into(), "instance".into()]).unwrap());
        acquire(&mut t, 2, &[req("node/n", X)], 1).unwrap();
        t.enqueue_waiter(waiter(1, 1, vec![req("node/n", S)], 0, 1))
            .unwrap();
        acquire(&mut t, 1, &[req("instance/i", X)], 2).unwrap();
        t.release(sid(2), &["node/n".to_string()], &[]);
        let pass = t.grantable_waiters();
        assert!(pass.grant.is_empty());
        assert_eq!(pass.refuse.len(), 1);
    }

    #[test]
    fn snapshot_refuses_impossible_holders() {
        // Invariant: a loaded table never has two holders of an exclusive
        // lock, and it round-trips.
        let mut t = LockTable::default();
        acquire(&mut t, 1, &[req("a", X)], 1).unwrap();
        let bytes = crate::codec::encode(&t).unwrap();
        let back: LockTable = crate::codec::decode(&bytes).unwrap();
        assert_eq!(back, t);
        assert_eq!(
            back.held_by(sid(1)).collect::<Vec<_>>(),
            vec![("a", Hold { mode: X, token: 1 })]
        );
        let mut bad = BTreeMap::new();
        let holders: BTreeMap<_, _> = [
            (sid(1), Hold { mode: X, token: 1 }),
            (sid(2), Hold { mode: S, token: 2 }),
        ]
        .into();
        bad.insert("a".to_string(), holders);
        let bytes = crate::codec::encode(&bad).unwrap();
        assert!(crate::codec::decode::<LockTable>(&bytes).is_err());
    }

    #[derive(Clone, Debug)]
    enum Op {
        Acquire {
            s: u8,
            locks: Vec<(u8, bool)>,
            priority: i8,
        },
        /// Opportunistic: at least `min` of `locks`, waiting if fewer.
        Opportunistic {
            s: u8,
            locks: Vec<(u8, bool)>,
            min: u8,
            priority: i8,
        },
        /// A one-shot transaction on `l0`, the stand-in for `config`.
        Txn {
            priority: i8,
        },
        Release {
            s: u8,
            n: u8,
        },
        Close {
            s: u8,
        },
        Cancel {
            w: u8,
        },
    }

    fn op() -> impl Strategy<Value = Op> {
        let locks = proptest::collection::vec((0u8..4, any::<bool>()), 1..3);
        prop_oneof![
            4 => (0u8..4, locks.clone(), -2i8..2)
                .prop_map(|(s, locks, priority)| Op::Acquire { s, locks, priority }),
            2 => (0u8..4, locks, 0u8..3, -2i8..2).prop_map(|(s, locks, min, priority)| {
                Op::Opportunistic { s, locks, min, priority }
            }),
            2 => (-2i8..2).prop_map(|priority| Op::Txn { priority }),
            3 => (0u8..4, 0u8..4).prop_map(|(s, n)| Op::Release { s, n }),
            1 => (0u8..4).prop_map(|s| Op::Close { s }),
            1 => (0u8..16).prop_map(|w| Op::Cancel { w }),
        ]
    }

    /// Grants every grantable waiter and returns them in grant order, each
    /// with the locks it newly took (not already covered when granted). A
    /// transaction takes its locks and drops them again at once.
    fn pump(t: &mut LockTable, token: &mut u64) -> Vec<(Waiter, Vec<LockRequest>)> {
        let pass = t.grantable_waiters();
        let mut out = Vec::new();
        for id in pass.grant {
            let w = t.cancel_waiter(id).unwrap();
            let Requester::Session(s) = w.owner else {
                assert!(t.check_grant_txn(&w.locks), "{w:?} ran while blocked");
                out.push((w.clone(), w.locks));
                continue;
            };
            let locks = match w.min {
                Some(_) => pass.taken[&id].clone(),
                None => w.locks.clone(),
            };
            t.check_grant(s, &locks).unwrap();
            let new_locks = locks.iter().filter(|l| !t.covered(s, l)).cloned().collect();
            t.grant(s, &locks, *token);
            *token += 1;
            out.push((w, new_locks));
        }
        out
    }

    impl LockTable {
        /// Whether a transaction could take `locks` now: nobody holds them.
        fn check_grant_txn(&self, locks: &[LockRequest]) -> bool {
            locks
                .iter()
                .all(|l| self.holder_conflicts(None, l).next().is_none())
        }
    }

    fn assert_exclusion(t: &LockTable) {
        for (name, holders) in t.held() {
            let x = holders.values().filter(|h| h.mode == X).count();
            assert!(x == 0 || holders.len() == 1, "{name}: {holders:?}");
        }
    }

    /// Whether `a`, newly taken by `by`, conflicts with what waiter `w`
    /// asks for.
    fn overtakes(by: Requester, new_locks: &[LockRequest], w: &Waiter) -> bool {
        w.owner.other_than(by)
            && new_locks.iter().any(|a| {
                w.locks
                    .iter()
                    .any(|b| a.name == b.name && !a.mode.compatible(b.mode))
            })
    }

    /// A waiter at `priority` or more urgent that `by`, taking
    /// `new_locks` without waiting, would overtake.
    fn overtaken(
        t: &LockTable,
        by: Requester,
        new_locks: &[LockRequest],
        priority: i8,
    ) -> Option<String> {
        let ahead = t.waiters().filter(|w| w.priority <= priority);
        let mut ahead = ahead.filter(|w| overtakes(by, new_locks, w));
        ahead
            .next()
            .map(|w| format!("{by:?} took {new_locks:?} past {w:?}"))
    }

    /// Grants `locks`, which a try path decided, after checking that what
    /// it newly takes overtakes no waiter.
    fn take_now(
        t: &mut LockTable,
        session: SessionId,
        locks: &[LockRequest],
        priority: i8,
        token: &mut u64,
    ) -> Result<(), TestCaseError> {
        let new: Vec<_> = locks
            .iter()
            .filter(|l| !t.covered(session, l))
            .cloned()
            .collect();
        if let Some(e) = overtaken(t, Requester::Session(session), &new, priority) {
            return Err(TestCaseError::fail(e));
        }
        t.grant(session, locks, *token);
        *token += 1;
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(96))]

        #[test]
        fn mutual_exclusion_and_service_order(ops in proptest::collection::vec(op(), 1..60)) {
            check_mutual_exclusion_and_service_order(ops)?;
        }
    }

    fn check_mutual_exclusion_and_service_order(ops: Vec<Op>) -> Result<(), TestCaseError> {
        // Invariant: no two sessions ever hold conflicting modes, and
        // sessions, opportunistic requests and transactions are served in
        // one (priority, arrival) order: each pass grants waiters in that
        // order, a granted waiter never overtakes a conflicting waiter of
        // another requester that was ahead of it, and a request that does
        // not wait (a try or a transaction run at once) never takes a lock
        // a conflicting waiter at its priority or a more urgent one wants.
        let mut t = LockTable::default();
        let (mut token, mut seq, mut next_waiter) = (1u64, 0u64, 0u64);
        let to_locks = |locks: &[(u8, bool)]| -> Vec<LockRequest> {
            locks
                .iter()
                .map(|(n, x)| req(&format!("l{n}"), if *x { X } else { S }))
                .collect()
        };
        for op in ops {
            let mut enqueue = |t: &mut LockTable, owner, locks, min, priority| {
                seq += 1;
                next_waiter += 1;
                let w = Waiter {
                    owner,
                    min,
                    ..waiter(next_waiter, 0, locks, priority, seq)
                };
                t.enqueue_waiter(w).unwrap();
            };
            match op {
                Op::Acquire { s, locks, priority } => {
                    let locks = to_locks(&locks);
                    if check_new_request(&locks).is_err() {
                        continue;
                    }
                    let session = sid(s.into());
                    match t.try_acquire(session, &locks, priority) {
                        Ok(()) => take_now(&mut t, session, &locks, priority, &mut token)?,
                        Err(StateError::Blocked { .. }) => {
                            enqueue(&mut t, Requester::Session(session), locks, None, priority);
                        }
                        Err(e) => panic!("{e:?}"),
                    }
                }
                Op::Opportunistic {
                    s,
                    locks,
                    min,
                    priority,
                } => {
                    let locks = to_locks(&locks);
                    let (session, min) =
                        (sid(s.into()), usize::from(min).clamp(1, locks.len().max(1)));
                    if check_new_request(&locks).is_err() {
                        continue;
                    }
                    match t
                        .try_acquire_opportunistic(session, &locks, min, priority)
                        .unwrap()
                    {
                        Some(taken) => take_now(&mut t, session, &taken, priority, &mut token)?,
                        None => {
                            let owner = Requester::Session(session);
                            enqueue(&mut t, owner, locks, Some(min), priority);
                        }
                    }
                }
                Op::Txn { priority } => {
                    let locks = vec![req("l0", X)];
                    if t.blockers(Requester::Txn, &locks, priority).is_empty() {
                        // Runs at once and holds nothing afterwards.
                        prop_assert!(t.check_grant_txn(&locks));
                        let e = overtaken(&t, Requester::Txn, &locks, priority);
                        prop_assert!(e.is_none(), "{}", e.unwrap_or_default());
                    } else {
                        enqueue(&mut t, Requester::Txn, locks, None, priority);
                    }
                }
                Op::Release { s, n } => {
                    let name = format!("l{n}");
                    if t.check_release(sid(s.into()), std::slice::from_ref(&name), &[])
                        .is_ok()
                    {
                        t.release(sid(s.into()), &[name], &[]);
                    }
                }
                Op::Close { s } => {
                    t.release_session(sid(s.into()));
                }
                Op::Cancel { w } => {
                    t.cancel_waiter(WaiterId(w.into()));
                }
            }
            let before: Vec<Waiter> = t.waiters().cloned().collect();
            let granted = pump(&mut t, &mut token);
            // Service order: granted ones appear in queue order.
            let keys: Vec<_> = granted.iter().map(|(w, _)| (w.priority, w.seq)).collect();
            let mut sorted = keys.clone();
            sorted.sort();
            prop_assert_eq!(&keys, &sorted);
            // No overtaking: nobody newly took a lock past a conflicting
            // waiter (of another requester) that was ahead and still waits.
            // Locks the session already had are no-ops and take nothing.
            for (g, new_locks) in &granted {
                for w in before
                    .iter()
                    .filter(|w| (w.priority, w.seq) < (g.priority, g.seq))
                {
                    if t.waiter(w.id).is_none() {
                        continue;
                    }
                    prop_assert!(
                        !overtakes(g.owner, new_locks, w),
                        "{:?} overtook {:?}",
                        g,
                        w
                    );
                }
            }
            // An opportunistic waiter still waiting could not take `min` now.
            for w in t.waiters() {
                if let (Requester::Session(s), Some(min)) = (w.owner, w.min) {
                    let free = w.locks.iter().filter(|l| {
                        let one = std::slice::from_ref(*l);
                        t.covered(s, l)
                            || (t.holder_conflicts(Some(s), l).next().is_none()
                                && !t
                                    .waiters()
                                    .take_while(|a| a.id != w.id)
                                    .any(|a| overtakes(w.owner, one, a)))
                    });
                    prop_assert!(free.count() < min, "{:?} could go", w);
                }
            }
            assert_exclusion(&t);
            prop_assert!(
                pump(&mut t, &mut token).is_empty(),
                "one pass must be enough"
            );
        }
        Ok(())
    }
}
