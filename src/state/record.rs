//! The log records: the facts the live daemon decided, which `State::apply`
//! replays unchanged after a restart.
//!
//! A record says what happened ("session S was granted these locks under
//! token T"), never what was asked for, so replay needs no decision logic and
//! cannot decide differently from the live daemon. Waiters never appear here:
//! a waiting HTTP request dies with the process.
//!
//! The payload codec (bincode) encodes an enum variant by its index. New
//! variants therefore go at the end of [`Record`] and [`super::dedup::Outcome`],
//! and existing variants never change their fields: a segment written today
//! must decode in every later version. (`#[non_exhaustive]` would not help:
//! it changes nothing on the wire.)

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A session's identity: 128 random bits chosen by the caller, so ids of
/// sessions opened before and after a restart never collide in practice.
/// Shown and parsed as exactly 32 lowercase hex digits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SessionId(pub u128);

/// The text length of a [`SessionId`]: two hex digits a byte.
pub const SESSION_ID_HEX_LEN: usize = 32;

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

/// Why a text is not a [`SessionId`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseSessionIdError;

impl fmt::Display for ParseSessionIdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "a session id is {SESSION_ID_HEX_LEN} lowercase hex digits"
        )
    }
}

impl std::error::Error for ParseSessionIdError {}

impl FromStr for SessionId {
    type Err = ParseSessionIdError;

    /// Accepts only the canonical form, so one session has one spelling (an
    /// id used as a map key in a client must match the one in `GET /v1/locks`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let canonical = s.len() == SESSION_ID_HEX_LEN
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !canonical {
            return Err(ParseSessionIdError);
        }
        u128::from_str_radix(s, 16)
            .map(SessionId)
            .map_err(|_| ParseSessionIdError)
    }
}

/// A lock mode. Shared holders coexist; an exclusive holder is alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum LockMode {
    Shared,
    Exclusive,
}

impl LockMode {
    /// Whether two different sessions may hold a lock in these modes at once.
    pub fn compatible(self, other: LockMode) -> bool {
        self == LockMode::Shared && other == LockMode::Shared
    }

    /// Whether holding `self` already gives everything `wanted` asks for.
    pub fn covers(self, wanted: LockMode) -> bool {
        self == LockMode::Exclusive || wanted == LockMode::Shared
    }
}

/// One lock asked for (or, in a [`Record::Grant`], granted).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct LockRequest {
    pub name: String,
    pub mode: LockMode,
}

impl LockRequest {
    pub fn new(name: impl Into<String>, mode: LockMode) -> Self {
        LockRequest {
            name: name.into(),
            mode,
        }
    }
}

/// Why a session ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CloseReason {
    /// The client closed it.
    Closed,
    /// Its lease ran out; the daemon's sweeper decided so.
    Expired,
}

/// One fact in the write-ahead log. See the module comment for the rule on
/// adding variants (at the end only).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Record {
    /// Written at every daemon start. Epochs strictly increase, so a reader
    /// can tell which records one process life wrote.
    Epoch { epoch: u64, started_unix_ms: u64 },
    SessionOpen {
        session: SessionId,
        name: Option<String>,
        ttl_ms: u64,
    },
    /// Ends a session: releases all its locks and forgets its dedup entries.
    SessionClose {
        session: SessionId,
        reason: CloseReason,
    },
    /// All of `locks` granted to `session` at once under fencing `token`.
    /// For an opportunistic acquire, `locks` are the ones actually taken.
    Grant {
        session: SessionId,
        locks: Vec<LockRequest>,
        token: u64,
        request_id: Option<String>,
    },
    /// Releases `release` and downgrades `downgrade` (exclusive to shared).
    /// "Release all" is logged as the explicit list of names held when the
    /// daemon decided, so replay never depends on what "all" meant then.
    Release {
        session: SessionId,
        release: Vec<String>,
        downgrade: Vec<String>,
        request_id: Option<String>,
    },
    /// A config patch (RFC 6902, as JSON text because bincode cannot carry a
    /// `serde_json::Value`) and, if `release_config`, the release of the
    /// session's `config` lock in the same fact. `session: None` is the
    /// one-shot transaction: the daemon took and dropped `config` itself, so
    /// no grant or release is logged for it.
    ConfigWrite {
        session: Option<SessionId>,
        patch_json: String,
        release_config: bool,
        request_id: Option<String>,
    },
}

/// WAL frame kinds of the daemon's records: one a [`Record`] variant, so a
/// frame says what it holds before it is decoded (`wal-dump` shows it). The
/// payload is `codec::encode(&record)`. Kinds never change meaning; a new
/// variant takes the next number. A kind with `wal::KIND_SKIPPABLE` set is
/// one an older reader may skip; none of these is.
pub mod kind {
    pub const EPOCH: u16 = 1;
    pub const SESSION_OPEN: u16 = 2;
    pub const SESSION_CLOSE: u16 = 3;
    pub const GRANT: u16 = 4;
    pub const RELEASE: u16 = 5;
    pub const CONFIG_WRITE: u16 = 6;

    /// Every kind this build writes, with its name (for dumps and errors).
    pub const ALL: [(u16, &str); 6] = [
        (EPOCH, "epoch"),
        (SESSION_OPEN, "session-open"),
        (SESSION_CLOSE, "session-close"),
        (GRANT, "grant"),
        (RELEASE, "release"),
        (CONFIG_WRITE, "config-write"),
    ];

    /// The name of a kind this build knows.
    pub fn name(kind: u16) -> Option<&'static str> {
        ALL.iter().find(|(k, _)| *k == kind).map(|(_, n)| *n)
    }
}

