//! The lock actor: the sequencer of every change. It owns the whole
//! [`State`] (sessions, locks, waiters, dedup and the config document), so a
//! config write is decided together with the lock it needs, and the order in
//! which it applies records is the LSN order.
//!
//! One message is one *step*: decide, apply each record in memory at the
//! next LSN (so the next decision sees it), then, before taking another
//! message, publish the document if it changed and queue the step's records
//! in the log in one piece. The step's answers are sent only when the
//! step's last LSN is durable; a step that changed nothing still waits for
//! the LSN it read at (G4). A release and the grants it allows are one step,
//! so they share a group commit (early lock release, see ARCHITECTURE.md).

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use json_patch::Patch;

use super::config::Published;
use super::mailbox::Counted;
use super::wal::{Append, WalActor};
use super::{durable_wait_failed, fail_stop, Reply, LOCK_MAILBOX_MAX};
use crate::api::error::ApiError;
use crate::api::types::{
    AcquireResponse, HolderView, LockSpec, LocksView, ReleaseResponse, SessionCreated, SessionList,
    SessionView, SnapshotTaken, Status, TxnResponse, WaiterView, WriteResponse,
};
use crate::metrics::{MailboxOf, Metrics};
use crate::replay::encode_record;
use crate::snapshot::writer::{Done, Job, SnapshotWriter};
use crate::snapshot::SnapshotError;
use crate::state::config::ParsedPatch;
use crate::state::ConfigState;
use crate::state::{
    CloseReason, GrantPass, LockMode, LockRequest, Outcome, Record, Requester, SessionId, State,
    StateError, Waiter, WaiterId, CONFIG_LOCK,
};
use crate::wal::{Appended, OnDurable, Wal, WalError};

/// The longest a request may wait for locks or for the config lock.
pub const WAIT_MS_MAX: u64 = 3_600_000;
/// One-shot transactions waiting for the config lock, at most. They wait
/// in the state's one queue (bounded by `WAITERS_MAX`), but each also keeps
/// its patch here until it runs.
pub const TXN_WAITERS_MAX: usize = 4_096;
/// The priority of every transaction: the API has no field for it.
const TXN_PRIORITY: i8 = 0;
/// How often leases are checked. A lease ends at most this late.
pub const EXPIRY_TICK_MS: u64 = 100;
/// Sessions whose lease ran out that this daemon remembers (by id only), so
/// a late `write` from one answers "lock not held" rather than "unknown".
pub const EXPIRED_REMEMBERED_MAX: usize = 65_536;
/// Snapshot requests waiting for the next snapshot while one is being
/// written, at most; past it they are answered 503 with `Retry-After`.
pub const SNAPSHOT_REQUESTS_MAX: usize = 64;
/// Deadlines of waiters that already left (granted, cancelled) are kept
/// until they pass or until there are more than this many beyond twice the
/// live waiters; then they are pruned in one pass (amortised O(1)).
const DEADLINES_STALE_MAX: usize = 1_024;

/// When each waiting acquire or transaction gives up, earliest first, and
/// the one timer armed for the earliest. One timer, not one per waiter:
/// actix polls every timer of an actor at each of its wake-ups, and with 64
/// waiters that polling was about 60 % of the daemon's CPU under the
/// `contended` workload (perf: `Sleep::poll` and its wakers).
#[derive(Default)]
struct Deadlines {
    queue: BTreeSet<(Instant, WaiterId)>,
    armed: Option<(Instant, SpawnHandle)>,
}

/// When the lock actor takes a snapshot by itself: after this many records
/// or this many bytes of frames since the last one, whichever comes first
/// (0 turns that trigger off).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotPolicy {
    pub every_records: u64,
    pub every_bytes: u64,
}

impl Default for SnapshotPolicy {
    fn default() -> SnapshotPolicy {
        SnapshotPolicy {
            every_records: 100_000,
            every_bytes: 256 << 20,
        }
    }
}

/// The snapshot side of the lock actor: at most one snapshot in flight.
/// A request arriving meanwhile waits for the NEXT snapshot (started as
/// soon as this one is done), so its answer covers everything applied
/// before it was asked.
struct Snapshots {
    writer: SnapshotWriter,
    policy: SnapshotPolicy,
    in_flight: Option<InFlight>,
    next: Vec<Reply<SnapshotTaken>>,
    records_since: u64,
    bytes_since: u64,
}

struct InFlight {
    stall: Duration,
    waiters: Vec<Reply<SnapshotTaken>>,
}

type Answer = Box<dyn FnOnce(Result<(), ApiError>) + Send>;

/// Binds an answer to its reply channel; it is sent when the step is
/// durable (`Ok`), or replaced by the error that prevented that.
///
/// A 503 refusal goes out at once: it was decided before the step applied
/// anything for that request and shows no state, so it has nothing to wait
/// for, and a client under backpressure should hear so without waiting for
/// the very syncs it is queued behind.
fn answer<T: Send + 'static>(reply: Reply<T>, result: Result<T, ApiError>) -> Answer {
    if matches!(&result, Err(e) if e.status == 503) {
        let _ = reply.send(result);
        return Box::new(|_| {});
    }
    Box::new(move |gate| {
        let _ = reply.send(gate.and(result));
    })
}

/// The records and answers of one step.
struct Step {
    /// Whether the step's first record may still be refused for a full WAL
    /// queue (a client request); timer steps must log what they decided.
    refusable: bool,
    first_lsn: u64,
    frames: Vec<(u16, Vec<u8>)>,
    /// Whether the step changed the config document.
    config_changed: bool,
    answers: Vec<Answer>,
}

impl Step {
    fn new(refusable: bool) -> Step {
        Step {
            refusable,
            first_lsn: 0,
            frames: Vec::new(),
            config_changed: false,
            answers: Vec::new(),
        }
    }
}

/// What the queue's waiter for a transaction does not carry.
struct PendingTxn {
    patch: ParsedPatch,
    if_serial: Option<u64>,
    wait_ms: u64,
    reply: Reply<TxnResponse>,
}

