//! The client-side history of a drill: every request with its invocation
//! time and what came back (an answer, a refusal, or "unknown" when the
//! connection died). Plain data, so the checker stays pure and a test can
//! write a history by hand.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::api::types::{LockSpec, Mode};

/// An index into [`History::ops`].
pub type OpId = usize;

/// One request, or one drill event that the invariants depend on.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Op {
    pub id: OpId,
    /// The job client that sent it; the drill itself is client `clients`.
    pub client: usize,
    /// Which daemon run it was invoked in: 0 for the first start, +1 per restart.
    pub run: u32,
    /// The session the request acts for, when it has one.
    pub session: Option<String>,
    pub kind: OpKind,
    pub request_id: Option<String>,
    /// The op this one retries with the same `request_id`.
    pub retry_of: Option<OpId>,
    /// Microseconds since the drill started.
    pub invoked_us: u64,
    pub completed_us: Option<u64>,
    pub outcome: Outcome,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum OpKind {
    Open {
        ttl_ms: u64,
    },
    Keepalive,
    Close,
    Acquire {
        locks: Vec<LockSpec>,
        wait_ms: u64,
    },
    /// `locks: None` releases everything the session holds.
    Release {
        locks: Option<Vec<String>>,
    },
    /// Sets the counter `key` from `value - 1` to `value` as the holder of
    /// `config`, which the client took with the grant of token `token`.
    Write {
        key: String,
        value: u64,
        release: bool,
        token: u64,
    },
    /// Sets the counter `key` from `value - 1` to `value` in one transaction.
    Txn {
        key: String,
        value: u64,
    },
    /// Creates the drill's counters (the drill's own first change).
    Setup,
    /// A read of the counter `key` (changes nothing).
    Read {
        key: String,
    },
    /// Not a request: the client stops renewing the session, which may
    /// expire from now on.
    Abandon,
    /// Not a request: the daemon was stopped (SIGSTOP) for longer than a
    /// lease, so every session open then may have expired.
    Pause {
        ms: u64,
    },
}

impl OpKind {
    /// The locks this op gives up when it is invoked, if any: `None` for
    /// an op that releases nothing, `Some(None)` for all of them.
    pub fn releases(&self) -> Option<Option<Vec<String>>> {
        match self {
            OpKind::Release { locks } => Some(locks.clone()),
            OpKind::Write { release: true, .. } => Some(Some(vec!["config".into()])),
            OpKind::Close | OpKind::Abandon => Some(None),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    /// Not finished yet.
    Pending,
    /// A 2xx answer, as the daemon sent it.
    Ok { body: Value },
    /// An error answer: nothing was done.
    Refused { status: u16, code: String },
    /// The connection died or timed out: it may or may not have been done.
    Unknown { error: String },
}

impl Outcome {
    pub fn body(&self) -> Option<&Value> {
        match self {
            Outcome::Ok { body } => Some(body),
            _ => None,
        }
    }

    pub fn is_unknown(&self) -> bool {
        matches!(self, Outcome::Unknown { .. } | Outcome::Pending)
    }

    pub fn is_refused(&self) -> bool {
        matches!(self, Outcome::Refused { .. })
    }
}

impl Op {
    fn field(&self, name: &str) -> Option<&Value> {
        self.outcome.body().and_then(|b| b.get(name))
    }

    /// The LSN an acknowledged answer names.
    pub fn lsn(&self) -> Option<u64> {
        self.field("lsn").and_then(Value::as_u64)
    }

    /// The fencing token of an acknowledged grant.
    pub fn token(&self) -> Option<u64> {
        self.field("token").and_then(Value::as_u64)
    }

    /// True for an acknowledged acquire that was granted.
    pub fn granted(&self) -> bool {
        self.field("granted").and_then(Value::as_bool) == Some(true)
    }

    /// True for an acknowledged write or transaction that was applied.
    pub fn applied(&self) -> bool {
        self.field("applied").and_then(Value::as_bool) == Some(true)
    }

    /// The locks an acknowledged grant gave, in the modes now held.
    pub fn granted_locks(&self) -> Vec<LockSpec> {
        use serde::Deserialize as _;
        self.field("locks")
            .and_then(|l| Vec::<LockSpec>::deserialize(l).ok())
            .unwrap_or_default()
    }

    /// The counter this op sets, and to what, for writes and transactions.
    pub fn counter(&self) -> Option<(&str, u64)> {
        match &self.kind {
            OpKind::Write { key, value, .. } | OpKind::Txn { key, value } => {
                Some((key.as_str(), *value))
            }
            _ => None,
        }
    }

    /// Whether the change this op asked for may be in the state: it was
    /// applied, or its outcome is unknown.
    pub fn maybe_applied(&self) -> bool {
        match &self.outcome {
            Outcome::Ok { .. } => self.applied(),
            Outcome::Refused { .. } => false,
            Outcome::Unknown { .. } | Outcome::Pending => true,
        }
    }

    /// A one-line summary for reports.
    pub fn describe(&self) -> String {
        let who = match &self.session {
            Some(s) => format!(" session {}", &s[..s.len().min(8)]),
            None => String::new(),
        };
        let what = match &self.kind {
            OpKind::Open { ttl_ms } => format!("open ttl_ms={ttl_ms}"),
            OpKind::Keepalive => "keepalive".into(),
            OpKind::Close => "close".into(),
            OpKind::Acquire { locks, wait_ms } => {
                format!("acquire {} wait_ms={wait_ms}", lock_list(locks))
            }
            OpKind::Release { locks: None } => "release all".into(),
            OpKind::Release { locks: Some(l) } => format!("release {}", l.join(",")),
            OpKind::Write {
                key,
                value,
                release,
                token,
            } => format!("write {key}={value} release={release} under token {token}"),
            OpKind::Txn { key, value } => format!("txn {key}={value}"),
            OpKind::Setup => "setup".into(),
            OpKind::Read { key } => format!("read {key}"),
            OpKind::Abandon => "abandon (stop keepalives)".into(),
            OpKind::Pause { ms } => format!("daemon paused {ms} ms"),
        };
        let outcome = match &self.outcome {
            Outcome::Pending => "pending".into(),
            Outcome::Ok { body } => body.to_string(),
            Outcome::Refused { status, code } => format!("refused {status} {code}"),
            Outcome::Unknown { error } => format!("UNKNOWN ({error})"),
        };
        let retry = self
            .retry_of
            .map_or(String::new(), |o| format!(" (retry of #{o})"));
        let rid = self
            .request_id
            .as_deref()
            .map_or(String::new(), |r| format!(" rid={r}"));
        format!(
            "#{} run {} client {}{who} t={:.3}s {what}{rid}{retry} -> {outcome}",
            self.id,
            self.run,
            self.client,
            self.invoked_us as f64 / 1e6
        )
    }
}

fn lock_list(locks: &[LockSpec]) -> String {
    locks
        .iter()
        .map(|l| match l.mode {
            Mode::Shared => format!("{}:shared", l.name),
            Mode::Exclusive => l.name.clone(),
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Every op of a drill, in invocation order (ids are indexes).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct History {
    pub ops: Vec<Op>,
}

impl History {
    /// Appends `op` (its `id` is set here); its id.
    pub fn push(&mut self, mut op: Op) -> OpId {
        let id = self.ops.len();
        op.id = id;
        self.ops.push(op);
        id
    }

    pub fn end(&mut self, id: OpId, outcome: Outcome, completed_us: u64) {
        let op = &mut self.ops[id];
        op.outcome = outcome;
        op.completed_us = Some(completed_us);
    }
}
