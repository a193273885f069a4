//! The JSON bodies of API v1, shared by the server and `wconf::client`.
//! Request types refuse unknown fields, so a misspelt option is a 400, not
//! a silently ignored wish.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::state::{LockMode, LockRequest};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Shared,
    Exclusive,
}

impl From<Mode> for LockMode {
    fn from(m: Mode) -> LockMode {
        match m {
            Mode::Shared => LockMode::Shared,
            Mode::Exclusive => LockMode::Exclusive,
        }
    }
}

impl From<LockMode> for Mode {
    fn from(m: LockMode) -> Mode {
        match m {
            LockMode::Shared => Mode::Shared,
            LockMode::Exclusive => Mode::Exclusive,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockSpec {
    pub name: String,
    pub mode: Mode,
}

impl From<&LockRequest> for LockSpec {
    fn from(l: &LockRequest) -> LockSpec {
        LockSpec {
            name: l.name.clone(),
            mode: l.mode.into(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateSession {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub ttl_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionCreated {
    pub session: String,
    pub ttl_ms: u64,
    pub epoch: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionView {
    pub session: String,
    pub name: Option<String>,
    pub ttl_ms: u64,
    /// Time left on the lease; None before the lease started.
    pub lease_remaining_ms: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionList {
    pub sessions: Vec<SessionView>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AcquireRequest {
    pub session: String,
    pub locks: Vec<LockSpec>,
    /// 0: try only.
    #[serde(default)]
    pub wait_ms: u64,
    /// -20 (most urgent) to 19. Wider than i8 on the wire so an out-of-range
    /// value gets the range error rather than a type error.
    #[serde(default)]
    pub priority: i64,
    /// Opportunistic: take whichever are free, at least this many.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AcquireResponse {
    pub granted: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lsn: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locks: Option<Vec<LockSpec>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blockers: Option<Vec<String>>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleaseRequest {
    pub session: String,
    /// Absent: release every lock the session holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locks: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub downgrade: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseResponse {
    pub released: bool,
    pub lsn: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HolderView {
    pub name: String,
    pub session: String,
    pub mode: Mode,
    pub token: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WaiterView {
    pub session: String,
    pub locks: Vec<LockSpec>,
    pub priority: i8,
    pub age_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LocksView {
    pub holders: Vec<HolderView>,
    pub waiters: Vec<WaiterView>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConfigView {
    pub serial: u64,
    /// The LSN of the last change to the document.
    pub lsn: u64,
    pub config: Value,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConfigValue {
    pub serial: u64,
    pub value: Value,
}

/// The patch is a `Value` for clients; the daemon reads it as
/// `Box<RawValue>`, the text as sent, so it is parsed once, into the ops.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WriteRequest<P = Value> {
    pub session: String,
    pub patch: P,
    #[serde(default)]
    pub release: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteResponse {
    pub applied: bool,
    pub lock_was_held: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lsn: Option<u64>,
}

/// The patch's type as for [`WriteRequest`].
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TxnRequest<P = Value> {
    pub patch: P,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub if_serial: Option<u64>,
    #[serde(default)]
    pub wait_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnResponse {
    pub applied: bool,
    pub serial: u64,
    pub lsn: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Status {
    pub epoch: u64,
    pub applied_lsn: u64,
    pub durable_lsn: u64,
    pub segments: u64,
    pub segment_bytes: u64,
    pub sessions: u64,
    pub locks_held: u64,
    pub waiters: u64,
    pub config_serial: u64,
    pub uptime_ms: u64,
    pub fsync_last_us: u64,
    pub fsync_p99_us: u64,
}

/// `POST /v1/admin/snapshot`: the snapshot that is now durable.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SnapshotTaken {
    /// The state in the snapshot is the state after this LSN.
    pub lsn: u64,
    pub path: String,
    pub bytes: u64,
    /// From the hand-over to the snapshot being durable (waiting for its LSN
    /// to be durable in the log, encoding, writing, fsyncs).
    pub duration_ms: u64,
    /// How long the lock actor stopped for the hand-over (copying the state).
    pub stall_us: u64,
    /// Old snapshots and segments deleted after it was durable.
    pub snapshots_removed: u64,
    pub segments_removed: u64,
}