pub struct LockActor {
    state: State,
    /// Read side of the log: queue room and durability waits. Appends go
    /// through `wal_actor` only.
    wal: Arc<Wal>,
    /// Appends a step's records when the log's queue has no room for all
    /// of them (it waits for room off this thread); otherwise this actor
    /// appends them itself.
    wal_actor: Addr<WalActor>,
    /// Where readers get the document, shown once its records are durable
    /// (see `ConfigActor`).
    config: Published,
    /// Monotonic origin of the millisecond clock the state machines get.
    clock: Instant,
    /// Waiter ids and arrival order, for session and transaction waiters.
    next_seq: u64,
    waiting: HashMap<WaiterId, Reply<AcquireResponse>>,
    txns: HashMap<WaiterId, PendingTxn>,
    /// Set by [`Shutdown`]: no request may start waiting any more (it
    /// could outlive the server), and leases are no longer expired.
    stopping: bool,
    metrics: Arc<Metrics>,
    /// Sessions this process expired, oldest first, at most
    /// `EXPIRED_REMEMBERED_MAX`; live only (a restart forgets them).
    expired: VecDeque<SessionId>,
    expired_set: HashSet<SessionId>,
    snapshots: Option<Snapshots>,
    deadlines: Deadlines,
    /// Set while a step's records go through the WAL actor (`ctx.wait`);
    /// no other step may append meanwhile, or LSN order would break.
    appending_via_actor: bool,
}

impl LockActor {
    pub fn new(
        state: State,
        wal: Arc<Wal>,
        wal_actor: Addr<WalActor>,
        config: Published,
        metrics: Arc<Metrics>,
    ) -> LockActor {
        LockActor {
            state,
            wal,
            wal_actor,
            config,
            clock: Instant::now(),
            next_seq: 1,
            waiting: HashMap::new(),
            txns: HashMap::new(),
            stopping: false,
            metrics,
            expired: VecDeque::new(),
            expired_set: HashSet::new(),
            snapshots: None,
            deadlines: Deadlines::default(),
            appending_via_actor: false,
        }
    }

    /// Enables snapshots: on `TakeSnapshot` and by `policy`, written by
    /// `writer` (which must write for this actor's log).
    pub fn with_snapshots(mut self, writer: SnapshotWriter, policy: SnapshotPolicy) -> LockActor {
        self.snapshots = Some(Snapshots {
            writer,
            policy,
            in_flight: None,
            next: Vec::new(),
            records_since: 0,
            bytes_since: 0,
        });
        self
    }

    fn now_ms(&self) -> u64 {
        self.clock.elapsed().as_millis() as u64
    }

    /// Applies `record` at the next LSN and queues it for the log. On `Err`
    /// nothing changed (apply is atomic) and nothing will be logged.
    fn apply(
        &mut self,
        step: &mut Step,
        record: Record,
    ) -> Result<crate::state::Applied, ApiError> {
        self.apply_parsed(step, record, None)
    }

    /// [`LockActor::apply`] of a `ConfigWrite` whose patch ops were parsed
    /// already (`State::apply_parsed`).
    fn apply_parsed(
        &mut self,
        step: &mut Step,
        record: Record,
        ops: Option<&Patch>,
    ) -> Result<crate::state::Applied, ApiError> {
        let (kind, payload) =
            encode_record(&record).map_err(|e| ApiError::new(500, "internal", e.to_string()))?;
        let options = self.wal.options();
        if payload.len() > options.record_bytes_max {
            return Err(ApiError::new(
                413,
                "too_large",
                format!(
                    "record of {} bytes exceeds the limit of {} bytes",
                    payload.len(),
                    options.record_bytes_max
                ),
            ));
        }
        if step.refusable && step.frames.is_empty() {
            // Only this actor appends, one step at a time, so room seen here
            // is still there when the WAL actor appends.
            let (len, bytes) = self.wal.queue_depth();
            if len >= options.queue_len_max || bytes + payload.len() > options.queue_bytes_max {
                return Err(ApiError::busy("the WAL queue"));
            }
        }
        let lsn = self.state.next_lsn();
        let applied = self.state.apply_parsed(lsn, &record, ops)?;
        if let Record::ConfigWrite { .. } = record {
            step.config_changed = true;
        }
        if step.frames.is_empty() {
            step.first_lsn = lsn;
        }
        step.frames.push((kind, payload));
        Ok(applied)
    }

