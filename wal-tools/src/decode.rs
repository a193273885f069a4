//! What a frame means to a person: its type name, the decoded record, a
//! one-line summary, a JSON form, and the facts the filters look at.

use serde_json::{json, Value};
use wconf::replay::decode_frame;
use wconf::state::record::kind;
use wconf::state::{LockMode, Record, CONFIG_LOCK};
use wconf::wal::KIND_SKIPPABLE;

/// The name `--type` and the output use for a kind: the record kind's name,
/// or `unknown-0xNNNN` (`skippable-0xNNNN` when the skippable bit is set).
pub fn type_name(k: u16) -> String {
    match kind::name(k) {
        Some(n) => n.to_string(),
        None if k & KIND_SKIPPABLE != 0 => format!("skippable-{k:#06x}"),
        None => format!("unknown-{k:#06x}"),
    }
}

/// Parses a `--type` value: a known name, a kind number (decimal or
/// `0x` hex), or one of the `unknown-`/`skippable-` names.
pub fn parse_type(s: &str) -> Result<u16, String> {
    if let Some((k, _)) = kind::ALL.iter().find(|(_, n)| *n == s) {
        return Ok(*k);
    }
    let digits = s
        .strip_prefix("unknown-")
        .or_else(|| s.strip_prefix("skippable-"))
        .unwrap_or(s);
    let parsed = match digits.strip_prefix("0x") {
        Some(hex) => u16::from_str_radix(hex, 16),
        None => digits.parse(),
    };
    parsed.map_err(|_| {
        format!(
            "unknown record type {s:?}; `--type list` prints the known types, \
             and a kind number (such as 6 or 0x8003) selects any kind"
        )
    })
}

/// A frame's payload, decoded as far as it goes.
pub enum Decoded {
    Record(Record),
    /// An unknown kind marked skippable: the daemon skips it too.
    Skipped,
    /// The payload does not decode (or the kind is unknown and not skippable).
    Error(String),
}

pub fn decode(lsn: u64, k: u16, payload: &[u8]) -> Decoded {
    match decode_frame(lsn, k, payload) {
        Ok(Some(r)) => Decoded::Record(r),
        Ok(None) => Decoded::Skipped,
        Err(e) => Decoded::Error(e.to_string()),
    }
}

impl Decoded {
    pub fn record(&self) -> Option<&Record> {
        match self {
            Decoded::Record(r) => Some(r),
            _ => None,
        }
    }

    pub fn session(&self) -> Option<String> {
        match self.record()? {
            Record::SessionOpen { session, .. }
            | Record::SessionClose { session, .. }
            | Record::Grant { session, .. }
            | Record::Release { session, .. } => Some(session.to_string()),
            Record::ConfigWrite { session, .. } => session.map(|s| s.to_string()),
            Record::Epoch { .. } => None,
        }
    }

    pub fn request_id(&self) -> Option<&str> {
        match self.record()? {
            Record::Grant { request_id, .. }
            | Record::Release { request_id, .. }
            | Record::ConfigWrite { request_id, .. } => request_id.as_deref(),
            _ => None,
        }
    }

    /// Lock names this record takes, releases or downgrades. A config write
    /// that releases `config` names it; a one-shot transaction (no session)
    /// takes and drops `config` without logging either, so it names nothing.
    pub fn locks(&self) -> Vec<&str> {
        match self.record() {
            Some(Record::Grant { locks, .. }) => locks.iter().map(|l| l.name.as_str()).collect(),
            Some(Record::Release {
                release, downgrade, ..
            }) => release
                .iter()
                .chain(downgrade)
                .map(String::as_str)
                .collect(),
            Some(Record::ConfigWrite {
                release_config: true,
                ..
            }) => vec![CONFIG_LOCK],
            _ => vec![],
        }
    }

    /// The `(op, path, from)` of each patch operation of a config write.
    pub fn patch_ops(&self) -> Vec<(String, String, Option<String>)> {
        let Some(Record::ConfigWrite { patch_json, .. }) = self.record() else {
            return vec![];
        };
        let Ok(Value::Array(ops)) = serde_json::from_str::<Value>(patch_json) else {
            return vec![];
        };
        let field =
            |op: &Value, name: &str| op.get(name).and_then(Value::as_str).map(str::to_owned);
        ops.iter()
            .map(|op| {
                (
                    field(op, "op").unwrap_or_default(),
                    field(op, "path").unwrap_or_default(),
                    field(op, "from"),
                )
            })
            .collect()
    }

    /// `--path P` matches a config write with an op whose `path` (or
    /// `from`) is `P`, lies under `P`, or lies above `P` (replacing `/a`
    /// changes `/a/b`). Pointers are compared by whole reference tokens, so
    /// `/ab` does not match `/a`.
    pub fn touches_path(&self, pointer: &str) -> bool {
        self.patch_ops().iter().any(|(_, path, from)| {
            std::iter::once(path.as_str())
                .chain(from.as_deref())
                .any(|p| pointer_related(p, pointer))
        })
    }

