//! The recovery invariants of issue 6, section 2, as pure functions: a
//! client-side [`History`] and one [`Observed`] state go in, the
//! [`Violation`]s, each naming its invariant, come out. No I/O, no clock, so
//! the drill, the integration tests and (later) in-process crash-state
//! enumeration all judge the same way, and a test can doctor either input.
//!
//! The checks rely on the drill's workload conventions: every config change
//! is a job client's counter `k<i>` going from `v - 1` to `v` (guarded by a
//! JSON Patch `test`), so each applied change moves exactly one counter by
//! one, and the document's serial must equal the setup's plus the sum of
//! the counters.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;

use serde::{Deserialize, Serialize};

use super::history::{History, Op, OpId, OpKind, Outcome};
use crate::api::types::Mode;

/// The eight invariants, numbered as in the issue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Invariant {
    NoLostAck,
    CombinedRecords,
    Prefix,
    MutualExclusion,
    NoResurrection,
    ExactlyOnce,
    IdempotentRecovery,
    Liveness,
}

impl Invariant {
    pub const ALL: [Invariant; 8] = [
        Invariant::NoLostAck,
        Invariant::CombinedRecords,
        Invariant::Prefix,
        Invariant::MutualExclusion,
        Invariant::NoResurrection,
        Invariant::ExactlyOnce,
        Invariant::IdempotentRecovery,
        Invariant::Liveness,
    ];

    pub fn number(self) -> u8 {
        Invariant::ALL
            .iter()
            .position(|i| *i == self)
            .map_or(0, |p| p as u8 + 1)
    }

    pub fn title(self) -> &'static str {
        match self {
            Invariant::NoLostAck => "no lost acknowledged change",
            Invariant::CombinedRecords => "combined records",
            Invariant::Prefix => "prefix",
            Invariant::MutualExclusion => "mutual exclusion",
            Invariant::NoResurrection => "no resurrection",
            Invariant::ExactlyOnce => "exactly once",
            Invariant::IdempotentRecovery => "idempotent recovery",
            Invariant::Liveness => "liveness",
        }
    }
}

impl fmt::Display for Invariant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.number(), self.title())
    }
}

/// One broken promise, with the ops that show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Violation {
    pub invariant: Invariant,
    /// The daemon run whose recovered state showed it.
    pub run: u32,
    pub message: String,
    pub ops: Vec<OpId>,
}

fn violation(invariant: Invariant, run: u32, message: String, ops: Vec<OpId>) -> Violation {
    Violation {
        invariant,
        run,
        message,
        ops,
    }
}

/// One lock holder as the daemon reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    pub name: String,
    pub session: String,
    pub mode: Mode,
    pub token: u64,
}

/// A state the daemon served, read before any client ran against it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Observed {
    /// The daemon run it was read from.
    pub run: u32,
    /// The last LSN the state reflects (for a recovered state, the last
    /// record recovered, before the new epoch record).
    pub lsn: u64,
    pub serial: u64,
    /// The drill's counters (`k0`, `k1`, ...) as found in the document.
    pub counters: BTreeMap<String, u64>,
    pub holders: Vec<Holder>,
    pub sessions: BTreeSet<String>,
    /// Read after every client resolved its unknown requests by retrying
    /// them: the bounds of the prefix invariant are then exact.
    pub quiescent: bool,
}

/// What the checker knows beyond the history.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Model {
    /// The document's serial right after the drill's setup.
    pub serial_after_setup: u64,
    /// Sessions that existed before the drill (a user's data directory):
    /// not the drill's business, except for mutual exclusion.
    pub foreign_sessions: BTreeSet<String>,
}

/// The counter key of job client `i`.
pub fn counter_key(client: usize) -> String {
    format!("k{client}")
}