    /// Ends a step: publishes the document and logs the step's records in
    /// order, then answers once everything the step applied or read is
    /// durable.
    ///
    /// The records go into the log's queue in one piece, so they share a
    /// group commit when they fit in one batch: a release and the grants it
    /// allowed, decided in the same step, become durable together (early
    /// lock release; ARCHITECTURE.md, "The lock hand-off").
    fn finish(&mut self, step: Step, ctx: &mut Context<Self>) {
        // Guards LSN order on disk: ctx.wait below holds every message and
        // timer until the WAL actor has queued the records, and each callback
        // ends at most one step.
        assert!(
            !self.appending_via_actor,
            "a step ended while the last one's records were still on their way to the log"
        );
        let visible_lsn = self.state.applied_lsn();
        let locks = self.state.locks();
        let sessions = self.state.sessions().len();
        self.metrics
            .lock_tables(sessions, locks.len(), locks.waiter_count());
        let Step {
            first_lsn,
            frames,
            config_changed,
            answers,
            ..
        } = step;
        // O(1): the document's tree is shared, not copied. Readers see it
        // once its records are durable (G4), before any answer of the step.
        let publish = config_changed.then(|| (self.config.clone(), self.state.config().clone()));
        if frames.is_empty() {
            if answers.is_empty() && publish.is_none() {
                return;
            }
            let wait = self.wal.wait_durable(visible_lsn);
            actix::spawn(async move {
                let gate = wait.await.map(drop).map_err(durable_wait_failed);
                if let (Ok(()), Some((to, config))) = (&gate, publish) {
                    to.show(config);
                }
                answers.into_iter().for_each(|a| a(gate.clone()));
            });
            return;
        }
        let count = frames.len() as u64;
        let frame_bytes: u64 = frames
            .iter()
            .map(|(_, p)| crate::wal::format::frame_bytes(p.len()) as u64)
            .sum();
        self.logged(count, frame_bytes, ctx);
        let options = self.wal.options();
        let (queued, queued_bytes) = self.wal.queue_depth();
        let payload_bytes: usize = frames.iter().map(|(_, p)| p.len()).sum();
        if queued + frames.len() <= options.queue_len_max
            && queued_bytes + payload_bytes <= options.queue_bytes_max
        {
            // Only this actor appends (the WAL actor only while this one is
            // held in `ctx.wait` below), so the room seen is still there and
            // `append_all` does not wait: no actor hop on the hot path.
            let appended = self
                .wal
                .append_all(frames)
                .unwrap_or_else(|e| fail_stop(&e));
            answer_when_durable(&self.wal, first_lsn, count, appended, publish, answers);
            return;
        }
        // No room for every record, which are all applied already and must
        // be logged: the WAL actor waits for room on its own thread, freed as
        // the writer syncs. ctx.wait: no other message is handled until the
        // records are in the log's queue, so queue order (LSN order) stays
        // decision order.
        let wal_actor = self.wal_actor.clone();
        let wal_depth = self.metrics.mailbox(MailboxOf::Wal);
        let send = async move {
            match wal_actor
                .send(Counted::new(Append { frames }, &wal_depth))
                .await
            {
                Ok(Ok(appended)) => Ok(appended),
                Ok(Err(e)) => Err(e.to_string()),
                Err(e) => Err(format!("WAL actor: {e}")),
            }
        };
        self.appending_via_actor = true;
        ctx.wait(send.into_actor(self).map(move |sent, act, _ctx| {
            act.appending_via_actor = false;
            let appended = sent.unwrap_or_else(|e| fail_stop(&e));
            answer_when_durable(&act.wal, first_lsn, count, appended, publish, answers);
        }));
    }

    /// Counts what a step logged towards the next automatic snapshot, and
    /// starts one when the policy says so.
    fn logged(&mut self, records: u64, bytes: u64, ctx: &mut Context<Self>) {
        let Some(snap) = self.snapshots.as_mut() else {
            return;
        };
        snap.records_since += records;
        snap.bytes_since += bytes;
        let due = |every: u64, since: u64| every > 0 && since >= every;
        if snap.in_flight.is_none()
            && (due(snap.policy.every_records, snap.records_since)
                || due(snap.policy.every_bytes, snap.bytes_since))
        {
            self.start_snapshot(Vec::new(), ctx);
        }
    }

    /// Hands a copy of the state at the applied LSN to the snapshot writer.
    /// The copy is the only work done here (the tables are persistent maps
    /// or shared chunks, so it is cheap); the writer waits for the LSN to be
    /// durable, writes and collects on its own thread.
    fn start_snapshot(&mut self, waiters: Vec<Reply<SnapshotTaken>>, ctx: &mut Context<Self>) {
        let started = Instant::now();
        let copy = self.state.snapshot_copy();
        let Some(snap) = self.snapshots.as_mut() else {
            return;
        };
        let (tx, rx) = futures_channel::oneshot::channel();
        let job = Job {
            state: copy,
            done: Box::new(move |result| {
                let _ = tx.send(result);
            }),
        };
        if let Err(e) = snap.writer.submit(job) {
            for reply in waiters {
                let _ = reply.send(Err(ApiError::unavailable(e.to_string())));
            }
            return;
        }
        snap.records_since = 0;
        snap.bytes_since = 0;
        let stall = started.elapsed();
        snap.in_flight = Some(InFlight { stall, waiters });
        let done = async move { rx.await.unwrap_or(Err(SnapshotError::Stopped)) };
        ctx.spawn(
            done.into_actor(self)
                .map(|result, act, ctx| act.snapshot_done(result, ctx)),
        );
    }

    fn snapshot_done(&mut self, result: Result<Done, SnapshotError>, ctx: &mut Context<Self>) {
        let Some(snap) = self.snapshots.as_mut() else {
            return;
        };
        let Some(in_flight) = snap.in_flight.take() else {
            return;
        };
        let answer = match &result {
            Ok(done) => {
                self.metrics.snapshot_written(done.total, done.written.lsn);
                tracing::info!(
                    lsn = done.written.lsn,
                    stall_us = in_flight.stall.as_micros() as u64,
                    total_ms = done.total.as_millis() as u64,
                    "snapshot durable"
                );
                Ok(SnapshotTaken {
                    lsn: done.written.lsn,
                    path: done.written.path.display().to_string(),
                    bytes: done.written.bytes,
                    duration_ms: done.total.as_millis() as u64,
                    stall_us: in_flight.stall.as_micros() as u64,
                    snapshots_removed: done.collected.snapshots.len() as u64,
                    segments_removed: done.collected.segments.len() as u64,
                })
            }
            Err(e @ SnapshotError::Wal(WalError::Poisoned { .. })) => fail_stop(e),
            Err(e) => Err(ApiError::new(500, "snapshot_failed", e.to_string())),
        };
        for reply in in_flight.waiters {
            let _ = reply.send(answer.clone());
        }
        if !snap.next.is_empty() {
            let next = std::mem::take(&mut snap.next);
            self.start_snapshot(next, ctx);
        } else {
            // Records logged while this one was written may already be due.
            self.logged(0, 0, ctx);
        }
    }

