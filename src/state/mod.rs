//! Pure state machines: sessions, locks, the config document and request
//! dedup, driven only by [`Record`]s through [`State::apply`]. No actix, no
//! I/O, no clock reads, no randomness: time and ids come in as arguments.
//!
//! The live daemon decides (the `decide_*` helpers read the live-only parts:
//! waiter queue, lock order, priorities), builds a record, applies it here
//! and hands it to the WAL. Recovery applies the same records with no
//! decision logic, so the replayed state equals the live one. `apply` checks
//! everything the log alone can check and is atomic: on `Err` nothing
//! changed, so the daemon can treat an `Err` as "refused, do not log".
//!
//! Because `apply` (and snapshot loading) enforce the named limits, a later
//! version may raise a limit but never lower one: the old log must replay.

pub mod config;
pub mod dedup;
pub mod doc;
pub mod locks;
pub mod record;
pub mod sessions;

use std::fmt;

use serde::{Deserialize, Serialize};

pub use config::{ConfigState, CONFIG_LOCK};
pub use dedup::{Dedup, Outcome};
pub use locks::{GrantPass, Hold, LockOrder, LockTable, Requester, Waiter, WaiterId};
pub use record::{CloseReason, LockMode, LockRequest, Record, SessionId};
pub use sessions::{SessionInfo, Sessions};

/// Every error of the state layer. [`StateError::http_status`] says how the
/// HTTP layer should answer each one.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum StateError {
    /// A record's LSN is not the next one: the log has a gap or a repeat.
    NonContiguousLsn {
        expected: u64,
        got: u64,
    },
    EpochNotIncreasing {
        current: u64,
        got: u64,
    },
    /// A Grant's fencing token is below one already issued.
    TokenNotIncreasing {
        next: u64,
        got: u64,
    },
    /// The token space (u64) is used up; no further grant is possible.
    TokenExhausted,
    /// A record does not make sense on its own (e.g. a transaction that
    /// releases the config lock it never held).
    InvalidRecord {
        reason: String,
    },
    UnknownSession {
        session: SessionId,
    },
    SessionExists {
        session: SessionId,
    },
    LeaseExpired {
        session: SessionId,
    },
    TtlOutOfRange {
        ttl_ms: u64,
        min: u64,
        max: u64,
    },
    /// A lock name, session name, lock level or request id is malformed.
    InvalidName {
        what: &'static str,
        reason: String,
    },
    PriorityOutOfRange {
        priority: i8,
        min: i8,
        max: i8,
    },
    /// A request that names no lock at all.
    NoLocks,
    /// An opportunistic `min` of 0 (it would grant nothing), or above the
    /// number of candidates.
    MinOutOfRange {
        min: usize,
        candidates: usize,
    },
    /// A name listed twice in one request.
    DuplicateLock {
        name: String,
    },
    /// One request is over a per-request limit.
    RequestTooLarge {
        what: &'static str,
        len: usize,
        max: usize,
    },
    /// A table is full (sessions, waiters, locks); retry later.
    Full {
        what: &'static str,
        max: usize,
    },
    /// The locks cannot be granted now; the caller may wait behind these
    /// requesters (holding sessions, earlier waiters) or give up.
    Blocked {
        blockers: Vec<Requester>,
    },
    /// The session holds `held`, at a higher level than `requested`.
    OrderViolation {
        held: String,
        requested: String,
    },
    /// A Grant conflicts with what another session holds.
    Conflict {
        name: String,
        holder: SessionId,
    },
    NotHeld {
        name: String,
    },
    /// Downgrade of a lock held only shared.
    NotExclusive {
        name: String,
    },
    /// A session write without holding `config` exclusively.
    ConfigLockNotHeld {
        session: SessionId,
    },
    WaiterExists {
        waiter: WaiterId,
    },
    UnknownWaiter {
        waiter: WaiterId,
    },
    PatchParse {
        message: String,
    },
    /// Op `op_index` of the patch failed; nothing was applied.
    Patch {
        op_index: usize,
        message: String,
    },
    /// Op `op_index` would grow the document past a limit; nothing was
    /// applied. (`op_index == len` means the result as a whole.)
    PatchTooLarge {
        op_index: usize,
        what: &'static str,
    },
    /// The request id is already remembered; the daemon should have
    /// answered from dedup instead of deciding again.
    DuplicateRequest {
        request_id: String,
    },
    /// A snapshot is inconsistent with itself.
    InvalidSnapshot {
        reason: String,
    },
}