/// What the history says a session holds, lock by lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hold {
    /// Granted with this token and acknowledged; no release invoked since.
    Definite { token: u64, op: OpId },
    /// Maybe held: an acquire or a release whose outcome is unknown, or a
    /// session that may have expired. The token, when known.
    Maybe { token: Option<u64>, op: OpId },
}

#[derive(Debug, Default)]
struct SessionFacts {
    open_op: Option<OpId>,
    /// Acknowledged close, or the daemon said it does not know it (404).
    gone: Option<OpId>,
    /// Abandoned, paused past its lease, or closed with an unknown outcome:
    /// it may have ended without the client hearing of it.
    mortal: bool,
    holds: BTreeMap<String, Hold>,
}

impl SessionFacts {
    fn all_maybe(&mut self) {
        for hold in self.holds.values_mut() {
            if let Hold::Definite { token, op } = *hold {
                *hold = Hold::Maybe {
                    token: Some(token),
                    op,
                };
            }
        }
    }
}

/// True when a retry's original was acknowledged: the retry must then only
/// repeat the answer and changes nothing.
fn repeats_acked(history: &History, op: &Op) -> bool {
    op.retry_of
        .is_some_and(|o| matches!(history.ops[o].outcome, Outcome::Ok { .. }))
}

fn refused_unknown_session(op: &Op) -> bool {
    matches!(&op.outcome, Outcome::Refused { status: 404, code } if code == "unknown_session")
}

/// Replays the history into per-session facts.
fn session_facts(
    history: &History,
    run: u32,
) -> (BTreeMap<String, SessionFacts>, usize, Vec<Violation>) {
    let mut facts: BTreeMap<String, SessionFacts> = BTreeMap::new();
    let mut unknown_opens = 0;
    let mut found = vec![];
    // Ops are in invocation order, so a pause makes every session mortal
    // only for the ops invoked after it; one in flight when the pause began
    // may be answered by a daemon that expired its session meanwhile.
    let pauses: Vec<u64> = history
        .ops
        .iter()
        .filter(|op| matches!(op.kind, OpKind::Pause { .. }))
        .map(|op| op.invoked_us)
        .collect();
    let paused_in_flight = |op: &Op| {
        let answered = op.completed_us.unwrap_or(u64::MAX);
        pauses.iter().any(|&p| p >= op.invoked_us && p < answered)
    };
    for op in &history.ops {
        if let OpKind::Pause { .. } = op.kind {
            for f in facts.values_mut() {
                f.mortal = true;
                f.all_maybe();
            }
            continue;
        }
        if let OpKind::Open { .. } = op.kind {
            match (&op.outcome, &op.session) {
                (Outcome::Ok { .. }, Some(s)) => {
                    facts.entry(s.clone()).or_default().open_op = Some(op.id)
                }
                (o, _) if o.is_unknown() => unknown_opens += 1,
                _ => {}
            }
            continue;
        }
        let Some(s) = &op.session else { continue };
        if repeats_acked(history, op) {
            continue;
        }
        if !facts.contains_key(s) {
            facts.insert(s.clone(), SessionFacts::default());
        }
        let f = facts.get_mut(s).expect("inserted above");
        if refused_unknown_session(op) {
            if !f.mortal && f.gone.is_none() && !paused_in_flight(op) {
                found.push(violation(
                    Invariant::NoLostAck,
                    run,
                    format!(
                        "session {s} was opened and never ended, but the daemon no longer knows it"
                    ),
                    f.open_op.into_iter().chain([op.id]).collect(),
                ));
            }
            f.gone.get_or_insert(op.id);
            f.mortal = true;
            f.holds.clear();
            continue;
        }
        match (&op.kind, &op.outcome) {
            (OpKind::Acquire { .. }, Outcome::Ok { .. }) if op.granted() => {
                let token = op.token().unwrap_or(0);
                for l in op.granted_locks() {
                    f.holds.insert(l.name, Hold::Definite { token, op: op.id });
                }
            }
            (OpKind::Acquire { locks, .. }, o) if o.is_unknown() => {
                for l in locks {
                    f.holds.insert(
                        l.name.clone(),
                        Hold::Maybe {
                            token: None,
                            op: op.id,
                        },
                    );
                }
            }
            (OpKind::Close, Outcome::Ok { .. }) => {
                f.gone.get_or_insert(op.id);
                f.holds.clear();
            }
            (OpKind::Close, o) if o.is_unknown() => {
                f.mortal = true;
                f.all_maybe();
            }
            (OpKind::Abandon, _) => {
                f.mortal = true;
                f.all_maybe();
            }
            (kind, outcome) => {
                if let Some(released) = kind.releases() {
                    let names: Vec<String> = match released {
                        Some(names) => names,
                        None => f.holds.keys().cloned().collect(),
                    };
                    match outcome {
                        // A write answered "not applied" says the session
                        // did not hold config: it holds it no more either.
                        Outcome::Ok { .. } => {
                            for n in names {
                                f.holds.remove(&n);
                            }
                        }
                        o if o.is_unknown() => {
                            for n in names {
                                if let Some(Hold::Definite { token, op }) = f.holds.get(&n).copied()
                                {
                                    f.holds.insert(
                                        n,
                                        Hold::Maybe {
                                            token: Some(token),
                                            op,
                                        },
                                    );
                                }
                            }
                        }
                        _ => {}
                    }
                }
            }
        }
    }
    (facts, unknown_opens, found)
}