    fn next_seq(&mut self) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        seq
    }

    /// After locks were freed or a waiter left: grant every grantable
    /// waiter, in queue order, each as its own Grant record, and run each
    /// runnable transaction as its one ConfigWrite record.
    fn wake(&mut self, step: &mut Step) {
        loop {
            let pass = self.state.grantable_waiters();
            let refused = !pass.refuse.is_empty();
            for (id, err) in &pass.refuse {
                self.state.cancel_waiter(*id);
                if let Some(reply) = self.waiting.remove(id) {
                    step.answers.push(answer(reply, Err(err.clone().into())));
                }
            }
            for id in &pass.grant {
                self.grant_one(step, *id, &pass);
            }
            // A refused waiter left the queue and may have blocked others.
            if !refused {
                break;
            }
        }
    }

    fn grant_one(&mut self, step: &mut Step, id: WaiterId, pass: &GrantPass) {
        if let Some(txn) = self.txns.remove(&id) {
            let (patch_json, ops) = txn.patch.into_parts();
            let result = self
                .state
                .run_txn_waiter(id, patch_json)
                .map_err(ApiError::from)
                .and_then(|(waiter, record)| {
                    self.waited(&waiter);
                    self.txn_now(step, record, &ops, txn.if_serial)
                });
            step.answers.push(answer(txn.reply, result));
            return;
        }
        let result = self
            .state
            .grant_waiter(id, pass)
            .map_err(ApiError::from)
            .and_then(|(waiter, record)| {
                self.waited(&waiter);
                self.apply(step, record)
            })
            .map(|applied| granted(applied.outcome));
        if let Some(reply) = self.waiting.remove(&id) {
            step.answers.push(answer(reply, result));
        }
    }

    /// Runs a transaction's record now that it may take the config lock: a
    /// serial mismatch or a failing patch changes nothing.
    fn txn_now(
        &mut self,
        step: &mut Step,
        record: Record,
        ops: &Patch,
        if_serial: Option<u64>,
    ) -> Result<TxnResponse, ApiError> {
        check_serial(self.state.config().serial(), if_serial)?;
        let applied = self.apply_parsed(step, record, Some(ops))?;
        txn_outcome(applied.outcome.ok_or_else(missing_outcome)?)
    }

    /// `waiter` leaves the queue granted: how long it waited.
    fn waited(&self, waiter: &Waiter) {
        let waited_ms = self.now_ms().saturating_sub(waiter.enqueued_ms);
        self.metrics.lock_wait_granted(waited_ms);
    }

    fn dedup(&self, session: Option<SessionId>, request_id: Option<&str>) -> Option<Outcome> {
        request_id.and_then(|id| self.state.dedup().lookup(session, id).cloned())
    }

    fn check_session(&self, session: SessionId) -> Result<(), ApiError> {
        match self.state.sessions().contains(session) {
            true => Ok(()),
            false => Err(StateError::UnknownSession { session }.into()),
        }
    }

    /// Sessions whose lease ran out are closed by a logged record each.
    fn expire(&mut self, ctx: &mut Context<Self>) {
        let mut step = Step::new(false);
        self.expire_into(&mut step);
        self.finish(step, ctx);
    }

    /// Closes, in `step`, every session whose lease has run out, and grants
    /// what that frees. The records are logged whatever the WAL queue holds:
    /// the decision is the clock's, not a client's to be refused.
    fn expire_into(&mut self, step: &mut Step) {
        // Clients cannot renew a lease while the daemon stops; the next
        // start grants every lease a grace period anyway.
        if self.stopping {
            return;
        }
        let now_ms = self.now_ms();
        let expired = self.state.expired_sessions(now_ms);
        if expired.is_empty() {
            return;
        }
        self.metrics.sessions_expired(expired.len());
        let refusable = std::mem::replace(&mut step.refusable, false);
        for session in expired {
            tracing::info!(%session, "session lease expired");
            self.close(step, session, CloseReason::Expired)
                .unwrap_or_else(|e| fail_stop(&format!("expiring session {session}: {e}")));
            if self.expired.len() == EXPIRED_REMEMBERED_MAX {
                if let Some(old) = self.expired.pop_front() {
                    self.expired_set.remove(&old);
                }
            }
            self.expired.push_back(session);
            self.expired_set.insert(session);
        }
        self.wake(step);
        // A client record after timer records is never refused alone: the
        // step logs as a whole.
        step.refusable = refusable && step.frames.is_empty();
    }

    fn close(
        &mut self,
        step: &mut Step,
        session: SessionId,
        reason: CloseReason,
    ) -> Result<u64, ApiError> {
        self.check_session(session)?;
        let applied = self.apply(step, Record::SessionClose { session, reason })?;
        for id in applied.cancelled_waiters {
            if let Some(reply) = self.waiting.remove(&id) {
                let err = ApiError::new(
                    409,
                    "session_closed",
                    format!("session {session} closed while its request waited"),
                );
                step.answers.push(answer(reply, Err(err)));
            }
        }
        Ok(applied.lsn)
    }

    /// `id` gives up waiting `wait_ms` from now, unless granted before.
    fn wait_until(&mut self, id: WaiterId, wait_ms: u64, ctx: &mut Context<Self>) {
        let at = Instant::now() + Duration::from_millis(wait_ms);
        self.deadlines.queue.insert((at, id));
        let live = self.waiting.len() + self.txns.len();
        if self.deadlines.queue.len() > 2 * live + DEADLINES_STALE_MAX {
            let (waiting, txns) = (&self.waiting, &self.txns);
            self.deadlines
                .queue
                .retain(|(_, id)| waiting.contains_key(id) || txns.contains_key(id));
        }
        self.arm_deadline(ctx);
    }

    /// Arms the one deadline timer for the earliest deadline, unless it is
    /// armed for that or earlier already.
    fn arm_deadline(&mut self, ctx: &mut Context<Self>) {
        let Some(&(next, _)) = self.deadlines.queue.first() else {
            return;
        };
        match self.deadlines.armed.take() {
            Some((at, handle)) if at <= next => {
                self.deadlines.armed = Some((at, handle));
                return;
            }
            Some((_, handle)) => {
                ctx.cancel_future(handle);
            }
            None => {}
        }
        let handle = ctx.run_later(
            next.saturating_duration_since(Instant::now()),
            |act, ctx| act.deadlines_due(ctx),
        );
        self.deadlines.armed = Some((next, handle));
    }

    /// Times out every waiter whose deadline has passed, in one step (one
    /// `finish` per callback keeps LSN order), then re-arms the timer.
    fn deadlines_due(&mut self, ctx: &mut Context<Self>) {
        self.deadlines.armed = None;
        let now = Instant::now();
        let mut step = Step::new(false);
        while let Some(&(at, id)) = self.deadlines.queue.first() {
            if at > now {
                break;
            }
            self.deadlines.queue.pop_first();
            if self.waiter_timed_out(&mut step, id) {
                self.wake(&mut step);
            }
        }
        self.finish(step, ctx);
        self.arm_deadline(ctx);
    }

    /// A waiter's time is up: it leaves the queue (so it blocks nobody any
    /// more) and its request fails; the waiters behind it may go now (the
    /// caller wakes them). False if it was no longer waiting.
    fn waiter_timed_out(&mut self, step: &mut Step, id: WaiterId) -> bool {
        if let Some(txn) = self.txns.remove(&id) {
            self.state.cancel_waiter(id);
            let err = ApiError::new(
                409,
                "config_locked",
                format!("the config lock stayed busy for {} ms", txn.wait_ms),
            );
            step.answers.push(answer(txn.reply, Err(err)));
        } else if let Some(reply) = self.waiting.remove(&id) {
            if let Some(w) = self.state.cancel_waiter(id) {
                let blockers = self.state.locks().blockers(w.owner, &w.locks, w.priority);
                step.answers.push(answer(reply, Ok(not_granted(blockers))));
            }
        } else {
            return false;
        }
        true
    }
}