impl StateError {
    /// The HTTP status the API should answer with. 500 means a bug or a
    /// corrupt log, never a client mistake.
    pub fn http_status(&self) -> u16 {
        use StateError::*;
        match self {
            NonContiguousLsn { .. }
            | EpochNotIncreasing { .. }
            | TokenNotIncreasing { .. }
            | TokenExhausted
            | InvalidRecord { .. }
            | WaiterExists { .. }
            | InvalidSnapshot { .. } => 500,
            UnknownSession { .. } | UnknownWaiter { .. } => 404,
            LeaseExpired { .. } => 410,
            TtlOutOfRange { .. }
            | InvalidName { .. }
            | PriorityOutOfRange { .. }
            | NoLocks
            | MinOutOfRange { .. }
            | DuplicateLock { .. }
            | PatchParse { .. } => 400,
            RequestTooLarge { .. } | PatchTooLarge { .. } => 413,
            Full { .. } => 503,
            SessionExists { .. }
            | Blocked { .. }
            | OrderViolation { .. }
            | Conflict { .. }
            | NotHeld { .. }
            | NotExclusive { .. }
            | ConfigLockNotHeld { .. }
            | Patch { .. }
            | DuplicateRequest { .. } => 409,
        }
    }
}

impl fmt::Display for StateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use StateError::*;
        match self {
            NonContiguousLsn { expected, got } => write!(f, "expected lsn {expected}, got {got}"),
            EpochNotIncreasing { current, got } => {
                write!(f, "epoch {got} does not follow epoch {current}")
            }
            TokenNotIncreasing { next, got } => {
                write!(f, "fencing token {got} is below the next token {next}")
            }
            TokenExhausted => write!(f, "fencing tokens are exhausted"),
            InvalidRecord { reason } => write!(f, "invalid record: {reason}"),
            UnknownSession { session } => write!(f, "no session {session}"),
            SessionExists { session } => write!(f, "session {session} already exists"),
            LeaseExpired { session } => write!(f, "the lease of session {session} has expired"),
            TtlOutOfRange { ttl_ms, min, max } => {
                write!(f, "ttl {ttl_ms} ms is outside {min}..={max} ms")
            }
            InvalidName { what, reason } => write!(f, "invalid {what}: {reason}"),
            PriorityOutOfRange { priority, min, max } => {
                write!(f, "priority {priority} is outside {min}..={max}")
            }
            NoLocks => write!(f, "the request names no lock"),
            MinOutOfRange { min, candidates } => {
                write!(
                    f,
                    "min {min} must be between 1 and the {candidates} candidates"
                )
            }
            DuplicateLock { name } => write!(f, "lock {name:?} is listed twice"),
            RequestTooLarge { what, len, max } => write!(f, "{len} {what}, at most {max}"),
            Full { what, max } => write!(f, "{what} full ({max})"),
            Blocked { blockers } => write!(f, "blocked by {} requester(s)", blockers.len()),
            OrderViolation { held, requested } => {
                write!(
                    f,
                    "lock {requested:?} is at a lower level than held lock {held:?}"
                )
            }
            Conflict { name, holder } => write!(f, "lock {name:?} is held by {holder}"),
            NotHeld { name } => write!(f, "lock {name:?} is not held by this session"),
            NotExclusive { name } => write!(f, "lock {name:?} is not held exclusively"),
            ConfigLockNotHeld { session } => {
                write!(
                    f,
                    "session {session} does not hold {CONFIG_LOCK:?} exclusively"
                )
            }
            WaiterExists { waiter } => write!(f, "waiter {} already exists", waiter.0),
            UnknownWaiter { waiter } => write!(f, "no waiter {}", waiter.0),
            PatchParse { message } => write!(f, "malformed patch: {message}"),
            Patch { op_index, message } => write!(f, "patch op {op_index} failed: {message}"),
            PatchTooLarge { op_index, what } => {
                write!(f, "patch op {op_index} would exceed the {what} limit")
            }
            DuplicateRequest { request_id } => {
                write!(f, "request id {request_id:?} was already used")
            }
            InvalidSnapshot { reason } => write!(f, "invalid snapshot: {reason}"),
        }
    }
}