/// Every invariant that one observed state and the history can show:
/// 1 to 6. (7 and 8 need the drill's measurements: [`recovery_digests`],
/// [`liveness`].)
pub fn check(model: &Model, history: &History, obs: &Observed) -> Vec<Violation> {
    let run = obs.run;
    let (facts, unknown_opens, mut found) = session_facts(history, run);
    check_sessions(model, &facts, unknown_opens, obs, &mut found);
    check_holders(model, &facts, obs, &mut found);
    check_counters(model, history, obs, &mut found);
    check_combined(history, &facts, obs, &mut found);
    check_lsns(history, obs, &mut found);
    check_tokens(history, run, &mut found);
    check_intervals(history, &facts, run, &mut found);
    check_retries(history, run, &mut found);
    found
}

fn check_sessions(
    model: &Model,
    facts: &BTreeMap<String, SessionFacts>,
    unknown_opens: usize,
    obs: &Observed,
    found: &mut Vec<Violation>,
) {
    let run = obs.run;
    for (s, f) in facts {
        let Some(open) = f.open_op else { continue };
        if f.gone.is_none() && !f.mortal && !obs.sessions.contains(s) {
            found.push(violation(
                Invariant::NoLostAck,
                run,
                format!("session {s} was opened (acknowledged) and never ended, but it was not recovered"),
                vec![open],
            ));
        }
        if let Some(gone) = f.gone {
            if obs.sessions.contains(s) {
                found.push(violation(
                    Invariant::NoResurrection,
                    run,
                    format!("session {s} ended (close acknowledged or 404 seen) but was recovered"),
                    vec![open, gone],
                ));
            }
        }
    }
    let orphans: Vec<&String> = obs
        .sessions
        .iter()
        .filter(|s| facts.get(*s).is_none_or(|f| f.open_op.is_none()))
        .filter(|s| !model.foreign_sessions.contains(*s))
        .collect();
    if orphans.len() > unknown_opens {
        found.push(violation(
            Invariant::NoResurrection,
            run,
            format!(
                "{} recovered session(s) that no acknowledged open made, but only {unknown_opens} open(s) had an unknown outcome: {}",
                orphans.len(),
                orphans.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
            ),
            vec![],
        ));
    }
}

