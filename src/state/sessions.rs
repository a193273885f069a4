//! The sessions table: which sessions are open, with what TTL, and (live
//! only) when each one's lease runs out.
//!
//! Lease deadlines are monotonic milliseconds passed in by the caller; they
//! mean nothing across a restart, so they are never persisted. After recovery
//! every session gets a full TTL of grace ([`Sessions::grant_grace`]): its
//! client could not reach a dead daemon, so it must not be punished for that.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::record::SessionId;
use super::StateError;

/// The most sessions open at once. Each holds locks and up to
/// `dedup::REQUESTS_PER_SESSION_MAX` dedup entries, so this bounds memory.
pub const SESSIONS_MAX: usize = 65_536;
/// The shortest lease: below a second, a client's keepalive loop competes
/// with ordinary network and GC pauses.
pub const TTL_MS_MIN: u64 = 1_000;
/// The longest lease: one day. A longer lease is a lock leak in disguise.
pub const TTL_MS_MAX: u64 = 86_400_000;
/// The longest session name, a label for humans (e.g. `GET /v1/locks`).
pub const SESSION_NAME_BYTES_MAX: usize = 256;

/// What the log knows about a session.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionInfo {
    pub name: Option<String>,
    pub ttl_ms: u64,
}

/// The open sessions. Equality and serialization cover only what the log
/// knows; lease deadlines are live-only.
#[derive(Clone, Debug, Default)]
pub struct Sessions {
    /// A persistent map, so a snapshot's copy is O(1).
    open: imbl::OrdMap<SessionId, SessionInfo>,
    /// Lease deadline (monotonic ms) per session. A session missing here has
    /// not started its lease yet: it was just opened or just recovered.
    deadlines_ms: BTreeMap<SessionId, u64>,
}

impl PartialEq for Sessions {
    fn eq(&self, other: &Self) -> bool {
        self.open == other.open
    }
}

impl Sessions {
    /// The persisted part only: no lease deadlines.
    pub(crate) fn persisted_copy(&self) -> Sessions {
        Sessions {
            open: self.open.clone(),
            deadlines_ms: Default::default(),
        }
    }

    pub fn get(&self, session: SessionId) -> Option<&SessionInfo> {
        self.open.get(&session)
    }

    pub fn contains(&self, session: SessionId) -> bool {
        self.open.contains_key(&session)
    }

    pub fn len(&self) -> usize {
        self.open.len()
    }

    pub fn is_empty(&self) -> bool {
        self.open.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (SessionId, &SessionInfo)> {
        self.open.iter().map(|(id, info)| (*id, info))
    }

    /// Checks that `open` would succeed, without changing anything.
    pub fn check_open(
        &self,
        session: SessionId,
        name: Option<&str>,
        ttl_ms: u64,
    ) -> Result<(), StateError> {
        if !(TTL_MS_MIN..=TTL_MS_MAX).contains(&ttl_ms) {
            return Err(StateError::TtlOutOfRange {
                ttl_ms,
                min: TTL_MS_MIN,
                max: TTL_MS_MAX,
            });
        }
        if let Some(name) = name {
            check_session_name(name)?;
        }
        if self.open.contains_key(&session) {
            return Err(StateError::SessionExists { session });
        }
        if self.open.len() >= SESSIONS_MAX {
            return Err(StateError::Full {
                what: "sessions",
                max: SESSIONS_MAX,
            });
        }
        Ok(())
    }

    /// Opens a session. Its lease starts at the first [`Sessions::keepalive`]
    /// or [`Sessions::expired`] call, whichever comes first, because `apply`
    /// has no clock.
    pub fn open(
        &mut self,
        session: SessionId,
        name: Option<String>,
        ttl_ms: u64,
    ) -> Result<(), StateError> {
        self.check_open(session, name.as_deref(), ttl_ms)?;
        self.open.insert(session, SessionInfo { name, ttl_ms });
        Ok(())
    }

    /// Extends the lease to `now_ms + ttl_ms`. A lease that has already run
    /// out stays out: the sweeper may be logging its close right now, and a
    /// session must not come back to life after its locks were handed on.
    pub fn keepalive(&mut self, session: SessionId, now_ms: u64) -> Result<(), StateError> {
        let info = self
            .open
            .get(&session)
            .ok_or(StateError::UnknownSession { session })?;
        if let Some(&deadline_ms) = self.deadlines_ms.get(&session) {
            if deadline_ms <= now_ms {
                return Err(StateError::LeaseExpired { session });
            }
        }
        self.deadlines_ms
            .insert(session, now_ms.saturating_add(info.ttl_ms));
        Ok(())
    }

    /// Removes a session; its locks and dedup entries are the caller's
    /// (`State::apply`) to drop.
    pub fn close(&mut self, session: SessionId) -> Result<SessionInfo, StateError> {
        let info = self
            .open
            .remove(&session)
            .ok_or(StateError::UnknownSession { session })?;
        self.deadlines_ms.remove(&session);
        Ok(info)
    }

    /// The sessions whose lease has run out at `now_ms`, in id order; the
    /// caller logs a `SessionClose { reason: Expired }` for each. Takes
    /// `&mut self` because it starts the lease of any session that has none
    /// yet, so a session whose opener forgot to call `keepalive` still
    /// expires instead of leaking its locks forever.
    pub fn expired(&mut self, now_ms: u64) -> Vec<SessionId> {
        let mut out = Vec::new();
        for (id, info) in &self.open {
            let deadline_ms = *self
                .deadlines_ms
                .entry(*id)
                .or_insert(now_ms.saturating_add(info.ttl_ms));
            if deadline_ms <= now_ms {
                out.push(*id);
            }
        }
        out
    }

    /// Gives every session a fresh full lease from `now_ms`; called once
    /// after recovery.
    pub fn grant_grace(&mut self, now_ms: u64) {
        self.deadlines_ms = self
            .open
            .iter()
            .map(|(id, info)| (*id, now_ms.saturating_add(info.ttl_ms)))
            .collect();
    }

    /// The lease deadline, if the lease has started (for status pages).
    pub fn deadline_ms(&self, session: SessionId) -> Option<u64> {
        self.deadlines_ms.get(&session).copied()
    }
}

fn check_session_name(name: &str) -> Result<(), StateError> {
    if name.len() > SESSION_NAME_BYTES_MAX {
        return Err(StateError::InvalidName {
            what: "session name",
            reason: format!("longer than {SESSION_NAME_BYTES_MAX} bytes"),
        });
    }
    if name.chars().any(char::is_control) {
        return Err(StateError::InvalidName {
            what: "session name",
            reason: "contains a control character".into(),
        });
    }
    Ok(())
}

// Only the log-known part is persisted; the map is re-checked on load so a
// hostile snapshot cannot smuggle in a session that `open` would refuse.
impl Serialize for Sessions {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.open.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Sessions {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let open = BTreeMap::<SessionId, SessionInfo>::deserialize(deserializer)?;
        let mut sessions = Sessions::default();
        for (id, info) in open {
            sessions
                .open(id, info.name, info.ttl_ms)
                .map_err(serde::de::Error::custom)?;
        }
        Ok(sessions)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(n: u128) -> SessionId {
        SessionId(n)
    }