impl std::error::Error for StateError {}

/// What applying one record did, for the live daemon's response and its
/// next steps.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    pub lsn: u64,
    /// Names this session stopped holding (Release, SessionClose, a
    /// ConfigWrite releasing `config`).
    pub released: Vec<String>,
    pub downgraded: Vec<String>,
    /// Waiters of a closed session; their requests fail.
    pub cancelled_waiters: Vec<WaiterId>,
    /// For Grant, Release and ConfigWrite: the same outcome dedup remembers,
    /// so a first answer and a retried answer are built alike.
    pub outcome: Option<Outcome>,
}

impl Applied {
    /// Whether locks were freed or a waiter left, so the daemon should run
    /// [`State::grantable_waiters`] now.
    pub fn wakes_waiters(&self) -> bool {
        !(self.released.is_empty()
            && self.downgraded.is_empty()
            && self.cancelled_waiters.is_empty())
    }
}

/// Everything the daemon knows. Equality, serialization and [`State::digest`]
/// cover exactly what the log determines; the live-only parts (waiters, lock
/// order, lease deadlines) are ignored by all three.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "StateRepr")]
pub struct State {
    config: ConfigState,
    locks: LockTable,
    sessions: Sessions,
    dedup: Dedup,
    epoch: u64,
    epoch_started_unix_ms: u64,
    /// The lowest token a Grant may carry: one above the last issued, so
    /// tokens never repeat, across restarts too (the token is in the log).
    next_token: u64,
    applied_lsn: u64,
}

/// `State` as it arrives from a snapshot, before the cross-checks.
#[derive(Deserialize)]
struct StateRepr {
    config: ConfigState,
    locks: LockTable,
    sessions: Sessions,
    dedup: Dedup,
    epoch: u64,
    epoch_started_unix_ms: u64,
    next_token: u64,
    applied_lsn: u64,
}

impl TryFrom<StateRepr> for State {
    type Error = StateError;

    /// Each part checked itself while loading; this checks them against each
    /// other: every holder and dedup entry has an open session, and every
    /// held token is below `next_token`.
    fn try_from(r: StateRepr) -> Result<Self, StateError> {
        let invalid = |reason: String| Err(StateError::InvalidSnapshot { reason });
        if let Some(s) = r
            .locks
            .sessions()
            .chain(r.dedup.sessions())
            .find(|s| !r.sessions.contains(*s))
        {
            return invalid(format!(
                "session {s} holds locks or dedup entries but is not open"
            ));
        }
        if r.config.lsn() > r.applied_lsn {
            return invalid(format!(
                "config changed at LSN {} after the applied LSN {}",
                r.config.lsn(),
                r.applied_lsn
            ));
        }
        if r.next_token == 0 || r.locks.max_token().is_some_and(|t| t >= r.next_token) {
            return invalid(format!(
                "a held token is not below next_token {}",
                r.next_token
            ));
        }
        Ok(State {
            config: r.config,
            locks: r.locks,
            sessions: r.sessions,
            dedup: r.dedup,
            epoch: r.epoch,
            epoch_started_unix_ms: r.epoch_started_unix_ms,
            next_token: r.next_token,
            applied_lsn: r.applied_lsn,
        })
    }
}

impl Default for State {
    fn default() -> Self {
        State::new()
    }
}