/// Checks that the log gave the records the LSNs they were applied at, then,
/// once the last of them is durable, shows readers the step's document (if
/// it changed) and sends the step's answers, in that order, so a client
/// told of its change reads it. The writer thread does both right after its
/// sync (`Wal::on_durable`), so an answer costs no hop through this actor's
/// thread. A failed append stops the daemon before anything is answered or
/// shown (G7).
fn answer_when_durable(
    wal: &Wal,
    first_lsn: u64,
    count: u64,
    appended: Vec<Appended>,
    publish: Option<(Published, ConfigState)>,
    answers: Vec<Answer>,
) {
    let lsns: Vec<u64> = appended.iter().map(|a| a.lsn()).collect();
    let expected: Vec<u64> = (first_lsn..first_lsn + count).collect();
    if lsns != expected {
        fail_stop(&format!(
            "the log assigned LSNs {lsns:?} to records applied at {expected:?}"
        ));
    }
    // The writer stops on the first failed commit, so the last record is
    // durable only if every one before it is.
    let last_lsn = first_lsn + count - 1;
    // Fail-stop runs on this actor's arbiter, not on the writer thread: a
    // test build halts the thread that calls it, and the writer must still
    // finish failing the rest of its waiters. The answers go with it and
    // are never dropped: a dropped reply channel would make the HTTP layer
    // answer before the process is gone, for records a restart may still
    // find in the page cache.
    let arbiter = actix::Arbiter::current();
    let then: OnDurable = Box::new(move |durable| match durable {
        Ok(_) => {
            if let Some((to, config)) = publish {
                to.show(config);
            }
            answers.into_iter().for_each(|a| a(Ok(())))
        }
        Err(e) => {
            arbiter.spawn(async move {
                let _unanswered = answers;
                fail_stop(&e)
            });
        }
    });
    wal.on_durable(last_lsn, then)
        .unwrap_or_else(|e| fail_stop(&e));
}

fn granted(outcome: Option<Outcome>) -> AcquireResponse {
    match outcome {
        Some(Outcome::Granted { token, lsn, locks }) => AcquireResponse {
            granted: true,
            token: Some(token),
            lsn: Some(lsn),
            locks: Some(locks.iter().map(LockSpec::from).collect()),
            blockers: None,
        },
        _ => not_granted(Vec::new()),
    }
}

/// `blockers` as sessions ids, and `txn` for a waiting transaction.
fn not_granted(blockers: Vec<Requester>) -> AcquireResponse {
    AcquireResponse {
        granted: false,
        token: None,
        lsn: None,
        locks: None,
        blockers: Some(blockers.iter().map(Requester::to_string).collect()),
    }
}

fn missing_outcome() -> ApiError {
    ApiError::new(500, "internal", "applied record carried no outcome")
}

fn reused_id() -> ApiError {
    ApiError::new(
        409,
        "duplicate_request",
        "this request id was already used for a different kind of request",
    )
}

fn txn_outcome(outcome: Outcome) -> Result<TxnResponse, ApiError> {
    match outcome {
        Outcome::TxnApplied { serial, lsn } => Ok(TxnResponse {
            applied: true,
            serial,
            lsn,
        }),
        _ => Err(reused_id()),
    }
}

fn write_outcome(outcome: Outcome) -> Result<WriteResponse, ApiError> {
    match outcome {
        Outcome::Written { serial, lsn, .. } => Ok(WriteResponse {
            applied: true,
            lock_was_held: true,
            serial: Some(serial),
            lsn: Some(lsn),
        }),
        _ => Err(reused_id()),
    }
}

fn check_serial(serial: u64, if_serial: Option<u64>) -> Result<(), ApiError> {
    match if_serial {
        Some(want) if want != serial => Err(ApiError::new(
            409,
            "serial_mismatch",
            format!("config serial is {serial}, not {want}"),
        )),
        _ => Ok(()),
    }
}

fn check_wait(wait_ms: u64) -> Result<(), ApiError> {
    if wait_ms > WAIT_MS_MAX {
        return Err(ApiError::bad_request(format!(
            "wait_ms {wait_ms} exceeds the limit of {WAIT_MS_MAX}"
        )));
    }
    Ok(())
}

