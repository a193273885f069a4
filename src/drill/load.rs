//! The drill's job clients: threads with the blocking client doing what
//! real jobs do (lock `config`, read, write with release; one-shot
//! transactions; multi-lock acquire and release with waiting; sessions left
//! to expire), recording every request in the shared history. When the
//! daemon dies under them they stop, and after the restart they first
//! resolve what they left unknown by retrying it with its `request_id`.

use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use serde_json::json;

use super::check::counter_key;
use super::history::{History, Op, OpId, OpKind, Outcome};
use crate::api::types::*;
use crate::client::{Client, ClientError};

/// How long a job's acquire or transaction waits for its locks.
const WAIT_MS: u64 = 300;
/// The job clients' own sessions' lease: short, so `--pause` outlasts it.
pub const SESSION_TTL_MS: u64 = 3_000;
/// Sessions opened to be abandoned: the shortest lease the API allows.
const ABANDON_TTL_MS: u64 = 1_000;
/// A request with no answer after this long is "unknown".
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Node locks the multi-lock jobs share.
const NODE_LOCKS: usize = 4;

/// Where the drill is, for the clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Run jobs.
    Load,
    /// Retry what is unknown, then report resolved.
    Resolve,
    /// Wait for the drill.
    Hold,
    Stop,
}

#[derive(Debug)]
pub struct Control {
    pub run: u32,
    pub base: String,
    pub phase: Phase,
    /// Clients that saw the daemon die in this run.
    pub down: usize,
    /// Clients done resolving in this run.
    pub resolved: usize,
    pub run_started: Instant,
}

/// What the drill and its clients share.
pub struct Shared {
    pub history: Mutex<History>,
    pub control: Mutex<Control>,
    pub changed: Condvar,
    pub started: Instant,
    /// The JSON pointer of the drill's counter object in the document.
    pub root: String,
    /// Makes request ids unique to this drill.
    pub drill_id: String,
}

impl Shared {
    pub fn now_us(&self) -> u64 {
        self.started.elapsed().as_micros() as u64
    }

    pub fn begin(
        &self,
        client: usize,
        run: u32,
        session: Option<String>,
        kind: OpKind,
        request_id: Option<String>,
        retry_of: Option<OpId>,
    ) -> OpId {
        let op = Op {
            id: 0,
            client,
            run,
            session,
            kind,
            request_id,
            retry_of,
            invoked_us: self.now_us(),
            completed_us: None,
            outcome: Outcome::Pending,
        };
        self.history.lock().expect("history").push(op)
    }

    pub fn end(&self, id: OpId, outcome: Outcome) {
        let now = self.now_us();
        self.history.lock().expect("history").end(id, outcome, now);
    }

    /// Waits until `ready` holds for the control block; returns it.
    pub fn wait_for<T>(&self, mut ready: impl FnMut(&mut Control) -> Option<T>) -> T {
        let mut c = self.control.lock().expect("control");
        loop {
            if let Some(t) = ready(&mut c) {
                self.changed.notify_all();
                return t;
            }
            c = self.changed.wait(c).expect("control");
        }
    }
}

/// What a request came to, for the job logic.
enum Done<T> {
    Ok(T),
    Refused(String),
    /// The daemon died (or hung): stop and wait for the restart.
    Down,
}

/// One job client.
pub struct Job<'a> {
    shared: &'a Shared,
    id: usize,
    rng: StdRng,
    run: u32,
    client: Client,
    session: Option<String>,
    keepalive_at: Instant,
    /// The value this client's counter has, as far as it knows.
    counter: u64,
    seq: u64,
    /// The last request whose outcome is unknown, not yet retried.
    unknown: Option<(OpId, Retry)>,
    /// The last acknowledged request with a request id, to re-send after a
    /// restart (exactly once).
    last_acked: Option<(OpId, Retry)>,
    /// A session left to expire, the lock it holds, and since when.
    abandoned: Option<(String, Instant)>,
}

/// A request that can be sent again as it was.
#[derive(Clone)]
enum Retry {
    Acquire(AcquireRequest),
    Release(ReleaseRequest),
    Write(WriteRequest, u64, u64),
    Txn(TxnRequest, u64),
}