impl State {
    /// The empty state before LSN 1: config `{}`, no sessions, token 1 next.
    pub fn new() -> Self {
        State {
            config: ConfigState::default(),
            locks: LockTable::default(),
            sessions: Sessions::default(),
            dedup: Dedup::default(),
            epoch: 0,
            epoch_started_unix_ms: 0,
            next_token: 1,
            applied_lsn: 0,
        }
    }

    pub fn config(&self) -> &ConfigState {
        &self.config
    }

    pub fn locks(&self) -> &LockTable {
        &self.locks
    }

    pub fn sessions(&self) -> &Sessions {
        &self.sessions
    }

    pub fn dedup(&self) -> &Dedup {
        &self.dedup
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    pub fn epoch_started_unix_ms(&self) -> u64 {
        self.epoch_started_unix_ms
    }

    pub fn next_token(&self) -> u64 {
        self.next_token
    }

    pub fn applied_lsn(&self) -> u64 {
        self.applied_lsn
    }

    /// The LSN the next applied record must carry.
    pub fn next_lsn(&self) -> u64 {
        self.applied_lsn.saturating_add(1)
    }

    /// Passes over a record this build does not understand but which its
    /// writer marked skippable (`wal::KIND_SKIPPABLE`): the LSN is used, the
    /// state is unchanged, so the next record still applies contiguously.
    pub fn skip(&mut self, lsn: u64) -> Result<(), StateError> {
        if self.applied_lsn.checked_add(1) != Some(lsn) {
            return Err(StateError::NonContiguousLsn {
                expected: self.next_lsn(),
                got: lsn,
            });
        }
        self.applied_lsn = lsn;
        Ok(())
    }

    /// Applies one record at `lsn`, which must be `applied_lsn + 1`. On `Err`
    /// the state is unchanged: every check runs before the first change, and
    /// the one fallible change (the config patch) is itself atomic and last.
    pub fn apply(&mut self, lsn: u64, record: &Record) -> Result<Applied, StateError> {
        self.apply_parsed(lsn, record, None)
    }

    /// [`State::apply`], given the ops of a `ConfigWrite`'s patch already
    /// parsed from its text (by [`config::ParsedPatch`]), so they are not
    /// parsed again. `ops` must be what parsing the record's text gives
    /// (checked in debug builds): replay parses the text, and both must
    /// reach the same state.
    pub fn apply_parsed(
        &mut self,
        lsn: u64,
        record: &Record,
        ops: Option<&json_patch::Patch>,
    ) -> Result<Applied, StateError> {
        debug_assert!(ops.is_none() || matches!(record, Record::ConfigWrite { .. }));
        if self.applied_lsn.checked_add(1) != Some(lsn) {
            return Err(StateError::NonContiguousLsn {
                expected: self.next_lsn(),
                got: lsn,
            });
        }
        let mut applied = Applied {
            lsn,
            ..Applied::default()
        };
        match record {
            Record::Epoch {
                epoch,
                started_unix_ms,
            } => {
                if *epoch <= self.epoch {
                    return Err(StateError::EpochNotIncreasing {
                        current: self.epoch,
                        got: *epoch,
                    });
                }
                self.epoch = *epoch;
                self.epoch_started_unix_ms = *started_unix_ms;
            }
            Record::SessionOpen {
                session,
                name,
                ttl_ms,
            } => {
                self.sessions.open(*session, name.clone(), *ttl_ms)?;
            }
            Record::SessionClose { session, reason: _ } => {
                self.sessions.close(*session)?;
                let (released, cancelled) = self.locks.release_session(*session);
                self.dedup.drop_session(*session);
                applied.released = released;
                applied.cancelled_waiters = cancelled;
            }
            Record::Grant {
                session,
                locks,
                token,
                request_id,
            } => {
                self.check_session(*session)?;
                if *token < self.next_token {
                    return Err(StateError::TokenNotIncreasing {
                        next: self.next_token,
                        got: *token,
                    });
                }
                let next_token = token.checked_add(1).ok_or(StateError::TokenExhausted)?;
                self.locks.check_grant(*session, locks)?;
                self.check_request_id(Some(*session), request_id.as_deref())?;
                self.locks.grant(*session, locks, *token);
                self.next_token = next_token;
                let outcome = Outcome::Granted {
                    token: *token,
                    lsn,
                    locks: locks.clone(),
                };
                self.remember(Some(*session), request_id, &outcome);
                applied.outcome = Some(outcome);
            }
            Record::Release {
                session,
                release,
                downgrade,
                request_id,
            } => {
                self.check_session(*session)?;
                self.locks.check_release(*session, release, downgrade)?;
                self.check_request_id(Some(*session), request_id.as_deref())?;
                self.locks.release(*session, release, downgrade);
                let outcome = Outcome::Released { lsn };
                self.remember(Some(*session), request_id, &outcome);
                applied.released = release.clone();
                applied.downgraded = downgrade.clone();
                applied.outcome = Some(outcome);
            }
            Record::ConfigWrite {
                session,
                patch_json,
                release_config,
                request_id,
            } => {
                self.check_config_writer(*session, *release_config)?;
                self.check_request_id(*session, request_id.as_deref())?;
                let parsed;
                let patch = match ops {
                    Some(ops) => {
                        debug_assert_eq!(config::parse_patch(patch_json).ok().as_ref(), Some(ops));
                        ops
                    }
                    None => {
                        parsed = config::parse_patch(patch_json)?;
                        &parsed
                    }
                };
                self.config.apply_patch(lsn, patch)?;
                let serial = self.config.serial();
                let outcome = match session {
                    Some(s) => {
                        if *release_config {
                            let config = [CONFIG_LOCK.to_string()];
                            self.locks.release(*s, &config, &[]);
                            applied.released = config.to_vec();
                        }
                        Outcome::Written {
                            serial,
                            lsn,
                            released_config: *release_config,
                        }
                    }
                    None => Outcome::TxnApplied { serial, lsn },
                };
                self.remember(*session, request_id, &outcome);
                applied.outcome = Some(outcome);
            }
        }
        self.applied_lsn = lsn;
        Ok(applied)
    }

    fn check_session(&self, session: SessionId) -> Result<(), StateError> {
        match self.sessions.contains(session) {
            true => Ok(()),
            false => Err(StateError::UnknownSession { session }),
        }
    }

    fn check_request_id(
        &self,
        session: Option<SessionId>,
        request_id: Option<&str>,
    ) -> Result<(), StateError> {
        request_id.map_or(Ok(()), |id| self.dedup.check_insert(session, id))
    }

    fn remember(
        &mut self,
        session: Option<SessionId>,
        request_id: &Option<String>,
        outcome: &Outcome,
    ) {
        if let Some(id) = request_id {
            self.dedup.insert(session, id.clone(), outcome.clone());
        }
    }

    /// A session writes only while holding `config` exclusively. A one-shot
    /// transaction (no session) writes only while nobody holds `config`: the
    /// daemon took it internally for the length of the write.
    fn check_config_writer(
        &self,
        session: Option<SessionId>,
        release_config: bool,
    ) -> Result<(), StateError> {
        let holders = self.locks.holders_of(CONFIG_LOCK);
        match session {
            Some(s) => {
                self.check_session(s)?;
                let hold = holders.and_then(|h| h.get(&s));
                if hold.is_none_or(|h| h.mode != LockMode::Exclusive) {
                    return Err(StateError::ConfigLockNotHeld { session: s });
                }
            }
            None => {
                if release_config {
                    let reason = "a transaction cannot release the config lock".to_string();
                    return Err(StateError::InvalidRecord { reason });
                }
                if let Some(holder) = holders.and_then(|h| h.keys().next()) {
                    let name = CONFIG_LOCK.to_string();
                    return Err(StateError::Conflict {
                        name,
                        holder: *holder,
                    });
                }
            }
        }
        Ok(())
    }

    // Decisions: read the live parts, build a record, change nothing.

    fn check_new_request(
        &self,
        session: Option<SessionId>,
        request_id: Option<&str>,
    ) -> Result<(), StateError> {
        if let Some(s) = session {
            self.check_session(s)?;
        }
        let owner = Requester::from(session);
        if let Some(id) = request_id.filter(|id| self.locks.waiting_request(owner, id).is_some()) {
            return Err(StateError::DuplicateRequest {
                request_id: id.to_string(),
            });
        }
        self.check_request_id(session, request_id)
    }

    /// Decides an all-or-nothing acquire at `priority`. `Blocked` means the
    /// daemon may enqueue a [`Waiter`] instead.
    pub fn decide_grant(
        &self,
        session: SessionId,
        locks: Vec<LockRequest>,
        priority: i8,
        request_id: Option<String>,
    ) -> Result<Record, StateError> {
        self.check_new_request(Some(session), request_id.as_deref())?;
        self.locks.try_acquire(session, &locks, priority)?;
        Ok(Record::Grant {
            session,
            locks: self.held_modes(session, locks),
            token: self.next_token,
            request_id,
        })
    }

    /// Each lock in the mode `session` will hold it in after a grant: asking
    /// for shared what it already holds exclusively keeps it exclusive, and
    /// the Grant (and every answer built from it) must say so.
    fn held_modes(&self, session: SessionId, mut locks: Vec<LockRequest>) -> Vec<LockRequest> {
        for lock in &mut locks {
            let held = self
                .locks
                .holders_of(&lock.name)
                .and_then(|h| h.get(&session));
            if let Some(hold) = held.filter(|h| h.mode.covers(lock.mode)) {
                lock.mode = hold.mode;
            }
        }
        locks
    }

    /// Decides an opportunistic acquire: a Grant of whichever candidates are
    /// free now, or `None` (nothing to log) if fewer than `min` are.
    pub fn decide_opportunistic(
        &self,
        session: SessionId,
        candidates: &[LockRequest],
        min: usize,
        priority: i8,
        request_id: Option<String>,
    ) -> Result<Option<Record>, StateError> {
        self.check_new_request(Some(session), request_id.as_deref())?;
        let taken = self
            .locks
            .try_acquire_opportunistic(session, candidates, min, priority)?;
        Ok(taken.map(|locks| Record::Grant {
            session,
            locks: self.held_modes(session, locks),
            token: self.next_token,
            request_id,
        }))
    }

    pub fn decide_release(
        &self,
        session: SessionId,
        release: Vec<String>,
        downgrade: Vec<String>,
        request_id: Option<String>,
    ) -> Result<Record, StateError> {
        self.check_new_request(Some(session), request_id.as_deref())?;
        self.locks.check_release(session, &release, &downgrade)?;
        Ok(Record::Release {
            session,
            release,
            downgrade,
            request_id,
        })
    }

    /// "Release all", logged as the explicit names held now.
    pub fn decide_release_all(
        &self,
        session: SessionId,
        request_id: Option<String>,
    ) -> Result<Record, StateError> {
        let release = self
            .locks
            .held_by(session)
            .map(|(n, _)| n.to_string())
            .collect();
        self.decide_release(session, release, Vec::new(), request_id)
    }

    /// Checks a session's config write request; the lock and the patch are
    /// checked by `apply`, which is atomic, so the daemon may simply apply
    /// the record and log it only if that succeeds.
    pub fn decide_config_write(
        &self,
        session: SessionId,
        patch_json: String,
        release_config: bool,
        request_id: Option<String>,
    ) -> Result<Record, StateError> {
        self.check_new_request(Some(session), request_id.as_deref())?;
        Ok(Record::ConfigWrite {
            session: Some(session),
            patch_json,
            release_config,
            request_id,
        })
    }

    /// Decides a one-shot transaction at `priority`: the daemon may take
    /// `config` internally only if no session holds it and no waiter at
    /// the same or a more urgent priority wants it (a waiting transaction
    /// included). `Blocked` means the daemon may enqueue [`State::txn_waiter`]
    /// instead. The patch itself is checked by `apply`.
    pub fn decide_txn(
        &self,
        patch_json: String,
        priority: i8,
        request_id: Option<String>,
    ) -> Result<Record, StateError> {
        let blockers = self.txn_blockers(priority, request_id.as_deref())?;
        if !blockers.is_empty() {
            return Err(StateError::Blocked { blockers });
        }
        Ok(Self::txn_record(patch_json, request_id))
    }

    /// Checks a new transaction's request id and says who it would wait
    /// behind (empty: it may run now), without needing its patch.
    pub fn txn_blockers(
        &self,
        priority: i8,
        request_id: Option<&str>,
    ) -> Result<Vec<Requester>, StateError> {
        locks::check_priority(priority)?;
        self.check_new_request(None, request_id)?;
        Ok(self
            .locks
            .blockers(Requester::Txn, &Self::txn_locks(), priority))
    }

    fn txn_record(patch_json: String, request_id: Option<String>) -> Record {
        Record::ConfigWrite {
            session: None,
            patch_json,
            release_config: false,
            request_id,
        }
    }

    /// Dequeues a transaction's waiter that a pass found runnable and builds
    /// its one record, carrying `patch_json` (kept by the daemon, not the
    /// queue). The caller applies it before building another.
    pub fn run_txn_waiter(
        &mut self,
        id: WaiterId,
        patch_json: String,
    ) -> Result<(Waiter, Record), StateError> {
        match self.locks.waiter(id) {
            Some(w) if w.owner == Requester::Txn => {}
            Some(_) => {
                let reason = format!("waiter {} is not a transaction", id.0);
                return Err(StateError::InvalidRecord { reason });
            }
            None => return Err(StateError::UnknownWaiter { waiter: id }),
        }
        let waiter = self.locks.cancel_waiter(id).expect("looked up above");
        let record = Self::txn_record(patch_json, waiter.request_id.clone());
        Ok((waiter, record))
    }

    /// What a transaction takes, for the length of its one record.
    fn txn_locks() -> Vec<LockRequest> {
        vec![LockRequest::new(CONFIG_LOCK, LockMode::Exclusive)]
    }

    /// The waiter for a blocked transaction: it asks for `config`
    /// exclusively in the one queue, so it takes its turn in priority and
    /// arrival order with sessions and other transactions. When a pass
    /// lists it, the daemon dequeues it (`cancel_waiter`) and applies its
    /// `ConfigWrite { session: None }` at once: no Grant or Release is
    /// logged, and `config` is free again after that one record.
    pub fn txn_waiter(
        id: WaiterId,
        priority: i8,
        seq: u64,
        enqueued_ms: u64,
        request_id: Option<String>,
    ) -> Waiter {
        Waiter {
            id,
            owner: Requester::Txn,
            locks: Self::txn_locks(),
            min: None,
            priority,
            seq,
            enqueued_ms,
            request_id,
        }
    }

    // Live-only parts: waiters, lock order, leases. None of these change
    // what the log determines.

    pub fn set_lock_order(&mut self, order: LockOrder) {
        self.locks.set_order(order);
    }

    pub fn enqueue_waiter(&mut self, waiter: Waiter) -> Result<(), StateError> {
        self.check_new_request(waiter.owner.session(), waiter.request_id.as_deref())?;
        self.locks.enqueue_waiter(waiter)
    }

    pub fn cancel_waiter(&mut self, id: WaiterId) -> Option<Waiter> {
        self.locks.cancel_waiter(id)
    }

    /// See [`LockTable::grantable_waiters`]. For each granted id, call
    /// [`State::grant_waiter`] and apply its record before the next one.
    pub fn grantable_waiters(&self) -> GrantPass {
        self.locks.grantable_waiters()
    }

    /// Dequeues a session's waiter that `pass` found grantable and builds
    /// its Grant with the current next token: all its locks, or for an
    /// opportunistic one those the pass chose. The caller applies the
    /// record before building another. (A transaction's waiter is not
    /// granted; see [`State::txn_waiter`].)
    pub fn grant_waiter(
        &mut self,
        id: WaiterId,
        pass: &GrantPass,
    ) -> Result<(Waiter, Record), StateError> {
        let waiter = self
            .locks
            .waiter(id)
            .ok_or(StateError::UnknownWaiter { waiter: id })?;
        let Requester::Session(session) = waiter.owner else {
            let reason = "a transaction's waiter is run, not granted".to_string();
            return Err(StateError::InvalidRecord { reason });
        };
        let locks = match (waiter.min, pass.taken.get(&id)) {
            (None, _) => waiter.locks.clone(),
            (Some(_), Some(taken)) => taken.clone(),
            (Some(_), None) => {
                let reason = format!("waiter {} is not granted by this pass", id.0);
                return Err(StateError::InvalidRecord { reason });
            }
        };
        let waiter = self.locks.cancel_waiter(id).expect("looked up above");
        let record = Record::Grant {
            session,
            locks: self.held_modes(session, locks),
            token: self.next_token,
            request_id: waiter.request_id.clone(),
        };
        Ok((waiter, record))
    }

    pub fn keepalive(&mut self, session: SessionId, now_ms: u64) -> Result<(), StateError> {
        self.sessions.keepalive(session, now_ms)
    }

    /// Sessions whose lease ran out; log `SessionClose { Expired }` for each.
    pub fn expired_sessions(&mut self, now_ms: u64) -> Vec<SessionId> {
        self.sessions.expired(now_ms)
    }

    /// After recovery: every session gets a full TTL from `now_ms`.
    pub fn grant_grace(&mut self, now_ms: u64) {
        self.sessions.grant_grace(now_ms);
    }

    /// A copy of exactly what the log determines (what a snapshot holds):
    /// the live-only parts (waiters, lock order, lease deadlines) are left
    /// empty. The tables are persistent maps or shared chunks, so this is
    /// cheap: the lock actor takes it between two messages and hands it to
    /// the snapshot writer (see `snapshot::writer`).
    pub fn snapshot_copy(&self) -> State {
        State {
            config: self.config.clone(),
            locks: self.locks.persisted_copy(),
            sessions: self.sessions.persisted_copy(),
            dedup: self.dedup.clone(),
            ..*self
        }
    }

    /// A 64-bit FNV-1a hash of the encoded state, equal for equal states
    /// (every map is ordered and the config text is canonical), so tests and
    /// operators can compare a replayed state with a live one cheaply.
    pub fn digest(&self) -> Result<u64, crate::codec::CodecError> {
        let mut hash = Fnv1a(0xcbf2_9ce4_8422_2325);
        self.encode_to_write(&mut hash)?;
        Ok(hash.0)
    }

    /// Writes the codec's encoding of this state, a snapshot's body: the
    /// same bytes as `codec::encode_to_write(self, ..)`, but the config
    /// document's text streams from its tree, so writing the snapshot of a
    /// 100 MB config holds no textual copy of it. Returns the bytes written.
    pub fn encode_to_write<W: std::io::Write>(
        &self,
        out: &mut W,
    ) -> Result<usize, crate::codec::CodecError> {
        /// The fields after `config`, in the derived encoding's order.
        #[derive(Serialize)]
        struct Rest<'a> {
            locks: &'a LockTable,
            sessions: &'a Sessions,
            dedup: &'a Dedup,
            epoch: u64,
            epoch_started_unix_ms: u64,
            next_token: u64,
            applied_lsn: u64,
        }
        let config = self.config.encode_to_write(out)?;
        let rest = Rest {
            locks: &self.locks,
            sessions: &self.sessions,
            dedup: &self.dedup,
            epoch: self.epoch,
            epoch_started_unix_ms: self.epoch_started_unix_ms,
            next_token: self.next_token,
            applied_lsn: self.applied_lsn,
        };
        Ok(config + crate::codec::encode_to_write(&rest, out)?)
    }
}

/// 64-bit FNV-1a over the bytes written to it.
struct Fnv1a(u64);

impl std::io::Write for Fnv1a {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        for b in buf {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests;