impl Actor for LockActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(LOCK_MAILBOX_MAX);
        // Clients could not reach a stopped daemon: every lease starts anew.
        let now_ms = self.now_ms();
        self.state.grant_grace(now_ms);
        ctx.run_interval(Duration::from_millis(EXPIRY_TICK_MS), |act, ctx| {
            act.expire(ctx)
        });
    }
}

/// Defines a request message carrying its reply channel.
macro_rules! request {
    ($(#[$doc:meta])* $name:ident -> $reply:ty { $($field:ident : $ty:ty),* $(,)? }) => {
        $(#[$doc])*
        #[derive(Message)]
        #[rtype(result = "()")]
        pub struct $name {
            $(pub $field: $ty,)*
            pub reply: Reply<$reply>,
        }

        super::mailbox::countable!(LockActor: $name);
    };
}

request!(CreateSession -> SessionCreated { session: SessionId, name: Option<String>, ttl_ms: u64 });
request!(Keepalive -> SessionView { session: SessionId });
request!(CloseSession -> ReleaseResponse { session: SessionId });
request!(ListSessions -> SessionList {});
request!(
    /// `priority` already range-checked by the API layer.
    Acquire -> AcquireResponse {
        session: SessionId,
        locks: Vec<LockRequest>,
        wait_ms: u64,
        priority: i8,
        min: Option<usize>,
        request_id: Option<String>,
    }
);
request!(
    /// `release: None` releases everything held.
    Release -> ReleaseResponse {
        session: SessionId,
        release: Option<Vec<String>>,
        downgrade: Vec<String>,
        request_id: Option<String>,
    }
);
request!(GetLocks -> LocksView {});
request!(Write -> WriteResponse {
    session: SessionId,
    patch: ParsedPatch,
    release: bool,
    request_id: Option<String>,
});
request!(Txn -> TxnResponse {
    patch: ParsedPatch,
    if_serial: Option<u64>,
    wait_ms: u64,
    request_id: Option<String>,
});
request!(GetStatus -> Status {});
request!(
    /// Writes a snapshot of the state as of now and answers once it is
    /// durable. While one is being written, waits for the next one. This
    /// is also the call a clean shutdown makes.
    TakeSnapshot -> SnapshotTaken {}
);

impl Handler<CreateSession> for LockActor {
    type Result = ();

    fn handle(&mut self, m: CreateSession, ctx: &mut Self::Context) {
        let mut step = Step::new(true);
        let record = Record::SessionOpen {
            session: m.session,
            name: m.name,
            ttl_ms: m.ttl_ms,
        };
        let result = self.apply(&mut step, record).map(|_| {
            // The lease starts now, not at the first keepalive.
            let now_ms = self.now_ms();
            let _ = self.state.keepalive(m.session, now_ms);
            SessionCreated {
                session: m.session.to_string(),
                ttl_ms: m.ttl_ms,
                epoch: self.state.epoch(),
            }
        });
        step.answers.push(answer(m.reply, result));
        self.finish(step, ctx);
    }
}

impl Handler<Keepalive> for LockActor {
    type Result = ();

    fn handle(&mut self, m: Keepalive, ctx: &mut Self::Context) {
        let mut step = Step::new(true);
        let now_ms = self.now_ms();
        let result = match self.state.keepalive(m.session, now_ms) {
            Ok(()) => Ok(self.session_view(m.session, now_ms)),
            // An expired lease is as gone as an unknown one to the client.
            Err(StateError::LeaseExpired { session }) => Err(ApiError::new(
                404,
                "unknown_session",
                format!("the lease of session {session} has expired"),
            )),
            Err(e) => Err(e.into()),
        };
        step.answers.push(answer(m.reply, result));
        self.finish(step, ctx);
    }
}

impl LockActor {
    fn session_view(&self, session: SessionId, now_ms: u64) -> SessionView {
        let info = self.state.sessions().get(session);
        SessionView {
            session: session.to_string(),
            name: info.and_then(|i| i.name.clone()),
            ttl_ms: info.map_or(0, |i| i.ttl_ms),
            lease_remaining_ms: self
                .state
                .sessions()
                .deadline_ms(session)
                .map(|d| d.saturating_sub(now_ms)),
        }
    }
}

impl Handler<CloseSession> for LockActor {
    type Result = ();

    fn handle(&mut self, m: CloseSession, ctx: &mut Self::Context) {
        let mut step = Step::new(true);
        let result = self
            .close(&mut step, m.session, CloseReason::Closed)
            .map(|lsn| ReleaseResponse {
                released: true,
                lsn,
            });
        // The waiters this frees are answered first: the next holder's grant
        // is on the hand-off's critical path, this caller's answer is not.
        self.wake(&mut step);
        step.answers.push(answer(m.reply, result));
        self.finish(step, ctx);
    }
}

impl Handler<ListSessions> for LockActor {
    type Result = ();

    fn handle(&mut self, m: ListSessions, ctx: &mut Self::Context) {
        let now_ms = self.now_ms();
        let sessions = self
            .state
            .sessions()
            .iter()
            .map(|(id, _)| self.session_view(id, now_ms))
            .collect();
        let mut step = Step::new(true);
        step.answers
            .push(answer(m.reply, Ok(SessionList { sessions })));
        self.finish(step, ctx);
    }
}

/// How an acquire ends its step.
enum Acquired {
    Now(AcquireResponse),
    /// Queued as this waiter; the answer comes with the grant or timeout.
    Waiting(WaiterId),
}

impl LockActor {
    fn acquire(&mut self, step: &mut Step, m: &Acquire) -> Result<Acquired, ApiError> {
        let (session, priority) = (m.session, m.priority);
        check_wait(m.wait_ms)?;
        self.check_session(session)?;
        if let Some(done) = self.dedup(Some(session), m.request_id.as_deref()) {
            return match done {
                Outcome::Granted { .. } => Ok(Acquired::Now(granted(Some(done)))),
                _ => Err(reused_id()),
            };
        }
        let min = match m.min {
            Some(min) if min > m.locks.len() => {
                return Err(ApiError::bad_request(format!(
                    "min {min} exceeds the {} locks asked for",
                    m.locks.len()
                )));
            }
            Some(min) => {
                // WConfD's guardedOpportunisticLockUnion: whichever are free
                // now if at least `min` are; else wait (below) until at
                // least `min` are, and take whichever are free then.
                let decided = self.state.decide_opportunistic(
                    session,
                    &m.locks,
                    min,
                    priority,
                    m.request_id.clone(),
                )?;
                if let Some(record) = decided {
                    return Ok(Acquired::Now(granted(self.apply(step, record)?.outcome)));
                }
                Some(min)
            }
            None => {
                let decided = self.state.decide_grant(
                    session,
                    m.locks.clone(),
                    priority,
                    m.request_id.clone(),
                );
                match decided {
                    Ok(record) => {
                        return Ok(Acquired::Now(granted(self.apply(step, record)?.outcome)))
                    }
                    Err(StateError::Blocked { .. }) => None,
                    Err(e) => return Err(e.into()),
                }
            }
        };
        if m.wait_ms == 0 {
            let owner = Requester::Session(session);
            let blockers = self.state.locks().blockers(owner, &m.locks, priority);
            return Ok(Acquired::Now(not_granted(blockers)));
        }
        if self.stopping {
            return Err(ApiError::shutting_down());
        }
        let seq = self.next_seq();
        let id = WaiterId(seq);
        self.state.enqueue_waiter(Waiter {
            id,
            owner: Requester::Session(session),
            locks: m.locks.clone(),
            min,
            priority,
            seq,
            enqueued_ms: self.now_ms(),
            request_id: m.request_id.clone(),
        })?;
        Ok(Acquired::Waiting(id))
    }
}

impl Handler<Acquire> for LockActor {
    type Result = ();

    fn handle(&mut self, m: Acquire, ctx: &mut Self::Context) {
        let mut step = Step::new(true);
        match self.acquire(&mut step, &m) {
            Ok(Acquired::Now(response)) => step.answers.push(answer(m.reply, Ok(response))),
            Ok(Acquired::Waiting(id)) => {
                self.metrics.lock_wait_started();
                self.waiting.insert(id, m.reply);
                self.wait_until(id, m.wait_ms, ctx);
            }
            Err(e) => step.answers.push(answer(m.reply, Err(e))),
        }
        self.finish(step, ctx);
    }
}

impl Handler<Release> for LockActor {
    type Result = ();

    fn handle(&mut self, m: Release, ctx: &mut Self::Context) {
        let mut step = Step::new(true);
        let result = (|| {
            self.check_session(m.session)?;
            if let Some(done) = self.dedup(Some(m.session), m.request_id.as_deref()) {
                return match done {
                    Outcome::Released { lsn } => Ok(ReleaseResponse {
                        released: true,
                        lsn,
                    }),
                    _ => Err(reused_id()),
                };
            }
            let record = match m.release {
                None if m.downgrade.is_empty() => {
                    self.state.decide_release_all(m.session, m.request_id)?
                }
                release => self.state.decide_release(
                    m.session,
                    release.unwrap_or_default(),
                    m.downgrade,
                    m.request_id,
                )?,
            };
            // Releasing nothing (release-all while holding nothing, or
            // empty lists) changes nothing, so it logs nothing.
            if let Record::Release {
                release, downgrade, ..
            } = &record
            {
                if release.is_empty() && downgrade.is_empty() {
                    return Ok(ReleaseResponse {
                        released: true,
                        lsn: self.state.applied_lsn(),
                    });
                }
            }
            let applied = self.apply(&mut step, record)?;
            Ok(ReleaseResponse {
                released: true,
                lsn: applied.lsn,
            })
        })();
        // The waiters this frees are answered first: the next holder's grant
        // is on the hand-off's critical path, this caller's answer is not.
        self.wake(&mut step);
        step.answers.push(answer(m.reply, result));
        self.finish(step, ctx);
    }
}

impl Handler<GetLocks> for LockActor {
    type Result = ();

    fn handle(&mut self, m: GetLocks, ctx: &mut Self::Context) {
        let now_ms = self.now_ms();
        let locks = self.state.locks();
        let holders = locks
            .held()
            .flat_map(|(name, holders)| {
                holders.iter().map(move |(session, hold)| HolderView {
                    name: name.to_string(),
                    session: session.to_string(),
                    mode: hold.mode.into(),
                    token: hold.token,
                })
            })
            .collect();
        let waiters = locks
            .waiters()
            .map(|w| WaiterView {
                session: w.owner.to_string(),
                locks: w.locks.iter().map(LockSpec::from).collect(),
                priority: w.priority,
                age_ms: now_ms.saturating_sub(w.enqueued_ms),
            })
            .collect();
        let mut step = Step::new(true);
        step.answers
            .push(answer(m.reply, Ok(LocksView { holders, waiters })));
        self.finish(step, ctx);
    }
}

impl Handler<Write> for LockActor {
    type Result = ();

    fn handle(&mut self, m: Write, ctx: &mut Self::Context) {
        let mut step = Step::new(true);
        // A lease that ran out since the last tick ends now, in this step,
        // before the write is decided: past its TTL a session holds nothing,
        // so it must not write even in the moments before the tick.
        self.expire_into(&mut step);
        let result = (|| {
            if self.expired_set.contains(&m.session) {
                // Its locks went with its lease (issue 5): the same answer
                // as any write without `config`, and nothing changes.
                return Ok(WriteResponse {
                    applied: false,
                    lock_was_held: false,
                    serial: None,
                    lsn: None,
                });
            }
            self.check_session(m.session)?;
            if let Some(done) = self.dedup(Some(m.session), m.request_id.as_deref()) {
                return write_outcome(done);
            }
            let holds = self
                .state
                .locks()
                .holders_of(CONFIG_LOCK)
                .and_then(|h| h.get(&m.session))
                .is_some_and(|h| h.mode == LockMode::Exclusive);
            if !holds {
                // WConfD's retryable writeConfigAndUnlock: nothing changes.
                return Ok(WriteResponse {
                    applied: false,
                    lock_was_held: false,
                    serial: None,
                    lsn: None,
                });
            }
            let (patch_json, ops) = m.patch.into_parts();
            let record =
                self.state
                    .decide_config_write(m.session, patch_json, m.release, m.request_id)?;
            let applied = self.apply_parsed(&mut step, record, Some(&ops))?;
            write_outcome(applied.outcome.ok_or_else(missing_outcome)?)
        })();
        // As for a release: the next holder hears first.
        if m.release {
            self.wake(&mut step);
        }
        step.answers.push(answer(m.reply, result));
        self.finish(step, ctx);
    }
}

impl LockActor {
    /// Runs a new transaction now, or queues it behind everyone ahead of it
    /// for `config` (returning its waiter id), or answers why it cannot.
    fn txn(
        &mut self,
        step: &mut Step,
        txn: PendingTxn,
        request_id: Option<String>,
    ) -> Option<WaiterId> {
        let result = match check_wait(txn.wait_ms) {
            Err(e) => Err(e),
            Ok(()) => match self.dedup(None, request_id.as_deref()) {
                Some(done) => txn_outcome(done),
                None => match self.state.txn_blockers(TXN_PRIORITY, request_id.as_deref()) {
                    Err(e) => Err(e.into()),
                    Ok(blockers) if blockers.is_empty() => {
                        let (patch_json, ops) = txn.patch.into_parts();
                        self.state
                            .decide_txn(patch_json, TXN_PRIORITY, request_id)
                            .map_err(ApiError::from)
                            .and_then(|record| self.txn_now(step, record, &ops, txn.if_serial))
                    }
                    Ok(_) if txn.wait_ms == 0 => Err(ApiError::new(
                        409,
                        "config_locked",
                        "the config lock is busy",
                    )),
                    Ok(_) if self.stopping => Err(ApiError::shutting_down()),
                    Ok(_) if self.txns.len() >= TXN_WAITERS_MAX => Err(StateError::Full {
                        what: "waiting transactions",
                        max: TXN_WAITERS_MAX,
                    }
                    .into()),
                    Ok(_) => {
                        let seq = self.next_seq();
                        let id = WaiterId(seq);
                        let now_ms = self.now_ms();
                        let waiter = State::txn_waiter(id, TXN_PRIORITY, seq, now_ms, request_id);
                        match self.state.enqueue_waiter(waiter) {
                            Ok(()) => {
                                self.txns.insert(id, txn);
                                return Some(id);
                            }
                            Err(e) => Err(e.into()),
                        }
                    }
                },
            },
        };
        step.answers.push(answer(txn.reply, result));
        None
    }
}

impl Handler<Txn> for LockActor {
    type Result = ();

    fn handle(&mut self, m: Txn, ctx: &mut Self::Context) {
        let mut step = Step::new(true);
        let Txn {
            patch,
            if_serial,
            wait_ms,
            request_id,
            reply,
        } = m;
        let txn = PendingTxn {
            patch,
            if_serial,
            wait_ms,
            reply,
        };
        if let Some(id) = self.txn(&mut step, txn, request_id) {
            self.metrics.lock_wait_started();
            self.wait_until(id, wait_ms, ctx);
        }
        self.finish(step, ctx);
    }
}

impl Handler<GetStatus> for LockActor {
    type Result = ();

    fn handle(&mut self, m: GetStatus, ctx: &mut Self::Context) {
        let telemetry = self.wal.telemetry();
        let locks = self.state.locks();
        let status = Status {
            epoch: self.state.epoch(),
            applied_lsn: self.state.applied_lsn(),
            durable_lsn: self.wal.durable_lsn(),
            sessions: self.state.sessions().len() as u64,
            locks_held: locks.len() as u64,
            waiters: locks.waiters().count() as u64,
            config_serial: self.state.config().serial(),
            uptime_ms: self.now_ms(),
            fsync_last_us: telemetry.last_sync_us,
            fsync_p99_us: telemetry.sync_us_p99,
            ..Status::default()
        };
        let mut step = Step::new(true);
        step.answers.push(answer(m.reply, Ok(status)));
        self.finish(step, ctx);
    }
}

/// Starts the clean shutdown: from now on no request waits, and every
/// waiting acquire and transaction is answered 503 `shutting_down` at once
/// (their waits only ever lived in memory, so nothing is logged). Sent
/// again once the HTTP server has drained; each time it answers the LSN
/// applied so far, which the server waits to be durable.
#[derive(Message)]
#[rtype(result = "u64")]
pub struct Shutdown;

impl Handler<Shutdown> for LockActor {
    type Result = u64;

    fn handle(&mut self, _m: Shutdown, _ctx: &mut Self::Context) -> u64 {
        self.stopping = true;
        for (id, reply) in self.waiting.drain() {
            self.state.cancel_waiter(id);
            let _ = reply.send(Err(ApiError::shutting_down()));
        }
        for (id, txn) in self.txns.drain() {
            self.state.cancel_waiter(id);
            let _ = txn.reply.send(Err(ApiError::shutting_down()));
        }
        self.state.applied_lsn()
    }
}

impl Handler<TakeSnapshot> for LockActor {
    type Result = ();

    fn handle(&mut self, m: TakeSnapshot, ctx: &mut Self::Context) {
        let Some(snap) = self.snapshots.as_mut() else {
            let _ = m.reply.send(Err(ApiError::unavailable(
                "snapshots are not enabled in this server",
            )));
            return;
        };
        if snap.in_flight.is_none() {
            self.start_snapshot(vec![m.reply], ctx);
        } else if snap.next.len() < SNAPSHOT_REQUESTS_MAX {
            snap.next.push(m.reply);
        } else {
            let _ = m
                .reply
                .send(Err(ApiError::busy("the snapshot request queue")));
        }
    }
}