fn check_holders(
    model: &Model,
    facts: &BTreeMap<String, SessionFacts>,
    obs: &Observed,
    found: &mut Vec<Violation>,
) {
    let run = obs.run;
    // Mutual exclusion in the recovered table itself.
    let mut by_lock: BTreeMap<&str, Vec<&Holder>> = BTreeMap::new();
    for h in &obs.holders {
        by_lock.entry(&h.name).or_default().push(h);
    }
    for (name, holders) in &by_lock {
        let exclusive = holders.iter().any(|h| h.mode == Mode::Exclusive);
        if holders.len() > 1 && exclusive {
            found.push(violation(
                Invariant::MutualExclusion,
                run,
                format!(
                    "lock {name:?} is held by {} sessions at once, one of them exclusively: {}",
                    holders.len(),
                    holders
                        .iter()
                        .map(|h| format!("{} ({:?}, token {})", h.session, h.mode, h.token))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                vec![],
            ));
        }
    }
    // Every holder has an acquire behind it and no acknowledged release.
    for h in &obs.holders {
        if model.foreign_sessions.contains(&h.session) {
            continue;
        }
        let hold = facts.get(&h.session).and_then(|f| f.holds.get(&h.name));
        let ok = match hold {
            Some(Hold::Definite { token, .. }) => *token == h.token,
            Some(Hold::Maybe { token, .. }) => token.is_none_or(|t| t == h.token),
            None => false,
        };
        if !ok {
            let ops = match hold {
                Some(Hold::Definite { op, .. } | Hold::Maybe { op, .. }) => vec![*op],
                None => vec![],
            };
            let what = match hold {
                Some(Hold::Definite { token, .. })
                | Some(Hold::Maybe {
                    token: Some(token), ..
                }) => {
                    format!("the history's last grant of it has token {token}")
                }
                _ => "the history has no grant of it since its last acknowledged release".into(),
            };
            found.push(violation(
                Invariant::NoResurrection,
                run,
                format!(
                    "session {} holds {:?} with token {} but {what}",
                    h.session, h.name, h.token
                ),
                ops,
            ));
        }
    }
    // Every acknowledged grant not released since is recovered.
    for (s, f) in facts {
        for (name, hold) in &f.holds {
            let Hold::Definite { token, op } = hold else {
                continue;
            };
            let present = obs
                .holders
                .iter()
                .any(|h| &h.session == s && &h.name == name && h.token == *token);
            if !present {
                found.push(violation(
                    Invariant::NoLostAck,
                    run,
                    format!("the grant of {name:?} to session {s} (token {token}) was acknowledged and never released, but it was not recovered"),
                    vec![*op],
                ));
            }
        }
    }
}

/// A counter value and the op that set it.
type Mark = (u64, Option<OpId>);

/// Per counter key: the highest value acknowledged as applied, and the
/// highest that may have been applied, with the ops that set them.
fn counter_bounds(history: &History) -> BTreeMap<String, (Mark, Mark)> {
    let mut bounds: BTreeMap<String, (Mark, Mark)> = BTreeMap::new();
    for op in &history.ops {
        let Some((key, value)) = op.counter() else {
            continue;
        };
        let b = bounds
            .entry(key.to_string())
            .or_insert(((0, None), (0, None)));
        if matches!(op.outcome, Outcome::Ok { .. }) && op.applied() && value > b.0 .0 {
            b.0 = (value, Some(op.id));
        }
        if op.maybe_applied() && value > b.1 .0 {
            b.1 = (value, Some(op.id));
        }
    }
    bounds
}

fn check_counters(model: &Model, history: &History, obs: &Observed, found: &mut Vec<Violation>) {
    let run = obs.run;
    let bounds = counter_bounds(history);
    for (key, ((acked, acked_op), (invoked, invoked_op))) in &bounds {
        let got = obs.counters.get(key).copied().unwrap_or(0);
        if got < *acked {
            found.push(violation(
                Invariant::NoLostAck,
                run,
                format!("counter {key} was acknowledged at {acked} but recovered as {got}"),
                acked_op.iter().copied().collect(),
            ));
        } else if got > *invoked {
            found.push(violation(
                Invariant::Prefix,
                run,
                format!(
                    "counter {key} recovered as {got}, beyond the last change invoked ({invoked})"
                ),
                invoked_op.iter().copied().collect(),
            ));
        } else if obs.quiescent && got != *acked {
            found.push(violation(
                Invariant::ExactlyOnce,
                run,
                format!("after every unknown request was retried, counter {key} is {got}, not the acknowledged {acked}"),
                acked_op.iter().chain(invoked_op).copied().collect(),
            ));
        }
    }
    for (key, got) in &obs.counters {
        if !bounds.contains_key(key) && *got != 0 {
            found.push(violation(
                Invariant::Prefix,
                run,
                format!("counter {key} recovered as {got} but no change to it was invoked"),
                vec![],
            ));
        }
    }
    let sum: u64 = obs.counters.values().sum();
    let expected = model.serial_after_setup + sum;
    if obs.serial != expected {
        found.push(violation(
            Invariant::ExactlyOnce,
            run,
            format!(
                "the document's serial is {} but the counters account for {expected} changes: a change was applied twice, or without its counter",
                obs.serial
            ),
            vec![],
        ));
    }
    for op in &history.ops {
        if let (Some((key, _)), Outcome::Refused { code, .. }) = (op.counter(), &op.outcome) {
            if code == "patch_failed" {
                found.push(violation(
                    Invariant::Prefix,
                    run,
                    format!("counter {key} was not where the acknowledged history left it (the change's test op failed)"),
                    vec![op.id],
                ));
            }
        }
    }
}

fn check_combined(
    history: &History,
    facts: &BTreeMap<String, SessionFacts>,
    obs: &Observed,
    found: &mut Vec<Violation>,
) {
    let run = obs.run;
    let mut last_write: HashMap<usize, &Op> = HashMap::new();
    let mut grants: HashSet<(&str, u64)> = HashSet::new();
    for op in &history.ops {
        if let (OpKind::Acquire { .. }, Some(s), Some(t)) = (&op.kind, &op.session, op.token()) {
            if op.granted() {
                grants.insert((s, t));
            }
        }
        let OpKind::Write {
            key,
            value,
            release: true,
            token,
        } = &op.kind
        else {
            continue;
        };
        if !op.maybe_applied() || repeats_acked(history, op) {
            continue;
        }
        let Some(s) = &op.session else { continue };
        let applied = obs.counters.get(key).copied().unwrap_or(0) >= *value;
        let held = obs
            .holders
            .iter()
            .any(|h| h.name == "config" && &h.session == s && h.token == *token);
        if applied && held {
            found.push(violation(
                Invariant::CombinedRecords,
                run,
                format!("the write {key}={value} is in the config but session {s} still holds config under token {token}: a change without its release"),
                vec![op.id],
            ));
        }
        last_write.insert(op.client, op);
    }
    for op in last_write.values() {
        let OpKind::Write {
            key, value, token, ..
        } = &op.kind
        else {
            continue;
        };
        let Some(s) = &op.session else { continue };
        let f = facts.get(s);
        if f.is_none_or(|f| f.mortal || f.gone.is_some()) {
            continue;
        }
        // The grant behind the write was acknowledged?
        let granted = grants.contains(&(s.as_str(), *token));
        let applied = obs.counters.get(key).copied().unwrap_or(0) >= *value;
        let held = obs
            .holders
            .iter()
            .any(|h| h.name == "config" && &h.session == s && h.token == *token);
        if granted && !applied && !held {
            found.push(violation(
                Invariant::CombinedRecords,
                run,
                format!("session {s} no longer holds config (token {token}) but its write {key}={value} is not in the config: a release without its change"),
                vec![op.id],
            ));
        }
    }
}

fn check_lsns(history: &History, obs: &Observed, found: &mut Vec<Violation>) {
    for op in &history.ops {
        if let (Outcome::Ok { .. }, Some(lsn)) = (&op.outcome, op.lsn()) {
            if lsn > obs.lsn {
                found.push(violation(
                    Invariant::Prefix,
                    obs.run,
                    format!(
                        "an answer named LSN {lsn}, but the log was recovered only to LSN {}",
                        obs.lsn
                    ),
                    vec![op.id],
                ));
            }
        }
    }
}

fn check_tokens(history: &History, run: u32, found: &mut Vec<Violation>) {
    let mut seen: HashMap<u64, OpId> = HashMap::new();
    let mut max_before_run: BTreeMap<u32, u64> = BTreeMap::new();
    for op in &history.ops {
        if !op.granted() || repeats_acked(history, op) {
            continue;
        }
        let Some(token) = op.token() else { continue };
        if let Some(first) = seen.insert(token, op.id) {
            found.push(violation(
                Invariant::MutualExclusion,
                run,
                format!("fencing token {token} was granted twice"),
                vec![first, op.id],
            ));
        }
        let m = max_before_run.entry(op.run).or_insert(0);
        *m = (*m).max(token);
    }
    // Tokens granted in a later run exceed all of an earlier run's.
    let mut max_so_far: Option<(u32, u64)> = None;
    for (r, m) in &max_before_run {
        if let Some((pr, pm)) = max_so_far {
            let low = history.ops.iter().find(|op| {
                op.run == *r
                    && op.retry_of.is_none()
                    && op.granted()
                    && op.token().is_some_and(|t| t <= pm)
            });
            if let Some(low) = low {
                found.push(violation(
                    Invariant::MutualExclusion,
                    run,
                    format!(
                        "a grant in run {r} has token {}, not above run {pr}'s highest token {pm}: tokens went backwards across a restart",
                        low.token().unwrap_or(0)
                    ),
                    vec![low.id],
                ));
            }
        }
        let top = max_so_far.map_or(*m, |(_, pm)| pm.max(*m));
        max_so_far = Some((*r, top));
    }
}

/// The times a client believed it held a lock: from the grant's answer to
/// the first op of the session that gives it up.
struct Belief {
    session: String,
    mode: Mode,
    token: u64,
    start_us: u64,
    end_us: u64,
    op: OpId,
}

fn check_intervals(
    history: &History,
    facts: &BTreeMap<String, SessionFacts>,
    run: u32,
    found: &mut Vec<Violation>,
) {
    let mut by_lock: BTreeMap<String, Vec<Belief>> = BTreeMap::new();
    let mut ops_by_session: HashMap<&str, Vec<&Op>> = HashMap::new();
    for op in &history.ops {
        if let Some(s) = &op.session {
            ops_by_session.entry(s).or_default().push(op);
        }
    }
    for op in &history.ops {
        if !op.granted() || repeats_acked(history, op) {
            continue;
        }
        let (Some(s), Some(start_us), Some(token)) = (&op.session, op.completed_us, op.token())
        else {
            continue;
        };
        let mine = &ops_by_session[s.as_str()];
        let after = mine.partition_point(|o| o.id <= op.id);
        for lock in op.granted_locks() {
            let end_us = mine[after..]
                .iter()
                .find(|o| match o.kind.releases() {
                    Some(None) => true,
                    Some(Some(names)) => names.contains(&lock.name),
                    None => refused_unknown_session(o),
                })
                .map_or(u64::MAX, |o| o.invoked_us);
            by_lock.entry(lock.name).or_default().push(Belief {
                session: s.clone(),
                mode: lock.mode,
                token,
                start_us,
                end_us,
                op: op.id,
            });
        }
    }
    for (name, mut beliefs) in by_lock {
        beliefs.sort_by_key(|b| b.start_us);
        let mut active: Vec<&Belief> = vec![];
        for b in &beliefs {
            active.retain(|a| a.end_us > b.start_us);
            for a in &active {
                if a.session == b.session || (a.mode == Mode::Shared && b.mode == Mode::Shared) {
                    continue;
                }
                let fenced = facts.get(&a.session).is_some_and(|f| f.mortal) && b.token > a.token;
                if !fenced {
                    found.push(violation(
                        Invariant::MutualExclusion,
                        run,
                        format!(
                            "sessions {} (token {}, {:?}) and {} (token {}, {:?}) both held {name:?} at once, and the first had not expired",
                            a.session, a.token, a.mode, b.session, b.token, b.mode
                        ),
                        vec![a.op, b.op],
                    ));
                }
            }
            active.push(b);
        }
    }
}

fn check_retries(history: &History, run: u32, found: &mut Vec<Violation>) {
    for op in &history.ops {
        let Some(orig) = op.retry_of.map(|o| &history.ops[o]) else {
            continue;
        };
        let (Outcome::Ok { body: first }, Outcome::Ok { body: again }) =
            (&orig.outcome, &op.outcome)
        else {
            if let (Outcome::Ok { .. }, Outcome::Refused { status, code }) =
                (&orig.outcome, &op.outcome)
            {
                found.push(violation(
                    Invariant::ExactlyOnce,
                    run,
                    format!("a retry of an acknowledged request was refused ({status} {code}) instead of answered as before"),
                    vec![orig.id, op.id],
                ));
            }
            continue;
        };
        if first != again {
            found.push(violation(
                Invariant::ExactlyOnce,
                run,
                format!(
                    "a retry with request_id {:?} answered {again}, not the original {first}",
                    op.request_id.as_deref().unwrap_or("")
                ),
                vec![orig.id, op.id],
            ));
        }
    }
}

/// Invariant 7: the log up to `lsn` had fingerprint `before` (its state's
/// digest, or the fold of its records' CRCs); after a recovery that was
/// SIGKILLed part-way it has `after`, which must be equal, and whatever that
/// recovery appended is only epoch records (`appended_kinds` lists the
/// kinds past `lsn`).
pub fn recovery_digests(
    run: u32,
    lsn: u64,
    before: u64,
    after: u64,
    appended_kinds: &[u16],
) -> Vec<Violation> {
    let mut found = vec![];
    if before != after {
        found.push(violation(
            Invariant::IdempotentRecovery,
            run,
            format!("the log up to LSN {lsn} replayed to state digest {before:016x}; after a recovery killed part-way it replays to {after:016x}"),
            vec![],
        ));
    }
    let epoch = crate::state::record::kind::EPOCH;
    if let Some(k) = appended_kinds.iter().find(|k| **k != epoch) {
        found.push(violation(
            Invariant::IdempotentRecovery,
            run,
            format!("a recovery killed part-way appended a record of kind {k} after LSN {lsn}; recovery may append only epoch records"),
            vec![],
        ));
    }
    found
}

/// Invariant 8: each restart served within `bound_ms`, and every job client
/// had at least one change or grant acknowledged in the drill.
pub fn liveness(
    recoveries_ms: &[(u32, u64)],
    bound_ms: u64,
    history: &History,
    clients: usize,
) -> Vec<Violation> {
    let mut found = vec![];
    for (run, ms) in recoveries_ms {
        if *ms > bound_ms {
            found.push(violation(
                Invariant::Liveness,
                *run,
                format!("the daemon served again only after {ms} ms (bound {bound_ms} ms)"),
                vec![],
            ));
        }
    }
    for client in 0..clients {
        let progressed = history.ops.iter().any(|op| {
            op.client == client && (op.applied() || op.granted()) && op.retry_of.is_none()
        });
        if !progressed {
            found.push(violation(
                Invariant::Liveness,
                0,
                format!("client {client} had no change or grant acknowledged in the whole drill"),
                vec![],
            ));
        }
    }
    found
}