impl Record {
    /// The WAL frame kind this record is written under.
    pub fn kind(&self) -> u16 {
        match self {
            Record::Epoch { .. } => kind::EPOCH,
            Record::SessionOpen { .. } => kind::SESSION_OPEN,
            Record::SessionClose { .. } => kind::SESSION_CLOSE,
            Record::Grant { .. } => kind::GRANT,
            Record::Release { .. } => kind::RELEASE,
            Record::ConfigWrite { .. } => kind::CONFIG_WRITE,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{decode, encode};

    #[test]
    fn session_id_text_round_trip_and_only_canonical_form() {
        // Invariant: Display gives 32 lowercase hex digits and FromStr accepts
        // exactly that form, so an id has one spelling.
        let id = SessionId(0x0123_4567_89ab_cdef_0011_2233_4455_6677);
        let text = id.to_string();
        assert_eq!(text, "0123456789abcdef0011223344556677");
        assert_eq!(text.parse::<SessionId>(), Ok(id));
        assert_eq!(SessionId(1).to_string().len(), SESSION_ID_HEX_LEN);
        for bad in [
            "",
            "0123456789ABCDEF0011223344556677",
            "123456789abcdef0011223344556677",
            "+123456789abcdef0011223344556677",
            "0123456789abcdef00112233445566778",
            "0123456789abcdeg0011223344556677",
        ] {
            assert_eq!(
                bad.parse::<SessionId>(),
                Err(ParseSessionIdError),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn lock_modes_conflict_unless_both_shared() {
        // Invariant: only shared/shared is compatible; exclusive covers both.
        use LockMode::*;
        assert!(Shared.compatible(Shared));
        assert!(!Shared.compatible(Exclusive));
        assert!(!Exclusive.compatible(Shared));
        assert!(!Exclusive.compatible(Exclusive));
        assert!(Exclusive.covers(Shared) && Exclusive.covers(Exclusive));
        assert!(Shared.covers(Shared) && !Shared.covers(Exclusive));
    }

    #[test]
    fn every_variant_round_trips_through_the_codec() {
        // Invariant: decode(encode(r)) == r for every record variant,
        // including 128-bit session ids and JSON carried as text.
        let s = SessionId(u128::MAX - 7);
        let records = vec![
            Record::Epoch {
                epoch: 3,
                started_unix_ms: 1_700_000_000_000,
            },
            Record::SessionOpen {
                session: s,
                name: Some("node1".into()),
                ttl_ms: 30_000,
            },
            Record::SessionClose {
                session: s,
                reason: CloseReason::Expired,
            },
            Record::Grant {
                session: s,
                locks: vec![LockRequest::new("node/a", LockMode::Exclusive)],
                token: 9,
                request_id: Some("r1".into()),
            },
            Record::Release {
                session: s,
                release: vec!["a".into()],
                downgrade: vec!["b".into()],
                request_id: None,
            },
            Record::ConfigWrite {
                session: None,
                patch_json: r#"[{"op":"add","path":"/a","value":1}]"#.into(),
                release_config: false,
                request_id: Some("t".into()),
            },
        ];
        for r in records {
            assert_eq!(decode::<Record>(&encode(&r).unwrap()).unwrap(), r);
        }
    }

    #[test]
    fn frame_kinds_are_distinct_stable_and_not_skippable() {
        // Invariant: each variant has its own fixed kind, none is 0 (reserved
        // by the WAL) and none carries the skippable bit.
        let s = SessionId(1);
        let kinds = [
            Record::Epoch {
                epoch: 1,
                started_unix_ms: 0,
            }
            .kind(),
            Record::SessionClose {
                session: s,
                reason: CloseReason::Closed,
            }
            .kind(),
            Record::ConfigWrite {
                session: None,
                patch_json: "[]".into(),
                release_config: false,
                request_id: None,
            }
            .kind(),
        ];
        assert_eq!(kinds, [1, 3, 6]);
        let all: std::collections::BTreeSet<u16> = kind::ALL.iter().map(|(k, _)| *k).collect();
        assert_eq!(all.len(), kind::ALL.len());
        assert!(all
            .iter()
            .all(|k| *k != 0 && k & crate::wal::KIND_SKIPPABLE == 0));
        assert_eq!(kind::name(kind::GRANT), Some("grant"));
        assert_eq!(kind::name(99), None);
    }

    #[test]
    fn variant_indexes_are_stable() {
        // Invariant: the first byte of an encoded record is its variant index,
        // which must never change (see the module comment).
        let s = SessionId(1);
        let first = |r: &Record| encode(r).unwrap()[0];
        assert_eq!(
            first(&Record::Epoch {
                epoch: 1,
                started_unix_ms: 0
            }),
            0
        );
        assert_eq!(
            first(&Record::SessionOpen {
                session: s,
                name: None,
                ttl_ms: 1
            }),
            1
        );
        let close = Record::SessionClose {
            session: s,
            reason: CloseReason::Closed,
        };
        assert_eq!(first(&close), 2);
        let grant = Record::Grant {
            session: s,
            locks: vec![],
            token: 1,
            request_id: None,
        };
        assert_eq!(first(&grant), 3);
        let release = Record::Release {
            session: s,
            release: vec![],
            downgrade: vec![],
            request_id: None,
        };
        assert_eq!(first(&release), 4);
        let write = Record::ConfigWrite {
            session: None,
            patch_json: "[]".into(),
            release_config: false,
            request_id: None,
        };
        assert_eq!(first(&write), 5);
    }
}