fn body<T: Serialize>(v: &T) -> Outcome {
    Outcome::Ok {
        body: serde_json::to_value(v).unwrap_or_default(),
    }
}

impl<'a> Job<'a> {
    pub fn new(shared: &'a Shared, id: usize, seed: u64) -> Job<'a> {
        let (run, base) = {
            let c = shared.control.lock().expect("control");
            (c.run, c.base.clone())
        };
        Job {
            shared,
            id,
            rng: StdRng::seed_from_u64(seed ^ (id as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15)),
            run,
            client: Client::with_timeout(base, REQUEST_TIMEOUT),
            session: None,
            keepalive_at: Instant::now(),
            counter: 0,
            seq: 0,
            unknown: None,
            last_acked: None,
            abandoned: None,
        }
    }

    fn rid(&mut self) -> String {
        self.seq += 1;
        format!("{}-c{}-{}", self.shared.drill_id, self.id, self.seq)
    }

    /// Sends one request and records it.
    fn call<T: Serialize>(
        &mut self,
        kind: OpKind,
        session: Option<String>,
        request_id: Option<String>,
        retry_of: Option<OpId>,
        send: impl FnOnce(&Client) -> Result<T, ClientError>,
    ) -> (OpId, Done<T>) {
        let op = self
            .shared
            .begin(self.id, self.run, session, kind, request_id, retry_of);
        match send(&self.client) {
            Ok(v) => {
                self.shared.end(op, body(&v));
                (op, Done::Ok(v))
            }
            // Not a refusal: the daemon lost the answer, not the request.
            Err(e @ ClientError::Api { .. }) if matches!(&e, ClientError::Api { code, .. } if code == "outcome_unknown") =>
            {
                self.shared.end(
                    op,
                    Outcome::Unknown {
                        error: e.to_string(),
                    },
                );
                (op, Done::Down)
            }
            Err(ClientError::Api { status, code, .. }) => {
                self.shared.end(
                    op,
                    Outcome::Refused {
                        status,
                        code: code.clone(),
                    },
                );
                if code == "unknown_session" {
                    self.session = None;
                }
                (op, Done::Refused(code))
            }
            Err(e) => {
                self.shared.end(
                    op,
                    Outcome::Unknown {
                        error: e.to_string(),
                    },
                );
                (op, Done::Down)
            }
        }
    }

    /// Runs until the drill says stop.
    pub fn run(mut self) {
        loop {
            let phase = {
                let c = self.shared.control.lock().expect("control");
                (c.phase, c.run)
            };
            match phase {
                (Phase::Stop, _) => return,
                (Phase::Load, run) if run == self.run => {
                    if self.job().is_err() {
                        self.went_down();
                    }
                }
                (Phase::Resolve, run) if run > self.run => self.resolve(),
                (phase, run) => self.wait_next(phase, run),
            }
        }
    }

    /// Waits for the drill to move on from what this client last saw.
    fn wait_next(&self, phase: Phase, run: u32) {
        self.shared.wait_for(|c| {
            (c.run != run || c.phase != phase || c.phase == Phase::Stop).then_some(())
        });
    }

    /// The daemon died: say so, and wait for the restart.
    fn went_down(&mut self) {
        let run = self.run;
        self.shared.wait_for(|c| {
            if c.run == run {
                c.down += 1;
            }
            Some(())
        });
        self.shared
            .wait_for(|c| (c.run != run || c.phase == Phase::Stop).then_some(()));
    }

    /// After a restart: retry the unknown request, re-send the last
    /// acknowledged one (it must answer as before), release everything.
    fn resolve(&mut self) {
        let base = {
            let c = self.shared.control.lock().expect("control");
            self.run = c.run;
            c.base.clone()
        };
        self.client = Client::with_timeout(base, REQUEST_TIMEOUT);
        self.keepalive_at = Instant::now();
        if let Some((op, retry)) = self.unknown.take() {
            self.resend(op, retry);
        }
        if let Some((op, retry)) = self.last_acked.clone() {
            self.resend(op, retry);
        }
        if let Some(s) = self.session.clone() {
            let req = ReleaseRequest {
                session: s.clone(),
                locks: None,
                downgrade: None,
                request_id: Some(self.rid()),
            };
            let rid = req.request_id.clone();
            self.call(OpKind::Release { locks: None }, Some(s), rid, None, |c| {
                c.release(&req)
            });
        }
        self.shared.wait_for(|c| {
            c.resolved += 1;
            Some(())
        });
        let run = self.run;
        self.shared.wait_for(|c| {
            (c.run != run || c.phase == Phase::Load || c.phase == Phase::Stop).then_some(())
        });
    }

    fn resend(&mut self, original: OpId, retry: Retry) {
        let rid = match &retry {
            Retry::Acquire(r) => r.request_id.clone(),
            Retry::Release(r) => r.request_id.clone(),
            Retry::Write(r, ..) => r.request_id.clone(),
            Retry::Txn(r, _) => r.request_id.clone(),
        };
        match retry {
            Retry::Acquire(mut req) => {
                // Try only: if the original was never logged this is a new
                // acquire, and the drill must not wait behind it.
                let kind = OpKind::Acquire {
                    locks: req.locks.clone(),
                    wait_ms: 0,
                };
                req.wait_ms = 0;
                let s = Some(req.session.clone());
                self.call(kind, s, rid, Some(original), |c| c.acquire(&req));
            }
            Retry::Release(req) => {
                let kind = OpKind::Release {
                    locks: req.locks.clone(),
                };
                let s = Some(req.session.clone());
                self.call(kind, s, rid, Some(original), |c| c.release(&req));
            }
            Retry::Write(req, value, token) => {
                let kind = OpKind::Write {
                    key: counter_key(self.id),
                    value,
                    release: req.release,
                    token,
                };
                let s = Some(req.session.clone());
                if let (_, Done::Ok(w)) = self.call(kind, s, rid, Some(original), |c| c.write(&req))
                {
                    if w.applied {
                        self.counter = self.counter.max(value);
                    }
                }
            }
            Retry::Txn(req, value) => {
                let kind = OpKind::Txn {
                    key: counter_key(self.id),
                    value,
                };
                if let (_, Done::Ok(_)) =
                    self.call(kind, None, rid, Some(original), |c| c.txn(&req))
                {
                    self.counter = self.counter.max(value);
                }
            }
        }
    }

    /// Makes sure the client has a live session; `Err` when the daemon is down.
    fn ensure_session(&mut self) -> Result<String, ()> {
        if let Some(s) = &self.session {
            if self.keepalive_at.elapsed() < Duration::from_millis(SESSION_TTL_MS / 3) {
                return Ok(s.clone());
            }
            let s = s.clone();
            match self
                .call(OpKind::Keepalive, Some(s.clone()), None, None, |c| {
                    c.keepalive(&s)
                })
                .1
            {
                Done::Ok(_) => {
                    self.keepalive_at = Instant::now();
                    return Ok(s);
                }
                Done::Down => return Err(()),
                Done::Refused(..) => {}
            }
        }
        let (op, done) = self.call(
            OpKind::Open {
                ttl_ms: SESSION_TTL_MS,
            },
            None,
            None,
            None,
            |c| c.create_session(Some("drill"), SESSION_TTL_MS),
        );
        match done {
            Done::Ok(created) => {
                self.shared.history.lock().expect("history").ops[op].session =
                    Some(created.session.clone());
                self.session = Some(created.session.clone());
                self.keepalive_at = Instant::now();
                self.last_acked = None;
                Ok(created.session)
            }
            Done::Refused(..) => Ok(String::new()),
            Done::Down => Err(()),
        }
    }

    /// One job, picked at random. `Err` when the daemon went down.
    fn job(&mut self) -> Result<(), ()> {
        let s = self.ensure_session()?;
        if s.is_empty() {
            // Refused (the session table is full): try again later.
            std::thread::yield_now();
            return Ok(());
        }
        let since_start = self.shared.control.lock().expect("control").run_started;
        let expiry_due = self.abandoned.as_ref().is_some_and(|(_, at)| {
            (*at).max(since_start).elapsed() > Duration::from_millis(ABANDON_TTL_MS + 200)
        });
        if expiry_due {
            return self.await_expiry(&s);
        }
        match self.rng.gen_range(0..100) {
            0..=34 => self.config_job(&s),
            35..=64 => self.txn_job(),
            65..=94 => self.multi_lock_job(&s),
            _ if self.abandoned.is_none() => self.abandon_job(),
            _ => self.txn_job(),
        }
    }

    fn acquire(&mut self, req: AcquireRequest) -> Done<AcquireResponse> {
        let kind = OpKind::Acquire {
            locks: req.locks.clone(),
            wait_ms: req.wait_ms,
        };
        let rid = req.request_id.clone();
        let (op, done) = self.call(kind, Some(req.session.clone()), rid, None, |c| {
            c.acquire(&req)
        });
        self.remember(op, &done, Retry::Acquire(req));
        done
    }

    fn release(&mut self, session: &str, locks: Option<Vec<String>>) -> Done<ReleaseResponse> {
        let req = ReleaseRequest {
            session: session.to_string(),
            locks: locks.clone(),
            downgrade: None,
            request_id: Some(self.rid()),
        };
        let rid = req.request_id.clone();
        let (op, done) = self.call(
            OpKind::Release { locks },
            Some(session.into()),
            rid,
            None,
            |c| c.release(&req),
        );
        self.remember(op, &done, Retry::Release(req));
        done
    }

    fn remember<T>(&mut self, op: OpId, done: &Done<T>, retry: Retry) {
        match done {
            Done::Ok(_) => self.last_acked = Some((op, retry)),
            Done::Down => self.unknown = Some((op, retry)),
            Done::Refused(..) => {}
        }
    }

    fn counter_patch(&self, value: u64) -> serde_json::Value {
        let path = format!("{}/{}", self.shared.root, counter_key(self.id));
        json!([
            {"op": "test", "path": path, "value": value - 1},
            {"op": "replace", "path": path, "value": value},
        ])
    }

    /// Lock `config`, read the counter, write it with release.
    fn config_job(&mut self, s: &str) -> Result<(), ()> {
        let req = AcquireRequest {
            session: s.to_string(),
            locks: vec![LockSpec {
                name: "config".into(),
                mode: Mode::Exclusive,
            }],
            wait_ms: WAIT_MS,
            priority: 0,
            min: None,
            request_id: Some(self.rid()),
        };
        let token = match self.acquire(req) {
            Done::Ok(g) if g.granted => g.token.unwrap_or(0),
            Done::Ok(_) | Done::Refused(..) => return Ok(()),
            Done::Down => return Err(()),
        };
        let key = counter_key(self.id);
        if self.reread_counter().is_err() {
            return Err(());
        }
        let value = self.counter + 1;
        let req = WriteRequest {
            session: s.to_string(),
            patch: self.counter_patch(value),
            release: true,
            request_id: Some(self.rid()),
        };
        let kind = OpKind::Write {
            key,
            value,
            release: true,
            token,
        };
        let rid = req.request_id.clone();
        let (op, done) = self.call(kind, Some(s.into()), rid, None, |c| c.write(&req));
        if let Done::Ok(w) = &done {
            if w.applied {
                self.counter = value;
            }
        }
        let failed = matches!(done, Done::Refused(..));
        self.remember(op, &done, Retry::Write(req, value, token));
        if failed {
            // Not applied (e.g. the counter moved): give config back.
            self.release(s, Some(vec!["config".into()]));
        }
        if matches!(done, Done::Down) {
            Err(())
        } else {
            Ok(())
        }
    }

    /// A one-shot transaction on the counter.
    fn txn_job(&mut self) -> Result<(), ()> {
        let value = self.counter + 1;
        let req = TxnRequest {
            patch: self.counter_patch(value),
            if_serial: None,
            wait_ms: WAIT_MS,
            request_id: Some(self.rid()),
        };
        let kind = OpKind::Txn {
            key: counter_key(self.id),
            value,
        };
        let rid = req.request_id.clone();
        let (op, done) = self.call(kind, None, rid, None, |c| c.txn(&req));
        match &done {
            Done::Ok(_) => self.counter = value,
            Done::Refused(code) if code == "patch_failed" => {
                let _ = self.reread_counter();
            }
            _ => {}
        }
        let down = matches!(done, Done::Down);
        self.remember(op, &done, Retry::Txn(req, value));
        if down {
            Err(())
        } else {
            Ok(())
        }
    }

    /// Reads this client's counter (a recorded read); `Err` when the
    /// daemon is down.
    fn reread_counter(&mut self) -> Result<(), ()> {
        let key = counter_key(self.id);
        let pointer = format!("{}/{key}", self.shared.root);
        match self
            .call(OpKind::Read { key }, None, None, None, |c| {
                c.config_value(&pointer)
            })
            .1
        {
            Done::Ok(v) => {
                if let Some(n) = v.value.as_u64() {
                    self.counter = n;
                }
                Ok(())
            }
            Done::Refused(..) => Ok(()),
            Done::Down => Err(()),
        }
    }

    /// Several node locks in random modes, waiting for them; then release.
    fn multi_lock_job(&mut self, s: &str) -> Result<(), ()> {
        let n = self.rng.gen_range(1..=3);
        let mut names: Vec<usize> = (0..NODE_LOCKS).collect();
        for i in 0..n {
            let j = self.rng.gen_range(i..NODE_LOCKS);
            names.swap(i, j);
        }
        let locks: Vec<LockSpec> = names[..n]
            .iter()
            .map(|i| LockSpec {
                name: format!("node/{i}"),
                mode: if self.rng.gen_bool(0.5) {
                    Mode::Shared
                } else {
                    Mode::Exclusive
                },
            })
            .collect();
        let req = AcquireRequest {
            session: s.to_string(),
            locks: locks.clone(),
            wait_ms: WAIT_MS,
            priority: 0,
            min: None,
            request_id: Some(self.rid()),
        };
        match self.acquire(req) {
            Done::Ok(g) if g.granted => {}
            Done::Ok(_) | Done::Refused(..) => return Ok(()),
            Done::Down => return Err(()),
        }
        let names = locks.into_iter().map(|l| l.name).collect();
        match self.release(s, Some(names)) {
            Done::Down => Err(()),
            _ => Ok(()),
        }
    }

    /// Opens a short session, takes this client's `x/<id>` lock with it,
    /// and stops renewing it.
    fn abandon_job(&mut self) -> Result<(), ()> {
        let (op, done) = self.call(
            OpKind::Open {
                ttl_ms: ABANDON_TTL_MS,
            },
            None,
            None,
            None,
            |c| c.create_session(Some("drill-abandoned"), ABANDON_TTL_MS),
        );
        let e = match done {
            Done::Ok(created) => created.session,
            Done::Refused(..) => return Ok(()),
            Done::Down => return Err(()),
        };
        self.shared.history.lock().expect("history").ops[op].session = Some(e.clone());
        let req = AcquireRequest {
            session: e.clone(),
            locks: vec![LockSpec {
                name: format!("x/{}", self.id),
                mode: Mode::Exclusive,
            }],
            wait_ms: 0,
            priority: 0,
            min: None,
            request_id: Some(self.rid()),
        };
        let kind = OpKind::Acquire {
            locks: req.locks.clone(),
            wait_ms: 0,
        };
        let rid = req.request_id.clone();
        let down = matches!(
            self.call(kind, Some(e.clone()), rid, None, |c| c.acquire(&req))
                .1,
            Done::Down
        );
        let op = self.shared.begin(
            self.id,
            self.run,
            Some(e.clone()),
            OpKind::Abandon,
            None,
            None,
        );
        self.shared.end(op, Outcome::Ok { body: json!({}) });
        self.abandoned = Some((e, Instant::now()));
        if down {
            Err(())
        } else {
            Ok(())
        }
    }

    /// The abandoned session's lease ran out: its lock must be free now (or
    /// soon, at the next expiry check), so wait for it with the own session.
    fn await_expiry(&mut self, s: &str) -> Result<(), ()> {
        let name = format!("x/{}", self.id);
        let req = AcquireRequest {
            session: s.to_string(),
            locks: vec![LockSpec {
                name: name.clone(),
                mode: Mode::Exclusive,
            }],
            wait_ms: ABANDON_TTL_MS,
            priority: 0,
            min: None,
            request_id: Some(self.rid()),
        };
        match self.acquire(req) {
            Done::Ok(g) if g.granted => {
                self.abandoned = None;
                match self.release(s, Some(vec![name])) {
                    Done::Down => Err(()),
                    _ => Ok(()),
                }
            }
            Done::Down => Err(()),
            _ => Ok(()),
        }
    }
}