    /// The one-line summary for text output.
    pub fn summary(&self) -> String {
        let r = match self {
            Decoded::Record(r) => r,
            Decoded::Skipped => return "skipped (unknown kind marked skippable)".into(),
            Decoded::Error(e) => return format!("undecodable: {e}"),
        };
        match r {
            Record::Epoch {
                epoch,
                started_unix_ms,
            } => format!("epoch {epoch} started_unix_ms {started_unix_ms}"),
            Record::SessionOpen { name, ttl_ms, .. } => format!(
                "open name {} ttl_ms {ttl_ms}",
                name.as_deref().unwrap_or("-")
            ),
            Record::SessionClose { reason, .. } => format!("close {reason:?}").to_lowercase(),
            Record::Grant { locks, token, .. } => {
                let names: Vec<String> = locks
                    .iter()
                    .map(|l| format!("{}:{}", l.name, mode_name(l.mode)))
                    .collect();
                format!("take {} token {token}", names.join(","))
            }
            Record::Release {
                release, downgrade, ..
            } => {
                let mut parts = vec![];
                if !release.is_empty() {
                    parts.push(format!("release {}", release.join(",")));
                }
                if !downgrade.is_empty() {
                    parts.push(format!("downgrade {}", downgrade.join(",")));
                }
                if parts.is_empty() {
                    parts.push("release nothing".into());
                }
                parts.join("; ")
            }
            Record::ConfigWrite { release_config, .. } => {
                let ops: Vec<String> = self
                    .patch_ops()
                    .into_iter()
                    .map(|(op, path, from)| match from {
                        Some(from) => format!("{op} {from} -> {path}"),
                        None => format!("{op} {path}"),
                    })
                    .collect();
                let mut s = format!("patch [{}]", ops.join(", "));
                if *release_config {
                    s.push_str("; release config");
                }
                s
            }
        }
    }

    /// The decoded record as JSON (`"record"` in the list schema).
    pub fn to_json(&self) -> Value {
        let r = match self {
            Decoded::Record(r) => r,
            Decoded::Skipped => return Value::Null,
            Decoded::Error(_) => return Value::Null,
        };
        match r {
            Record::Epoch {
                epoch,
                started_unix_ms,
            } => json!({"epoch": epoch, "started_unix_ms": started_unix_ms}),
            Record::SessionOpen { name, ttl_ms, .. } => json!({"name": name, "ttl_ms": ttl_ms}),
            Record::SessionClose { reason, .. } => {
                json!({"reason": format!("{reason:?}").to_lowercase()})
            }
            Record::Grant { locks, token, .. } => json!({
                "locks": locks
                    .iter()
                    .map(|l| json!({"name": l.name, "mode": mode_name(l.mode)}))
                    .collect::<Vec<_>>(),
                "token": token,
            }),
            Record::Release {
                release, downgrade, ..
            } => json!({"release": release, "downgrade": downgrade}),
            Record::ConfigWrite {
                patch_json,
                release_config,
                ..
            } => {
                let patch = serde_json::from_str::<Value>(patch_json)
                    .unwrap_or_else(|_| Value::String(patch_json.clone()));
                json!({"patch": patch, "release_config": release_config})
            }
        }
    }

    pub fn error(&self) -> Option<&str> {
        match self {
            Decoded::Error(e) => Some(e),
            _ => None,
        }
    }
}

pub fn mode_name(mode: LockMode) -> &'static str {
    match mode {
        LockMode::Shared => "shared",
        LockMode::Exclusive => "exclusive",
    }
}

/// Whether one JSON pointer is the other or lies under it.
fn pointer_related(a: &str, b: &str) -> bool {
    let under = |long: &str, short: &str| {
        long == short
            || short.is_empty()
            || long.strip_prefix(short).is_some_and(|r| r.starts_with('/'))
    };
    under(a, b) || under(b, a)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pointers_match_by_whole_tokens_in_both_directions() {
        // Invariant: `--path` matches equal, deeper and shallower pointers,
        // never a sibling that merely shares a prefix.
        assert!(pointer_related("/a/b", "/a"));
        assert!(pointer_related("/a", "/a/b"));
        assert!(pointer_related("/a", "/a"));
        assert!(pointer_related("/x", ""));
        assert!(!pointer_related("/ab", "/a"));
        assert!(!pointer_related("/b", "/a"));
    }

    #[test]
    fn type_names_round_trip_through_parse() {
        // Invariant: every name `type_name` prints, `--type` accepts.
        for k in [1u16, 6, 0x8003, 77] {
            assert_eq!(parse_type(&type_name(k)), Ok(k));
        }
        assert_eq!(parse_type("0x8003"), Ok(0x8003));
        assert!(parse_type("nope").is_err());
    }
}