    #[test]
    fn lease_runs_from_keepalive_and_expiry_is_final() {
        // Invariant: a session expires exactly when now >= last keepalive +
        // ttl, and a keepalive after that instant is refused.
        let mut t = Sessions::default();
        t.open(s(1), None, 5_000).unwrap();
        t.keepalive(s(1), 100).unwrap();
        assert!(t.expired(5_099).is_empty());
        t.keepalive(s(1), 5_099).unwrap();
        assert!(t.expired(10_098).is_empty());
        assert_eq!(t.expired(10_099), vec![s(1)]);
        assert_eq!(
            t.keepalive(s(1), 10_099),
            Err(StateError::LeaseExpired { session: s(1) })
        );
    }

    #[test]
    fn unstarted_lease_starts_at_first_sweep() {
        // Invariant: a session nobody kept alive still expires one TTL after
        // the first sweep that saw it.
        let mut t = Sessions::default();
        t.open(s(1), None, 1_000).unwrap();
        assert!(t.expired(50).is_empty());
        assert_eq!(t.deadline_ms(s(1)), Some(1_050));
        assert_eq!(t.expired(1_050), vec![s(1)]);
    }

    #[test]
    fn grace_after_recovery_restarts_every_lease() {
        // Invariant: grant_grace(now) gives each session now + its own TTL,
        // even one whose old deadline had passed.
        let mut t = Sessions::default();
        t.open(s(1), None, 1_000).unwrap();
        t.open(s(2), Some("b".into()), 2_000).unwrap();
        t.keepalive(s(1), 0).unwrap();
        t.grant_grace(10_000);
        assert_eq!(t.deadline_ms(s(1)), Some(11_000));
        assert_eq!(t.deadline_ms(s(2)), Some(12_000));
        t.keepalive(s(1), 10_500).unwrap();
    }

    #[test]
    fn open_refuses_bad_input_and_duplicates() {
        // Invariant: open validates TTL bounds, the name and uniqueness, and
        // changes nothing when it refuses.
        let mut t = Sessions::default();
        let short = t.open(s(1), None, TTL_MS_MIN - 1);
        assert!(matches!(short, Err(StateError::TtlOutOfRange { .. })));
        let long = t.open(s(1), None, TTL_MS_MAX + 1);
        assert!(matches!(long, Err(StateError::TtlOutOfRange { .. })));
        let bad_name = t.open(s(1), Some("a\nb".into()), TTL_MS_MIN);
        assert!(matches!(bad_name, Err(StateError::InvalidName { .. })));
        let long_name = "x".repeat(SESSION_NAME_BYTES_MAX + 1);
        assert!(t.open(s(1), Some(long_name), TTL_MS_MIN).is_err());
        assert!(t.is_empty());
        t.open(s(1), None, TTL_MS_MIN).unwrap();
        let again = t.open(s(1), None, TTL_MS_MIN);
        assert_eq!(again, Err(StateError::SessionExists { session: s(1) }));
        assert_eq!(
            t.close(s(2)),
            Err(StateError::UnknownSession { session: s(2) })
        );
        assert_eq!(
            t.keepalive(s(2), 0),
            Err(StateError::UnknownSession { session: s(2) })
        );
    }

    #[test]
    fn table_is_bounded_by_sessions_max() {
        // Invariant: the table never holds more than SESSIONS_MAX sessions.
        let mut t = Sessions::default();
        for n in 0..SESSIONS_MAX as u128 {
            t.open(s(n), None, TTL_MS_MIN).unwrap();
        }
        let full = t.open(s(u128::MAX), None, TTL_MS_MIN);
        assert_eq!(
            full,
            Err(StateError::Full {
                what: "sessions",
                max: SESSIONS_MAX
            })
        );
        assert_eq!(t.len(), SESSIONS_MAX);
    }
}
